"""``aigq eval`` end to end on a small simulated world: baselines, a policy arm through the rollout engine (a random
tiny policy standing in for IL-SFT), rows for what is missing, the markdown table, MLflow; bad input fails cleanly."""

import json

import mlflow
import polars as pl
import pytest
from cli_world import cli_world
from typer.testing import CliRunner

from aigq.cli import app

runner = CliRunner()
FAST = ["eval.max_user_days=6", "eval.ebr_epochs=1", "eval.ebr_buckets=16384", "eval.ebr_dim=16",
        "eval.engine=transformers", "eval.max_tokens=8", "eval.sampled_lists=1", "eval.sem_sim=ngram"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalcli")
    return tmp, cli_world(tmp / "out", 120, 8, f"tracking.root={tmp / 'ml'}", "tracking.experiment=eval-cli")


def test_eval_table_with_baselines_policy_arm_and_missing_rows(world, tiny_policy, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tmp, base = world
    tiny_policy(tmp / "out" / "sft" / "policy")  # the demo's IL-SFT folder: direct-il-sft reuses it
    tiny_policy(tmp / "out" / "variants" / "direct-il-sft+grpo" / "grpo" / "policy")  # a --suite variant folder
    arms = "popularity,co-click,ebr,zero-shot,direct-sft,direct-il-sft,direct-il-sft+grpo"
    res = runner.invoke(app, ["eval", *base, *FAST, f"eval.zero_shot_model={tmp / 'none'}", "--arms", arms])
    assert res.exit_code == 0, res.output
    md = (tmp / "out" / "eval" / "table1.md").read_text()
    head = md.splitlines()[0]
    assert "Cate HR@30" in head and "Sem. Sim." in head and "Query HR@30" in head and "Unique Cates" in head
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "not prepared" in rows["Zero-shot SmolLM2-135M-Instruct"]
    assert "not trained" in rows["AIGQ-Direct_SFT"]
    for name in ("Popularity", "Co-click", "EBR (two-tower)", "AIGQ-Direct_IL-SFT", "AIGQ-Direct_IL-SFT+GRPO"):
        assert name in rows and "0." in rows[name], rows.get(name)
    figures = json.loads((tmp / "out" / "eval" / "metrics.json").read_text())
    assert figures["co-click"]["user_days"] == 6 and 0 <= figures["co-click"]["cate_hr"] <= 1
    lists = pl.read_parquet(tmp / "out" / "eval" / "lists" / "direct-il-sft.parquet")
    assert lists.height == 6 and lists["queries"].list.len().max() <= 30
    # MLflow: one eval run with per-arm metrics and the markdown table
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'ml' / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["eval-cli"], filter_string="tags.`aigq.stage` = 'eval'",
                             output_format="list")[0]
    assert "eval.co-click.cate_hr" in run.data.metrics
    assert "eval.direct-il-sft__grpo.query_hr" in run.data.metrics  # MLflow names allow no "+"
    assert "table1.md" in str(mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="eval"))
    # a second call adds one arm and keeps the earlier rows
    res = runner.invoke(app, ["eval", *base, *FAST, "tracking.enabled=false", "--arms", "popularity"])
    assert res.exit_code == 0, res.output
    assert "Co-click" in (tmp / "out" / "eval" / "table1.md").read_text()


def test_bad_input_is_a_clear_error_without_traceback(world, tmp_path):
    _, base = world
    res = runner.invoke(app, ["eval", f"run.output_dir={tmp_path}", "tracking.enabled=false"])
    assert res.exit_code == 1 and "build-samples" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["eval", *base, "tracking.enabled=false", "--arms", "nonsense"])
    assert res.exit_code == 2 and "unknown arm" in res.output
