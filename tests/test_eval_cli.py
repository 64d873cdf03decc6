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


# ---------------------------------------------------------------- issue 16: the last-query protocol


def _ensure_last_query(samples):
    """The sample builder writes ``last_query.parquet``; should it not, one by hand with ``test.parquet``'s schema
    (one row per user, the first test target as the held-out query)."""
    path = samples / "last_query.parquet"
    if not path.is_file():
        test = pl.read_parquet(samples / "test.parquet").filter(pl.col("target").list.len() > 0)
        lq = test.unique("user_id", keep="first", maintain_order=True).with_columns(
            sample_id=pl.format("l-{}", "user_id"), variant=pl.lit("last_query"),
            target=pl.col("target").list.head(1), triggers=pl.lit([], dtype=pl.List(pl.List(pl.Int32))))
        lq.select(test.columns).write_parquet(path)
    return pl.read_parquet(path)


def _frame(tmp_path, protocol, **files):
    from aigq.config import load_config
    from aigq.evaluation.offline import eval_dir, eval_frame

    cfg = load_config(None, [f"run.output_dir={tmp_path}", "tracking.enabled=false", f"eval.protocol={protocol}"])
    (tmp_path / "samples").mkdir(exist_ok=True)
    for name, users in files.items():
        pl.DataFrame({"user_id": users, "day": [9] * len(users), "prompt": ["p"] * len(users),
                      "target": [["q"]] * len(users), "metadata": [{"cold_start": False}] * len(users)}
                     ).write_parquet(tmp_path / "samples" / f"{name}.parquet")
    return eval_frame(cfg), eval_dir(cfg)


def test_protocol_picks_its_file_and_its_own_eval_folder(tmp_path):
    test, out = _frame(tmp_path, "days", test=[2, 1], last_query=[7])
    assert test["user_id"].to_list() == [1, 2] and out == tmp_path / "eval"
    test, out = _frame(tmp_path, "last-query")
    assert test["user_id"].to_list() == [7] and out == tmp_path / "eval" / "last-query"
    (tmp_path / "samples" / "last_query.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"last_query\.parquet.*build-samples"):
        _frame(tmp_path, "last-query")


def test_eval_last_query_protocol_end_to_end(world, tiny_policy, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tmp, base = world
    out = tmp / "out"
    lq = _ensure_last_query(out / "samples")
    assert lq.height >= 6 and lq["user_id"].is_unique().all() and lq["target"].list.len().eq(1).all()
    days_json = out / "eval" / "metrics.json"
    before = days_json.read_text() if days_json.is_file() else None
    tiny_policy(out / "sft" / "policy")  # direct-il-sft: prompts from the samples' last_query.parquet
    res = runner.invoke(app, ["eval", *base, *FAST, "eval.max_user_days=8", "eval.bootstrap=200",
                              "tracking.experiment=eval-cli-lq", "--protocol", "last-query",
                              "--arms", "popularity,co-click,ebr,direct-il-sft,direct-sft"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "protocol last-query: 8 users' last queries" in text and "cold-start slice" in text
    here = out / "eval" / "last-query"
    figures = json.loads((here / "metrics.json").read_text())
    cold = int(lq.sample(n=8, seed=0)["metadata"].struct.field("cold_start").sum())  # eval.seed's sample
    for arm in ("popularity", "co-click", "ebr", "direct-il-sft"):
        f = figures[arm]
        assert f["status"] == "ok" and f["user_days"] == 8 and f["cold_user_days"] == cold, (arm, f)
        for key in ("query_hr", "query_hr@1", "query_hr@10", "mrr", "cate_hr", "sem_sim"):
            assert f[f"{key}_lo"] <= f[key] <= f[f"{key}_hi"], (arm, key)
        assert f["query_hr@1"] <= f["query_hr@3"] <= f["query_hr@10"] <= f["query_hr@30"] == f["query_hr"]
        assert f["mrr"] <= f["query_hr"]
        lists = pl.read_parquet(here / "lists" / f"{arm}.parquet")
        assert sorted(lists["user_id"].to_list()) == sorted(lq.sample(n=8, seed=0)["user_id"].to_list())
    assert figures["direct-sft"]["status"] == "not trained"
    md = (here / "table1.md").read_text()
    assert "MRR" in md and "Query HR@1" in md and "8 users' last queries" in md and "Cold-start slice" in md
    assert " [0." in md or " [1." in md  # figures with their intervals
    assert (days_json.read_text() if days_json.is_file() else None) == before  # the days protocol's files stay
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'ml' / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["eval-cli-lq"], filter_string="tags.`aigq.stage` = 'eval'",
                             output_format="list")[0]
    assert run.data.tags["aigq.eval.protocol"] == "last-query"
    for key in ("co-click.query_hr_at_10", "co-click.query_hr_at_10_lo", "co-click.mrr_hi", "co-click.cold.mrr",
                "ebr.user_days", "direct-il-sft.query_hr"):
        assert f"eval.last-query.{key}" in run.data.metrics, key
    assert not any(k.startswith("eval.co-click.") for k in run.data.metrics)  # apart from the days protocol's names
    assert "table1.md" in str(mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="eval/last-query"))
    res = runner.invoke(app, ["eval", *base, "tracking.enabled=false", "--protocol", "weeks"])
    assert res.exit_code == 2 and "unknown protocol" in res.output
    res = runner.invoke(app, ["eval", "--help"])
    assert res.exit_code == 0 and "--protocol" in res.output and "last-query" in res.output
