"""Issue 19 item 8 ("Nothing lost"): a stage that rewrites a folder (simulate / import-log → the world,
build-samples → the samples) builds it in a temporary sibling and swaps it in only when it succeeded; a failed
stage leaves the existing folder byte-identical, and a folder that is not one of ours is refused, never replaced."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aigq import pipeline
from aigq.cli import app
from aigq.config import load_config
from aigq.data import schema
from aigq.tracking import Tracker

runner = CliRunner()

# Two users with two searches each: the smallest log the importer accepts.
GOOD_LOG = (
    "user_id,query_time,query,clicked_item,category,click_time\n"
    "u1,2025-10-01T10:00:00,red shoes,i1,shoes,2025-10-01T10:00:05\n"
    "u1,2025-10-02T11:00:00,blue shoes,,,\n"
    "u2,2025-10-01T12:00:00,lamp,i2,lighting,\n"
    "u2,2025-10-03T09:00:00,desk lamp,,,\n"
)
# A header and rows, none of them valid (every query time is unparsable): the importer fails with NotALogError.
BAD_LOG = (
    "user_id,query_time,query,clicked_item,category,click_time\n"
    "u1,not-a-time,red shoes,,,\n"
    "u2,garbage,lamp,,,\n"
)


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return [f"run.output_dir={tmp_path / 'out'}", "tracking.enabled=false", "world.users=50", "world.days=4"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_leftovers(parent: Path) -> None:
    """No temporary (``.<name>.tmp-<pid>``) or set-aside (``.<name>.old-<pid>``) folder is left next to the output."""
    left = [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert left == [], left


def _one_line_error(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def _simulated_world(base, tmp_path) -> tuple[Path, dict[str, bytes]]:
    res = runner.invoke(app, ["simulate", *base])
    assert res.exit_code == 0, res.output
    world = tmp_path / "out" / "world"
    before = _snapshot(world)
    assert "meta.json" in before and schema.table_files(world, "events")
    return world, before


def test_import_of_missing_log_keeps_the_world(base, tmp_path):
    world, before = _simulated_world(base, tmp_path)
    res = runner.invoke(app, ["import-log", str(tmp_path / "nope.csv"), *base])
    line = _one_line_error(res)
    assert "nope.csv" in line
    assert _snapshot(world) == before  # byte-identical: nothing deleted, nothing rewritten
    _no_leftovers(world.parent)


def test_failing_import_keeps_the_world_then_a_good_one_replaces_it(base, tmp_path):
    world, before = _simulated_world(base, tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD_LOG)
    res = runner.invoke(app, ["import-log", str(bad), *base])
    line = _one_line_error(res)
    assert "no valid rows" in line
    assert _snapshot(world) == before
    _no_leftovers(world.parent)
    # the message's "see <file>" names rejected rows that still exist (not a file in a removed temporary folder)
    seen = Path(line.rsplit("see ", 1)[1].strip())
    assert seen.is_file() and not seen.is_relative_to(world), line

    log = tmp_path / "log.csv"
    log.write_text(GOOD_LOG + "u3,not-a-time,chair,,,\n")
    cfg = load_config(None, base)
    report = pipeline.import_log(cfg, Tracker(cfg.tracking), log)
    assert report.world == world  # the report names the world, not a temporary folder
    assert report.quarantine == world / "quarantine" / "import.parquet" and report.quarantine.is_file()
    assert json.loads((world / "meta.json").read_text())["source"] == "importer"
    assert not (world / "hidden").exists()  # nothing of the simulated world survives
    assert len(schema.table_files(world, "events")) == 1
    assert not seen.exists()  # the failed attempt's rejected rows are stale now
    _no_leftovers(world.parent)


def test_resimulation_swaps_in_a_smaller_world_whole(base, tmp_path):
    big = [*base, "world.users=120", "world.chunk_users=40"]
    res = runner.invoke(app, ["simulate", *big])
    assert res.exit_code == 0, res.output
    world = tmp_path / "out" / "world"
    old = _snapshot(world)
    assert len(schema.table_files(world, "events")) == 3

    cfg = load_config(None, [*base, "world.users=40", "world.chunk_users=40"])
    during = []
    meta = pipeline.simulate(cfg, Tracker(cfg.tracking), progress=lambda d, t: during.append(_snapshot(world)))
    assert during and all(s == old for s in during)  # while the new world is built, the old one stays whole
    assert meta["world"] == str(world)
    assert len(schema.table_files(world, "events")) == 1  # no stale part of the bigger world survives
    assert {Path(k).parts[0] for k in _snapshot(world)} <= {Path(k).parts[0] for k in old}
    assert json.loads((world / "meta.json").read_text())["users"] == 40
    _no_leftovers(world.parent)


def test_failing_simulation_keeps_the_world(base, tmp_path):
    world, before = _simulated_world(base, tmp_path)
    cfg = load_config(None, [*base, "world.users=80", "world.chunk_users=40"])

    def boom(done, total):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        pipeline.simulate(cfg, Tracker(cfg.tracking), progress=boom)
    assert _snapshot(world) == before
    _no_leftovers(world.parent)


def test_failing_build_samples_keeps_the_samples(base, tmp_path):
    _simulated_world(base, tmp_path)
    res = runner.invoke(app, ["build-samples", *base])
    assert res.exit_code == 0, res.output
    samples = tmp_path / "out" / "samples"
    before = _snapshot(samples)
    assert "meta.json" in before

    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["build-samples", *base, "--world", str(tmp_path / "empty")])
    _one_line_error(res)
    assert _snapshot(samples) == before
    _no_leftovers(samples.parent)

    res = runner.invoke(app, ["build-samples", *base])  # a rebuild swaps in a whole new folder
    assert res.exit_code == 0, res.output
    assert set(_snapshot(samples)) == set(before)
    _no_leftovers(samples.parent)


@pytest.mark.parametrize("content", [{"notes.txt": "mine"}, {"meta.json": '{"name": "not a world"}'}])
def test_a_folder_not_ours_is_refused_and_left_alone(base, tmp_path, content):
    world = tmp_path / "out" / "world"
    world.mkdir(parents=True)
    for name, text in content.items():
        (world / name).write_text(text)
    log = tmp_path / "log.csv"
    log.write_text(GOOD_LOG)

    line = _one_line_error(runner.invoke(app, ["import-log", str(log), *base]))
    assert str(world) in line and "not a world folder" in line
    assert _snapshot(world) == {k: v.encode() for k, v in content.items()}

    cfg = load_config(None, base)
    with pytest.raises(FileExistsError, match="not a world folder"):
        pipeline.simulate(cfg, Tracker(cfg.tracking))
    assert _snapshot(world) == {k: v.encode() for k, v in content.items()}
    _no_leftovers(world.parent)

    for name in content:  # an empty folder is ours to fill
        (world / name).unlink()
    res = runner.invoke(app, ["simulate", *base])
    assert res.exit_code == 0, res.output
    assert json.loads((world / "meta.json").read_text())["source"] == "simulator"
    _no_leftovers(world.parent)


def test_a_samples_folder_not_ours_is_refused(base, tmp_path):
    _simulated_world(base, tmp_path)
    target = tmp_path / "mine"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    line = _one_line_error(runner.invoke(app, ["build-samples", *base, "--out", str(target)]))
    assert str(target) in line and "not a samples folder" in line
    assert _snapshot(target) == {"keep.txt": b"precious"}
    _no_leftovers(tmp_path)

