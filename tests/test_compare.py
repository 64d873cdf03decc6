"""``aigq compare`` against a real (temporary) SQLite MLflow store filled through ``aigq.tracking.Tracker``."""

from __future__ import annotations

import csv

import mlflow
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from aigq.cli import app
from aigq.compare import CompareError, compare, parse_tags, select_runs, write_comparison
from aigq.config import load_config
from aigq.tracking import Tracker, tracking_uri

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two IL-GRPO-like runs in experiment exp-a (different lr and engine, known reward curves and HR@K) and one
    SFT-like run in exp-b."""
    root = tmp_path_factory.mktemp("ml")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)

    def cfg(exp, *extra):
        return load_config(None, [f"tracking.root={root}", f"tracking.experiment={exp}", *extra])

    ids = {}
    for name, exp, extra, curve, extra_metrics in (
        ("a", "exp-a", ["grpo.lr=0.0001", "rollout.engine=vllm"], [0.1, 0.2, 0.3],
         {"grpo.total_gain": 0.2, "eval.query_hr_30": 0.25, "eval.cate_hr_30": 0.5}),
        ("b", "exp-a", ["grpo.lr=0.0002", "rollout.engine=transformers"], [0.1, 0.15, 0.4],
         {"grpo.total_gain": 0.3, "eval.query_hr_30": 0.3}),
    ):
        c = cfg(exp, *extra)
        tr = Tracker(c.tracking)
        with tr.run("grpo", c, tags={"aigq.engine": c.rollout.engine, "aigq.case": name}) as run:
            for step, v in enumerate(curve, start=1):
                tr.metrics({"reward/query.total": v, "reward_std/query.total": 0.01}, step=step)
            tr.metrics(extra_metrics)
        ids[name] = run.info.run_id
    c = cfg("exp-b")
    tr = Tracker(c.tracking)
    with tr.run("sft", c, tags={"aigq.case": "c"}) as run:
        for step, v in enumerate([3.0, 2.0, 1.5], start=1):
            tr.metrics({"train/loss": v, "eval/loss": v + 0.5}, step=step)
    ids["c"] = run.info.run_id
    yield {"root": root, "ids": ids, "client": MlflowClient(tracking_uri=tracking_uri(c.tracking))}
    mp.undo()


def _cases(runs):
    return [r.data.tags["aigq.case"] for r in runs]


def test_selection_by_experiment_tags_filter_and_ids(store):
    client, ids = store["client"], store["ids"]
    assert _cases(select_runs(client, ["exp-a"])) == ["a", "b"]  # oldest first
    assert _cases(select_runs(client, ["exp-a", "exp-b"])) == ["a", "b", "c"]
    assert _cases(select_runs(client, ["exp-a"], tags={"aigq.engine": "transformers"})) == ["b"]
    assert _cases(select_runs(client, ["exp-a", "exp-b"], tags={"aigq.stage": "grpo", "aigq.engine": "vllm"})) == ["a"]
    assert _cases(select_runs(client, ["exp-a"], filter_string="metrics.`eval.query_hr_30` > 0.27")) == ["b"]
    assert _cases(select_runs(client, run_ids=[ids["c"], ids["a"]])) == ["a", "c"]  # experiments follow the ids
    assert _cases(select_runs(client, default_experiment="exp-b")) == ["c"]
    assert _cases(select_runs(client, ["exp-a"], max_runs=1)) == ["b"]  # newest first when capped


def test_selection_errors(store):
    client = store["client"]
    with pytest.raises(CompareError, match="unknown experiment 'nope'.*exp-a"):
        select_runs(client, ["nope"])
    with pytest.raises(CompareError, match="no run with id 'deadbeef'"):
        select_runs(client, run_ids=["deadbeef"])
    with pytest.raises(CompareError, match="no runs matched"):
        select_runs(client, ["exp-a"], tags={"aigq.stage": "sft"})
    with pytest.raises(CompareError, match="bad filter"):
        select_runs(client, ["exp-a"], filter_string="metrics.x >>> 1")
    with pytest.raises(CompareError, match="key=value"):
        parse_tags(["aigq.stage"])
    with pytest.raises(CompareError, match="key=value"):
        parse_tags(["=grpo"])
    assert parse_tags(["a.b=c=d", "x= y "]) == {"a.b": "c=d", "x": "y"}


def test_table_has_differing_params_and_final_metrics(store):
    client = store["client"]
    cmp = compare(client, select_runs(client, ["exp-a"]))
    params = dict(cmp.params)
    assert params["grpo.lr"] == ["0.0001", "0.0002"]
    assert params["rollout.engine"] == ["vllm", "transformers"]
    assert "world.users" not in params and "tracking.experiment" not in params  # equal params are left out
    metrics = dict(cmp.metrics)
    assert metrics["reward/query.total"] == [0.3, 0.4]  # the final value of the curve
    assert metrics["grpo.total_gain"] == [0.2, 0.3]
    assert metrics["eval.query_hr_30"] == [0.25, 0.3]
    assert metrics["eval.cate_hr_30"] == [0.5, None]  # missing in run b
    assert "reward_std/query.total" not in metrics  # std columns are not headline metrics
    assert cmp.bars == ["eval.cate_hr_30", "eval.query_hr_30"]
    assert "reward/query.total" in cmp.curves
    only = compare(client, select_runs(client, ["exp-a"]), metric_patterns=["reward_std/*"])
    assert [k for k, _ in only.metrics] == ["reward_std/query.total"]
    with pytest.raises(CompareError, match="no metric"):
        compare(client, select_runs(client, ["exp-a"]), metric_patterns=["nothing.*"])


def test_files_markdown_csv_and_plots(store, tmp_path):
    client = store["client"]
    cmp = compare(client, select_runs(client, ["exp-a", "exp-b"]))
    files = write_comparison(client, cmp, tmp_path / "out")
    assert set(files) == {"markdown", "csv", "curves", "hr_at_k"}
    for kind in ("curves", "hr_at_k"):
        data = files[kind].read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    md = files["markdown"].read_text()
    assert "| grpo.lr | 0.0001 | 0.0002 | " in md and "| rollout.engine | vllm | transformers | " in md
    assert "| reward/query.total | 0.3 | 0.4 | — |" in md
    assert "| train/loss | — | — | 1.5 |" in md
    assert "![HR@K](hr_at_k.png)" in md and "curves.png" in md
    rows = list(csv.reader(files["csv"].open()))
    assert rows[0][2:] == [store["ids"][k] for k in "abc"]
    by_key = {(r[0], r[1]): r[2:] for r in rows}
    assert [float(x) for x in by_key[("metric", "eval/loss")][2:]] == [2.0]
    assert by_key[("metric", "eval.query_hr_30")][:2] == ["0.25", "0.3"]


def test_plots_skipped_without_curves_or_hr(store, tmp_path):
    client = store["client"]
    cmp = compare(client, select_runs(client, ["exp-a"]), curves=["grpo.total_gain"])  # a single point per run
    files = write_comparison(client, cmp, tmp_path / "o")
    assert "curves" not in files and files["hr_at_k"].exists()


def _cli(store, tmp_path, *args):
    base = [f"tracking.root={store['root']}", "tracking.experiment=exp-a", f"run.output_dir={tmp_path}"]
    return runner.invoke(app, ["compare", *args, *base])


def test_cli_prints_writes_and_logs_a_compare_run(store, tmp_path):
    res = _cli(store, tmp_path, "--tag", "aigq.stage=grpo", "--out", str(tmp_path / "cmp"))
    assert res.exit_code == 0, res.output
    assert "grpo.lr" in res.output and "0.0002" in res.output and "eval.query_hr_30" in res.output
    assert (tmp_path / "cmp" / "comparison.md").stat().st_size > 0
    client = store["client"]
    logged = select_runs(client, ["exp-a"], tags={"aigq.pipeline": "compare"})
    assert len(logged) == 1
    run = logged[0]
    assert run.data.tags["aigq.compared"] == ",".join(store["ids"][k] for k in "ab")
    names = {a.path for a in client.list_artifacts(run.info.run_id, "compare")}
    assert {"compare/comparison.md", "compare/comparison.csv", "compare/curves.png", "compare/hr_at_k.png"} <= names
    # a later comparison of the experiment leaves the compare run out
    res = _cli(store, tmp_path, "--no-log")
    assert res.exit_code == 0, res.output
    assert "2 runs" in res.output and (tmp_path / "compare" / "comparison.md").exists()  # default --out
    assert len(select_runs(client, ["exp-a"], tags={"aigq.pipeline": "compare"})) == 1


@pytest.mark.parametrize("args, message", [
    (["-e", "nope"], "unknown experiment 'nope'"),
    (["-t", "aigq.stage"], "bad --tag 'aigq.stage'"),
    (["-r", "0123456789abcdef"], "no run with id '0123456789abcdef'"),
    (["-t", "aigq.stage=nothing"], "no runs matched"),
    (["-f", "params.x ~ 1"], "bad filter"),
])
def test_cli_errors_are_clear(store, tmp_path, args, message):
    res = _cli(store, tmp_path, "--no-log", *args)
    assert res.exit_code == 1
    assert "error:" in res.output and message in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert mlflow.get_tracking_uri()  # the store is still usable
