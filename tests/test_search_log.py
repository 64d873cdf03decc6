"""A plain search log end to end (issue 16): a simulated search-only world exported as CSV and read back, and
`aigq demo --log` on it and on the hand-written AOL-layout fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from serve_helpers import free_port
from typer.testing import CliRunner

from aigq.cli import app
from aigq.data.validate import validate_world

ROOT = Path(__file__).resolve().parents[1]
AOL = ROOT / "tests" / "data" / "aol_sample.tsv"
AIGQ = str(Path(sys.executable).parent / "aigq")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A 120-user, 12-day search-only world (`world.hint_exposure_rate=0`) and its export."""
    tmp = tmp_path_factory.mktemp("searchlog")
    run = CliRunner().invoke
    base = [f"run.output_dir={tmp / 'sim'}", "world.users=120", "world.days=12", "world.hint_exposure_rate=0",
            "tracking.enabled=false"]
    for cmd in (["simulate"], ["export-log", str(tmp / "log")]):
        res = run(app, [*cmd, *base])
        assert res.exit_code == 0, res.output
    return tmp / "sim" / "world", tmp / "log"


def test_export_then_import_gives_back_the_searches_and_clicks(exported, tmp_path):
    world, log = exported
    res = CliRunner().invoke(app, ["import-log", str(log / "search_log.csv"), "--items", str(log / "items.csv"),
                                   "--categories", str(log / "categories.csv"), f"run.output_dir={tmp_path}",
                                   "tracking.enabled=false"])
    assert res.exit_code == 0, res.output
    sim, back = validate_world(world, write_quarantine=False).tables, validate_world(tmp_path / "world").tables
    key = ["user_id", "ts", "query"]
    searches = sim["events"].filter(pl.col("type") == "search").select(key).unique()
    assert back["events"].filter(pl.col("type") == "search").select(key).sort(key).equals(searches.sort(key))
    clicks = back["events"].filter(pl.col("type") == "click")
    assert 0 < clicks.height <= sim["events"].filter(pl.col("type") == "click").height
    desc = dict(sim["items"].select("item_id", "description").iter_rows())
    titled = back["items"].join(clicks.select("item_id").unique(), on="item_id")
    assert titled.height and all(desc[i] == d for i, d in titled.select("item_id", "description").iter_rows())


def _demo(args: list[str], out: Path) -> subprocess.CompletedProcess:
    """`aigq demo --log …` in its own process (its own Ray, Serve on a free port), sized to finish in minutes."""
    small = [f"run.output_dir={out}", f"tracking.root={out / 'mlflow'}", f"serve.port={free_port()}",
             "model.tiny.hidden=64", "model.tiny.intermediate=128", "model.tiny.layers=1", "model.tiny.heads=1",
             "model.tiny.kv_heads=1", "sft.max_steps=4", "sft.eval_every=2", "sft.sample_prompts=4",
             "sft.max_new_tokens=48", "learner.num_workers=1", "ctr.epochs_cold=1", "ctr.pretrain_epochs=0",
             "rollout.engine=transformers", "rollout.max_tokens=48", "grpo.iterations=1", "grpo.prompts_per_iteration=2",
             "grpo.group_size=2", "grpo.eval_every=1", "grpo.eval_prompts=2", "rewards.num_actors=1",
             "eval.max_tokens=48", "eval.sampled_lists=1", "eval.bootstrap=50", "eval.ebr_epochs=1",
             "serve.max_new_tokens=48", "serve.direct_samples=0"]
    # Ray's token authentication on, as every Ray the project starts (aigq/ray_boot.py); the token in the test's folder
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")},
           "RAY_AUTH_TOKEN_PATH": str(out.parent / "ray_auth_token")}
    return subprocess.run([AIGQ, "demo", *args, *small], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env=env)


def _check_demo(res: subprocess.CompletedProcess, out: Path) -> dict:
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    meta = json.loads((out / "samples" / "meta.json").read_text())
    assert meta["samples_config"]["label_source"] == "next_searches" and meta["rows"]["direct"] > 0
    for folder in ("sft/policy", "grpo/policy"):  # each records what it was trained for
        assert json.loads((out / folder / "config.json").read_text())["aigq_variant"] == "direct", folder
    # … so the demo's Think job skips it and says why (a Direct policy writes no T_k => Q_k groups)
    assert "trained for AIGQ-Direct" in " ".join(res.stdout.split())
    ctr = json.loads(next((out / "ctr").glob("day-*/model.json")).read_text())
    assert ctr["meta"]["objective"] == "next_search"
    metrics = json.loads((out / "eval" / "last-query" / "metrics.json").read_text())
    for arm in ("popularity", "co-click", "ebr", "direct-il-sft"):
        assert metrics[arm]["status"] == "ok", (arm, metrics[arm])
        assert metrics[arm]["query_hr_lo"] <= metrics[arm]["query_hr"] <= metrics[arm]["query_hr_hi"]
    assert "HintQ user" in res.stdout and "(200, ranker" in res.stdout  # answered, with the demo's bearer token
    assert "(401" not in res.stdout and "(403" not in res.stdout
    return metrics


def test_demo_log_on_an_exported_search_only_world(exported, tmp_path):
    _, log = exported
    out = tmp_path / "run"
    _check_demo(_demo(["--log", str(log / "search_log.csv"), "--items", str(log / "items.csv"), "--categories",
                       str(log / "categories.csv")], out), out)


def test_demo_log_on_the_aol_fixture(tmp_path):
    out = tmp_path / "run"
    metrics = _check_demo(_demo(["--log", str(AOL), "importer.preset=aol"], out), out)
    assert metrics["popularity"]["user_days"] >= 5  # users with ≥ 2 distinct queries in the fixture


@pytest.mark.parametrize("rows, says", [
    ("", "no data rows"),
    ("7,2026-01-01T10:00:00,sofa\n7,2026-01-02T10:00:00,rug\n", "1 user"),
    ("7,2026-01-01T10:00:00,sofa\n8,2026-01-02T10:00:00,rug\n", "no user searched twice"),
])
def test_demo_log_on_a_log_it_cannot_learn_from_is_one_line(tmp_path, rows, says):
    log = tmp_path / "log.csv"
    log.write_text("user_id,query_time,query\n" + rows)
    res = CliRunner().invoke(app, ["demo", "--log", str(log), f"run.output_dir={tmp_path / 'run'}",
                                   "tracking.enabled=false"])
    assert res.exit_code == 1 and says in res.output and "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1, res.output


def test_a_log_without_categories_has_no_category_to_map_to(tmp_path):
    """The AOL layout names no category: the importer's placeholder is not a category for the evaluator's mapper
    or the CTR model's category index (Cate HR is then undefined, not a hit on "unknown")."""
    from aigq.data.categories import CategoryMapper

    res = CliRunner().invoke(app, ["import-log", str(AOL), "--preset", "aol", f"run.output_dir={tmp_path}",
                                   "tracking.enabled=false"])
    assert res.exit_code == 0, res.output
    mapper = CategoryMapper.from_world(tmp_path / "world")
    assert mapper.categories == [] and mapper.map(["weather.com", "cheap flights"]) == [None, None]
