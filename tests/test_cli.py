"""The CLI end to end on a small world: simulate → validate → build-samples → stats, plus error paths."""

import json

import mlflow
import polars as pl
import pytest
from typer.testing import CliRunner

from aigq.cli import app

runner = CliRunner()


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return [f"run.output_dir={tmp_path / 'out'}", f"tracking.root={tmp_path / 'ml'}", "tracking.experiment=cli",
            "world.users=150", "world.days=8", "world.malformed_rate=0.01"]


def test_simulate_validate_build_stats(base, tmp_path):
    res = runner.invoke(app, ["simulate", *base])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "out/world/meta.json").read_text())
    injected = meta["injected_malformed"]
    assert injected["events"] > 0

    res = runner.invoke(app, ["build-samples", *base])
    assert res.exit_code == 0, res.output
    quarantined = pl.read_parquet(tmp_path / "out/world/quarantine/events.parquet")
    assert len(quarantined) == injected["events"]  # every injected bad row, no more, no fewer
    assert quarantined["reason"].null_count() == 0
    for split in ("direct", "think", "test"):
        assert len(pl.read_parquet(tmp_path / f"out/samples/{split}.parquet")) > 0, split

    res = runner.invoke(app, ["stats", str(tmp_path / "out/samples"), *base])
    assert res.exit_code == 0 and "direct.samples" in res.output
    res = runner.invoke(app, ["stats", str(tmp_path / "out/world"), *base])
    assert res.exit_code == 0 and "events.search" in res.output and "quarantined.events" in res.output

    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["cli"], output_format="list")}
    assert runs["build-samples"].data.metrics["validate.events.rejected"] == injected["events"]
    assert runs["build-samples"].data.metrics["samples.direct.samples"] > 0
    assert runs["simulate"].data.params["world.users"] == "150"


def test_config_errors_exit_2_and_name_the_key(base):
    res = runner.invoke(app, ["simulate", *base, "world.userz=3"])
    assert res.exit_code == 2
    assert "world.userz" in res.output


def test_not_a_world_fails_cleanly(base, tmp_path):
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["build-samples", *base, "--world", str(tmp_path / "empty")])
    assert res.exit_code == 1
    assert "error" in res.output and "Traceback" not in res.output
