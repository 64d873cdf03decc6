"""The pipeline's stages as plain functions: each takes the resolved config and a tracker, does its work, logs to
MLflow and returns what it measured. The CLI and the end-to-end demo both call these."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from aigq.config import AIGQConfig
from aigq.data import schema
from aigq.tracking import Tracker


def _fresh(folder: Path) -> Path:
    """A world/samples folder is rewritten whole: stale parts from a bigger earlier run must not survive."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def simulate(cfg: AIGQConfig, tracker: Tracker, out: Path | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    from aigq.data.simulate import simulate_world

    world = _fresh(out or cfg.world_dir())
    with tracker.run("simulate", cfg, tags={"aigq.world": str(world)}):
        t0 = time.perf_counter()
        meta = simulate_world(cfg.world, cfg.run.seed, world, progress)
        meta["seconds"] = round(time.perf_counter() - t0, 3)
        tracker.metrics({f"world.{k}": v for k, v in meta.items() if isinstance(v, int | float)})
        tracker.metrics({f"world.injected_malformed.{k}": v for k, v in meta["injected_malformed"].items()})
    return {"world": str(world), **meta}


def import_log(cfg: AIGQConfig, tracker: Tracker, path: Path, out: Path | None = None):
    from aigq.data.importer import import_log as _import

    world = _fresh(out or cfg.world_dir())
    with tracker.run("import-log", cfg, tags={"aigq.input": str(path)}):
        report = _import(path, world, cfg.importer)
        tracker.metrics({"import.rows_in": report.rows_in, "import.rows_ok": report.rows_ok,
                         "import.rejected": report.rejected,
                         **{f"import.rejected.{k}": v for k, v in report.by_reason.items()}})
        if report.quarantine is not None:
            tracker.artifact(report.quarantine, "quarantine")
    return report


def validate(world: Path, tracker: Tracker):
    from aigq.data.validate import validate_world

    validated = validate_world(world)
    tracker.metrics({f"validate.{k}": v for k, v in validated.summary().items()})
    return validated


def build_samples(cfg: AIGQConfig, tracker: Tracker, world: Path | None = None,
                  out: Path | None = None) -> tuple[Any, dict[str, float]]:
    """Validate the world (quarantining bad rows), then build Direct / Think / test samples chunk by chunk straight
    into parquet (memory: the validated tables plus one chunk). Returns (validated world, sample statistics)."""
    from aigq.data.samples import build_samples_to

    world = world or cfg.world_dir()
    out = _fresh(out or cfg.samples_dir())
    with tracker.run("build-samples", cfg, tags={"aigq.world": str(world), "aigq.samples": str(out)}):
        t0 = time.perf_counter()
        validated = validate(world, tracker)
        t1 = time.perf_counter()
        stats = build_samples_to(validated.tables, validated.meta["start_date"], int(validated.meta["days"]),
                                 cfg.samples, out)
        t2 = time.perf_counter()
        tracker.metrics({f"samples.{k}": v for k, v in stats.items()})
        tracker.metrics({"seconds.validate": t1 - t0, "seconds.build": t2 - t1})
        tracker.artifact(out / "meta.json", "samples")
    return validated, stats


def world_stats(world: Path) -> dict[str, Any]:
    """Row counts and behaviour mix of a world folder (streams over parquet parts)."""
    meta = schema.read_meta(world)
    out: dict[str, Any] = {"source": meta.get("source"), "start_date": meta.get("start_date"), "days": meta.get("days")}
    for name in schema.TABLES:
        files = schema.table_files(world, name)
        out[f"{name}"] = pl.scan_parquet(files).select(pl.len()).collect().item() if files else 0
    ev_files = schema.table_files(world, "events")
    if ev_files:
        for row in pl.scan_parquet(ev_files).group_by("type").len().sort("type").collect().iter_rows():
            out[f"events.{row[0]}"] = row[1]
    ex_files = schema.table_files(world, "exposures")
    if ex_files:
        ctr = pl.scan_parquet(ex_files).select(pl.col("clicked").list.any().mean()).collect().item()
        out["exposures.with_click"] = round(ctr or 0.0, 4)
    q = Path(world) / "quarantine"
    for f in sorted(q.glob("*.parquet")) if q.is_dir() else []:
        out[f"quarantined.{f.stem}"] = pl.scan_parquet(f).select(pl.len()).collect().item()
    return out


def samples_stats(samples: Path) -> dict[str, Any]:
    meta_path = Path(samples) / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{samples} is not a samples folder (no meta.json); run `aigq build-samples`")
    out: dict[str, Any] = {}
    for split in ("direct", "think", "test", "last_query"):
        f = Path(samples) / f"{split}.parquet"
        if f.is_file():
            df = pl.read_parquet(f, columns=["target", "user_id"])
            out[f"{split}.samples"] = len(df)
            out[f"{split}.users"] = df["user_id"].n_unique()
            out[f"{split}.mean_target_len"] = round(df["target"].list.len().mean() or 0.0, 2)
    out["special_tokens"] = len(json.loads(meta_path.read_text()).get("special_tokens", []))
    return out
