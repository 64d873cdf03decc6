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
