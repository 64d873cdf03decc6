"""``aigq serve rollout`` without a Serve cluster (hardening issue 19): a bad policy (missing folder, a folder with
no policy in it, a malformed or unknown ``models:/`` URI) is refused with one clear line before anything is deployed,
and rollouts hold an exclusive lock (``<run.output_dir>/serve/rollout.lock``), so a second concurrent one exits at
once and changes nothing; the lock is released however a rollout ends. ``ensure_ray`` / ``deployed_config`` /
``deploy`` / ``wait_running`` are replaced by a fake cluster that keeps the deployed config."""

from __future__ import annotations

import copy
import fcntl
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aigq.cli import app
from aigq.cli import serve as cli_serve
from serve_app import deploy as D

runner = CliRunner()


def make_policy(folder: Path, config: bool = True, tokenizer: bool = True) -> Path:
    """A fake policy folder: just enough files for the rollout checks (deploy is faked, nothing loads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    if config:
        (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


def policies(cfg: dict) -> dict[str, str]:
    """app → the policy in its deployment's user_config."""
    return {a["name"]: d["user_config"]["policy"] for a in cfg["applications"]
            for d in a.get("deployments", []) if "policy" in (d.get("user_config") or {})}


class FakeCluster:
    """The deployed Serve config (``deployed_config`` returns a copy; ``deploy`` replaces it) and the calls."""

    def __init__(self, tmp: Path):
        self.out = tmp / "out"
        args = {"root": str(tmp), "overrides": [f"run.output_dir={self.out}", f"tracking.root={tmp / 'mlflow'}"]}
        self.deployed = {
            "applications": [
                {"name": "direct", "route_prefix": "/direct", "import_path": "serve_app.direct:build",
                 "args": copy.deepcopy(args),
                 "deployments": [{"name": "DirectGenerator", "user_config": {"policy": "/old/policy"}}]},
                {"name": "think", "route_prefix": "/think", "import_path": "serve_app.think:build",
                 "args": copy.deepcopy(args),
                 "deployments": [{"name": "ThinkApp", "user_config": {"policy": "/old/policy"}}]},
                {"name": "hintq", "route_prefix": "/hintq", "import_path": "serve_app.hintq:build",
                 "args": copy.deepcopy(args)}],
            "http_options": {"host": "127.0.0.1", "port": 8000}}
        self.original = copy.deepcopy(self.deployed)
        self.deploys: list[dict] = []
        self.connects = 0
        self.on_deploy = None  # called inside deploy (the rollout holds the lock then)
        self.wait_error: Exception | None = None

    def ensure_ray(self, cfg, stage="train", **kw):
        assert stage == "serve"
        self.connects += 1

    def deployed_config(self):
        return copy.deepcopy(self.deployed)

    def deploy(self, cfg):
        self.deploys.append(copy.deepcopy(cfg))
        if self.on_deploy is not None:
            self.on_deploy(cfg)
        self.deployed = copy.deepcopy(cfg)

    def wait_running(self, names=None, timeout_s=300.0, poll_s=1.0):
        if self.wait_error is not None:
            raise self.wait_error
        return {n: "ApplicationStatus.RUNNING" for n in names or ["direct", "think", "hintq"]}

    @property
    def lock(self) -> Path:
        return self.out / "serve" / "rollout.lock"


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    fake = FakeCluster(tmp_path)
    monkeypatch.setattr(cli_serve, "ensure_ray", fake.ensure_ray)
    monkeypatch.setattr(D, "deployed_config", fake.deployed_config)
    monkeypatch.setattr(D, "deploy", fake.deploy)
    monkeypatch.setattr(D, "wait_running", fake.wait_running)
    return fake


def rollout(*args: str):
    return runner.invoke(app, ["serve", "rollout", *args])


def lock_is_free(path: Path) -> bool:
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def assert_refused(res, cluster, *words: str) -> None:
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # a clean exit, no traceback
    line = next(ln for ln in res.output.splitlines() if ln.startswith("error:"))
    for w in words:
        assert w in line, (w, res.output)
    assert cluster.deploys == [] and cluster.deployed == cluster.original  # nothing deployed, config unchanged


def test_missing_folder_is_refused(cluster, tmp_path):
    missing = tmp_path / "no-such-policy"
    assert_refused(rollout("--policy", str(missing)), cluster, str(missing.resolve()), "no such folder")
    assert cluster.connects == 0  # refused before the cluster is even asked


def test_folder_without_config_json_is_refused(cluster, tmp_path):
    folder = make_policy(tmp_path / "half", config=False)
    assert_refused(rollout("--policy", str(folder)), cluster, str(folder.resolve()), "no config.json")


def test_folder_without_tokenizer_or_with_a_broken_config_is_refused(cluster, tmp_path):
    folder = make_policy(tmp_path / "no-tok", tokenizer=False)
    assert_refused(rollout("--policy", str(folder)), cluster, str(folder.resolve()), "tokenizer")
    broken = make_policy(tmp_path / "broken")
    (broken / "config.json").write_text('{"model_type": "qw')  # a copy cut short
    assert_refused(rollout("--policy", str(broken)), cluster, str(broken.resolve()), "config.json")
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    assert_refused(rollout("--policy", str(not_dir)), cluster, str(not_dir.resolve()), "not a folder")


def test_missing_think_policy_is_refused(cluster, tmp_path):
    good = make_policy(tmp_path / "good")
    missing = tmp_path / "gone"
    assert_refused(rollout("--policy", str(good), "--think-policy", str(missing)), cluster,
                   str(missing.resolve()), "no such folder")


@pytest.mark.parametrize("spec", ["models:/aigq-policy", "models:/aigq-policy/latest", "models:/a/b/3",
                                  "models:/aigq-policy/0", "models:/", "models:aigq-policy/3", "models:/x@"])
def test_malformed_registry_uri_is_refused(cluster, spec):
    assert_refused(rollout("--policy", spec), cluster, spec, "models:/<name>/<version>")


def test_parse_registry_spec():
    assert D.parse_registry_spec("models:/aigq-policy/3") == ("aigq-policy", "3", None)
    assert D.parse_registry_spec("models:/aigq-policy/3/") == ("aigq-policy", "3", None)
    assert D.parse_registry_spec("models:/aigq-policy@prod") == ("aigq-policy", None, "prod")


def test_registry_version_must_exist(cluster, tmp_path):
    db = tmp_path / "mlflow" / "mlflow.db"  # where the deployed apps' config (tracking.root) keeps the registry
    res = rollout("--policy", "models:/aigq-policy/1")
    assert_refused(res, cluster, "models:/aigq-policy/1", "no model registry")
    assert not db.exists()  # the check does not create a registry

    import mlflow

    db.parent.mkdir(parents=True)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    client.create_registered_model("aigq-policy")
    client.create_model_version("aigq-policy", source=str(make_policy(tmp_path / "art")))
    assert_refused(rollout("--policy", "models:/aigq-policy/2"), cluster, "models:/aigq-policy/2", "no version 2")
    assert_refused(rollout("--policy", "models:/aigq-policy@prod"), cluster, "no alias 'prod'")
    assert_refused(rollout("--policy", "models:/other/1"), cluster, "models:/other/1")

    res = rollout("--policy", "models:/aigq-policy/1")
    assert res.exit_code == 0, res.output
    assert policies(cluster.deployed) == {"direct": "models:/aigq-policy/1", "think": "models:/aigq-policy/1"}


def test_valid_folder_is_deployed_resolved_under_the_lock(cluster, tmp_path, monkeypatch):
    make_policy(tmp_path / "v2")
    think = make_policy(tmp_path / "think-v2")
    monkeypatch.chdir(tmp_path)
    held = []
    cluster.on_deploy = lambda cfg: held.append(not lock_is_free(cluster.lock))
    res = rollout("--policy", "v2", "--think-policy", "think-v2")  # relative to the working directory
    assert res.exit_code == 0, res.output
    assert len(cluster.deploys) == 1
    assert policies(cluster.deploys[0]) == {"direct": str((tmp_path / "v2").resolve()), "think": str(think.resolve())}
    assert held == [True]  # the rollout lock was held while it deployed ...
    assert lock_is_free(cluster.lock)  # ... and is free again


def test_second_rollout_while_one_is_in_progress_exits_at_once(cluster, tmp_path):
    v1, v2 = make_policy(tmp_path / "v1"), make_policy(tmp_path / "v2")
    second = []
    # the first rollout's deploy starts a second rollout (another `aigq serve rollout` at the same moment)
    cluster.on_deploy = lambda cfg: second.append(rollout("--policy", str(v2))) if not second else None
    first = rollout("--policy", str(v1))
    assert first.exit_code == 0, first.output
    assert second[0].exit_code == 1, second[0].output
    assert "another rollout is in progress (since " in second[0].output
    assert f"pid {os.getpid()}" in second[0].output and str(v1.resolve()) in second[0].output
    assert len(cluster.deploys) == 1  # only the first one deployed
    assert policies(cluster.deployed) == {"direct": str(v1.resolve()), "think": str(v1.resolve())}
    assert lock_is_free(cluster.lock)


def test_rollout_refused_while_the_lock_is_held(cluster, tmp_path):
    v2 = make_policy(tmp_path / "v2")
    with D.rollout_lock(cluster.lock, policy="/some/policy"):
        res = rollout("--policy", str(v2))
    assert res.exit_code == 1, res.output
    assert "another rollout is in progress (since" in res.output and "/some/policy" in res.output
    assert cluster.deploys == [] and cluster.deployed == cluster.original
    assert rollout("--policy", str(v2)).exit_code == 0  # free once its holder is done


@pytest.mark.parametrize("error", [TimeoutError("applications not RUNNING after 300 s"),
                                   RuntimeError("deploy failed: {'direct': 'boom'}")])
def test_lock_is_released_after_a_failing_rollout(cluster, tmp_path, error):
    v2 = make_policy(tmp_path / "v2")
    cluster.wait_error = error
    res = rollout("--policy", str(v2), "--timeout", "1")
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # a clear error line, not a traceback
    assert f"error: rollout of {v2.resolve()}: {error}" in res.output
    assert lock_is_free(cluster.lock)
    cluster.wait_error = None
    res = rollout("--policy", str(v2))
    assert res.exit_code == 0, res.output
    assert len(cluster.deploys) == 2


def test_lock_is_released_when_deploy_raises(cluster, tmp_path):
    v2 = make_policy(tmp_path / "v2")

    def boom(cfg):
        raise ValueError("schema says no")

    cluster.on_deploy = boom
    res = rollout("--policy", str(v2))
    assert res.exit_code == 1 and "error: schema says no" in res.output, res.output
    assert lock_is_free(cluster.lock)
    cluster.on_deploy = None
    assert rollout("--policy", str(v2)).exit_code == 0
