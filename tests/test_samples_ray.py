"""Issue 21 item 4 ("Samples on Ray"): ``aigq build-samples`` with ``samples.ray_shards`` = N > 0 builds the samples
in N Ray tasks over user shards (``actors/samples.py``) and writes the very folder the single-process build writes:
every parquet file's rows in the same order, its key-value metadata, ``meta.json`` (statistics included), and the
related-queries serving table."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from aigq import pipeline
from aigq.config import SamplesConfig, load_config
from aigq.data import samples as S
from aigq.data.simulate import simulate_world
from aigq.tracking import Tracker

BASE = ["tracking.enabled=false", "world.users=60", "world.days=8", "world.chunk_users=1000"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("samples_ray")
    cfg = load_config(None, [f"run.output_dir={out}", *BASE])
    simulate_world(cfg.world, cfg.run.seed, out / "world")
    return out


def _build(world: Path, name: str, *overrides: str) -> tuple[Path, dict[str, float]]:
    cfg = load_config(None, [f"run.output_dir={world}", *BASE, *overrides])
    out = world / name
    _, stats = pipeline.build_samples(cfg, Tracker(cfg.tracking), world=world / "world", out=out)
    return out, stats


def _same_folder(a: Path, b: Path) -> None:
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for name in files:
        if name.endswith(".parquet"):
            da, db = pl.read_parquet(a / name), pl.read_parquet(b / name)
            assert da.height and da.equals(db), name  # the same rows, in the same order
            assert pq.read_schema(a / name).metadata == pq.read_schema(b / name).metadata, name
    assert json.loads((a / "meta.json").read_text()) == json.loads((b / "meta.json").read_text())


@pytest.mark.parametrize(("shards", "extra"), [
    (2, ()),
    (3, ("samples.related_queries=3", "samples.max_prompt_tokens=120")),  # evidence across shards; prompts refit
])
def test_ray_shards_write_the_single_process_folder(ray_local, world, shards, extra):
    one, one_stats = _build(world, f"one-{shards}", "samples.ray_shards=0", *extra)
    many, many_stats = _build(world, f"ray-{shards}", f"samples.ray_shards={shards}", *extra)
    _same_folder(one, many)
    assert many_stats == one_stats
    users = pl.read_parquet(many / "think.parquet")["user_id"]
    assert users.n_unique() >= shards  # every shard had users to build
    if extra:
        assert (many / "related.parquet").is_file() and "related.test.coverage" in many_stats
        assert any("\nRelated Queries: {" in p for p in pl.read_parquet(many / "test.parquet")["prompt"])


def test_a_shard_needs_the_whole_worlds_label_source(world):
    """``label_source=auto`` is decided by the whole world (a shard may hold no exposure): a part refuses it."""
    with pytest.raises(ValueError, match="resolved"):
        S.build_part({}, "2025-10-01", 8, SamplesConfig())
    assert S.recorded_config({}, SamplesConfig(ray_shards=4)).model_dump() == \
        SamplesConfig(label_source="next_searches").model_dump()
