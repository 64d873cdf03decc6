"""`aigq train-ctr --day T`: cold then warm (Eq. 15), metrics and the test-only Spearman logged to MLflow."""

import json

import mlflow
from typer.testing import CliRunner

from aigq.cli import app

runner = CliRunner()


def test_train_ctr_cold_then_warm_logs_to_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = [f"run.output_dir={tmp_path / 'out'}", f"tracking.root={tmp_path / 'ml'}", "tracking.experiment=ctr",
            "world.users=200", "world.days=8", "ctr.hash_buckets=16384", "ctr.epochs_cold=1", "ctr.epochs_warm=1"]
    assert runner.invoke(app, ["simulate", *base]).exit_code == 0

    res = runner.invoke(app, ["train-ctr", "--day", "6", *base])
    assert res.exit_code == 0, res.output
    assert "eval.popularity_auc" in res.output and "test-only evaluator" in res.output
    day6 = tmp_path / "out/ctr/day-006"
    assert sorted(p.name for p in day6.iterdir()) == ["categories.parquet", "category_parents.parquet", "model.json",
                                                    "model.safetensors"]
    assert json.loads((day6 / "model.json").read_text())["meta"]["warm_start"] is None

    res = runner.invoke(app, ["train-ctr", "--day", "7", *base])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "out/ctr/day-007/model.json").read_text())["meta"]
    assert meta["warm_start"] == str(day6) and meta["train_days"] == [7] and meta["eval_days"] == [8]

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ctr"], filter_string="tags.`aigq.stage` = 'train-ctr'")
    assert len(runs) == 2
    for col in ("eval.auc", "eval.logloss", "eval.popularity_auc", "oracle.spearman", "train.loss"):
        assert runs[f"metrics.{col}"].notna().all(), col
    assert set(runs["params.ctr_run.warm_start_from"]) == {"none", str(day6)}

    assert runner.invoke(app, ["train-ctr", "--day", "9", *base]).exit_code == 1  # outside the world: clear error

    # no shared filesystem (issue 19 item 11): HintQ's ranker loads runs:/<id>/ctr once the local folder is gone
    import shutil
    from types import SimpleNamespace

    import pytest

    from aigq.rewards.context import UserContext
    from aigq.rewards.ctr import CTRScorer
    from serve_app.hintq import load_scorer

    day7 = tmp_path / "out/ctr/day-007"
    ctx = UserContext({"gender": "F"}, [(0, "search", "oak desk")])
    want = CTRScorer.load(day7).score_one(ctx, ["desk lamp", "rug"])
    run_id = runs.sort_values("start_time")["run_id"].iloc[-1]
    shutil.rmtree(tmp_path / "out/ctr")
    app_ctx = SimpleNamespace(tracking_uri=lambda: f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}",
                              path=lambda p: tmp_path / p, cfg=None)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the download cache (~/.cache/aigq/ctr) starts empty
    scorer, where = load_scorer(app_ctx, f"runs:/{run_id}/ctr")
    assert scorer.score_one(ctx, ["desk lamp", "rug"]) == pytest.approx(want) and where == f"runs:/{run_id}/ctr"
    assert (tmp_path / "home/.cache/aigq/ctr" / f"{run_id}@ctr" / "model.json").is_file()  # downloaded once, here
    with pytest.raises(FileNotFoundError, match="nothing to download"):
        load_scorer(app_ctx, f"runs:/{run_id}/nothing")


def test_train_ctr_on_a_search_only_world_learns_the_next_search(tmp_path, monkeypatch):
    """No HintQ exposure log: `train-ctr` resolves ctr.objective=auto to next_search, the model is scorable, and the
    demo's CTR step works with its printed keys."""
    from aigq.cli.rewards import demo_ctr
    from aigq.config import load_config
    from aigq.pipeline.ctr import train_ctr_stage
    from aigq.rewards.context import UserContext
    from aigq.rewards.ctr import CTRScorer
    from aigq.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = [f"run.output_dir={tmp_path / 'out'}", f"tracking.root={tmp_path / 'ml'}", "tracking.experiment=ns",
            "world.users=200", "world.days=8", "world.hint_exposure_rate=0", "ctr.hash_buckets=16384",
            "ctr.epochs_cold=1", "ctr.pretrain_epochs=0", "ctr.success_rate=true"]
    assert runner.invoke(app, ["simulate", *base]).exit_code == 0

    res = runner.invoke(app, ["train-ctr", "--day", "6", *base])
    assert res.exit_code == 0, res.output
    assert "objective next_search" in res.output and "eval.popularity_auc" in res.output
    day6 = tmp_path / "out/ctr/day-006"
    meta = json.loads((day6 / "model.json").read_text())["meta"]
    assert meta["objective"] == "next_search" and meta["success_rate"] is True
    assert meta["metrics"]["eval.auc"] > 0.5 and meta["metrics"]["eval.popularity_auc"] is not None
    scorer = CTRScorer.load(day6)
    assert scorer.success is not None
    p = scorer.score_one(UserContext({}, [(0, "search", "velvet sofa")]), ["velvet sofa", "lamp"])
    assert p.shape == (2,) and ((p > 0) & (p < 1)).all()

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ns"], filter_string="tags.`aigq.stage` = 'train-ctr'")
    assert list(runs["params.ctr_run.objective"]) == ["next_search"]
    assert runs["metrics.eval.auc"].notna().all()

    cfg = load_config(None, base)
    out = train_ctr_stage(cfg, Tracker(cfg.tracking), 5, cold=True)
    assert out["objective"] == "next_search" and out["train_days"] == [1, 2, 3, 4, 5]
    demo = demo_ctr(cfg, Tracker(cfg.tracking))  # day 8 − test_days 2 = 6, cold
    for k in ("train.impressions", "eval.impressions", "eval.auc", "eval.popularity_auc", "eval.logloss"):
        assert k in demo, k
