import mlflow
import pytest

from aigq.config import load_config
from aigq.tracking import Tracker, tracking_uri


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return load_config(None, [f"tracking.root={tmp_path / 'ml'}", "tracking.experiment=t", "world.users=42"])


def test_default_store_is_project_local_sqlite_with_explicit_artifacts(cfg, tmp_path, monkeypatch):
    assert tracking_uri(cfg.tracking) == f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert tracking_uri(cfg.tracking) == "http://example.invalid:5000"  # the environment wins
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    Tracker(cfg.tracking)
    exp = mlflow.get_experiment_by_name("t")
    assert exp.artifact_location == (tmp_path / "ml" / "artifacts").as_uri()
    # a Tracker does not leave its store in the environment (mlflow.set_tracking_uri exports it): a second config
    # in the same process, or a child process, uses its own tracking.root
    import os

    assert "MLFLOW_TRACKING_URI" not in os.environ
    other = load_config(None, [f"tracking.root={tmp_path / 'other'}"])
    assert tracking_uri(other.tracking) == f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"


def test_nested_stage_runs_log_flat_params_config_and_metrics(cfg, tmp_path):
    tr = Tracker(cfg.tracking)
    with tr.run("demo", cfg) as parent:
        with tr.run("simulate", cfg) as child:
            tr.metrics({"world.events": 123, "validate.events.rejected.unknown event type": 2})
    runs = mlflow.search_runs(experiment_names=["t"], output_format="list")
    by_name = {r.info.run_name: r for r in runs}
    sim = by_name["simulate"]
    assert sim.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert sim.data.params["world.users"] == "42"
    assert sim.data.metrics["world.events"] == 123
    assert sim.data.metrics["validate.events.rejected.unknown event type"] == 2
    art = mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="config.yaml",
                                              dst_path=str(tmp_path / "dl"))
    assert "users: 42" in open(art).read()


def test_disabled_tracker_is_a_noop(cfg, tmp_path):
    cfg.tracking.enabled = False
    tr = Tracker(cfg.tracking)
    with tr.run("x", cfg) as run:
        tr.metrics({"a": 1})
    assert run is None and not (tmp_path / "ml").exists()


def test_params_and_config_never_hold_a_password(tmp_path, monkeypatch):
    """Issue 19 item 3: a Redis URL with a password was logged as a param and in config.yaml."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, [f"tracking.root={tmp_path / 'ml'}", "tracking.experiment=secrets", "serve.store=redis",
                             "serve.redis_url=redis://aigq:s3cret@cache.internal:6380/0"])
    tr = Tracker(cfg.tracking)
    with tr.run("serve", cfg) as run:
        tr.params({"extra.urls": ["redis://:s3cret@h:1/0", "redis://h:1/0"], "extra.n": 3})
    params = mlflow.get_run(run.info.run_id).data.params
    assert params["serve.redis_url"] == "redis://aigq:***@cache.internal:6380/0"
    assert params["extra.urls"] == "['redis://:***@h:1/0', 'redis://h:1/0']" and params["extra.n"] == "3"
    assert params["tracking.root"] == str(tmp_path / "ml")  # everything else as it was
    assert not [k for k, v in params.items() if "s3cret" in v]
    art = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config.yaml",
                                              dst_path=str(tmp_path / "dl"))
    text = open(art).read()
    assert "s3cret" not in text and "redis_url: redis://aigq:***@cache.internal:6380/0" in text
    assert cfg.serve.redis_url == "redis://aigq:s3cret@cache.internal:6380/0"  # the config itself is untouched
