"""The pipeline's stages as plain functions: each takes the resolved config and a tracker, does its work, logs to
MLflow and returns what it measured. The CLI and the end-to-end demo both call these.

A stage that writes a folder (``simulate`` / ``import_log`` → the world, ``build_samples`` → the samples) builds it
whole in a temporary sibling and swaps it in only once the stage succeeded (``_staged``): a failed stage leaves the
existing folder as it was, and a folder at that path that is not one of ours is refused (``NotOurFolderError``)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import polars as pl

from aigq.atomic import staged_dir
from aigq.config import AIGQConfig
from aigq.data import schema
from aigq.data.validate import QUARANTINE, NotALogError
from aigq.tracking import Tracker

# What makes an existing output folder one of ours: meta.json with this key (an empty folder is fine too).
_MARKER = {"world": "source", "samples": "special_tokens"}


class NotOurFolderError(FileExistsError, NotALogError):
    """The output path holds something that is not a world/samples folder: it is refused, never replaced.

    A ``FileExistsError``; also a ``NotALogError`` (a ``ValueError``) so the CLI's stage commands, which catch that,
    report it as a one-line error."""


def _check_ours(folder: Path, kind: str) -> None:
    """Refuse to replace ``folder`` unless it is absent, empty, or a ``kind`` folder written by this project."""
    if not folder.exists():
        return
    if folder.is_dir() and not any(folder.iterdir()):
        return
    key = _MARKER[kind]
    try:
        meta = json.loads((folder / "meta.json").read_text()) if folder.is_dir() else None
    except (OSError, ValueError):
        meta = None
    if not (isinstance(meta, dict) and key in meta):
        raise NotOurFolderError(
            f"{folder} exists and is not a {kind} folder (no meta.json with {key!r}); refusing to replace it: "
            f"remove it or choose another folder")


@contextmanager
def _staged(folder: Path, kind: str) -> Iterator[Path]:
    """Build a ``kind`` folder whole in a temporary sibling (``.<name>.tmp-<pid>``), yielded; it replaces ``folder``
    only when the body succeeds, so stale parts of a bigger earlier run do not survive and a failed stage leaves the
    existing folder untouched (the temporary one is removed either way). A folder that is not one of ours is refused
    before anything is written. A symlinked folder is rewritten where it points."""
    folder = Path(folder)
    _check_ours(folder.resolve() if folder.is_symlink() else folder, kind)
    with staged_dir(folder) as tmp:
        yield tmp


def _moved(path: Path | None, tmp: Path, folder: Path) -> Path | None:
    """Where a file written under the temporary folder ``tmp`` lies once it became ``folder``."""
    if path is None or not Path(path).is_relative_to(tmp):
        return path
    return folder / Path(path).relative_to(tmp)


def simulate(cfg: AIGQConfig, tracker: Tracker, out: Path | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    from aigq.data.simulate import simulate_world

    world = Path(out or cfg.world_dir())
    with _staged(world, "world") as tmp, tracker.run("simulate", cfg, tags={"aigq.world": str(world)}):
        t0 = time.perf_counter()
        meta = simulate_world(cfg.world, cfg.run.seed, tmp, progress)
        meta["seconds"] = round(time.perf_counter() - t0, 3)
        tracker.metrics({f"world.{k}": v for k, v in meta.items() if isinstance(v, int | float)})
        tracker.metrics({f"world.injected_malformed.{k}": v for k, v in meta["injected_malformed"].items()})
    return {"world": str(world), **meta}


def import_log(cfg: AIGQConfig, tracker: Tracker, path: Path, out: Path | None = None):
    from aigq.data.importer import import_log as _import

    world = Path(out or cfg.world_dir())
    rejects = world.parent / f"{world.name}.rejected-import.parquet"  # a failed import's rows, with reasons
    with _staged(world, "world") as tmp, tracker.run("import-log", cfg, tags={"aigq.input": str(path)}):
        try:
            report = _import(path, tmp, cfg.importer)
        except NotALogError as exc:
            _keep_rejects(exc, tmp, rejects)
        tracker.metrics({"import.rows_in": report.rows_in, "import.rows_ok": report.rows_ok,
                         "import.rejected": report.rejected,
                         **{f"import.rejected.{k}": v for k, v in report.by_reason.items()}})
        if report.quarantine is not None:
            tracker.artifact(report.quarantine, "quarantine")
    rejects.unlink(missing_ok=True)  # an earlier failed attempt's rows are stale now
    report.world, report.quarantine = world, _moved(report.quarantine, tmp, world)
    for side in report.side.values():
        side.quarantine = _moved(side.quarantine, tmp, world)
    return report


def _keep_rejects(exc: NotALogError, tmp: Path, rejects: Path) -> NoReturn:
    """Re-raise a failed import's error; the rejected rows its message points to (``see <tmp>/quarantine/...``) are
    moved out of the temporary folder, which is removed, to ``rejects`` beside the untouched world."""
    written = tmp / QUARANTINE / "import.parquet"
    if str(written) not in str(exc) or not written.is_file():
        raise exc
    shutil.move(written, rejects)
    raise NotALogError(str(exc).replace(str(written), str(rejects))) from exc


def validate(world: Path, tracker: Tracker):
    from aigq.data.validate import validate_world

    validated = validate_world(world)
    tracker.metrics({f"validate.{k}": v for k, v in validated.summary().items()})
    return validated


def build_samples(cfg: AIGQConfig, tracker: Tracker, world: Path | None = None,
                  out: Path | None = None) -> tuple[Any, dict[str, float]]:
    """Validate the world (quarantining bad rows), then build Direct / Think / test samples chunk by chunk straight
    into parquet (memory: the validated tables plus one chunk), in this process or, with ``samples.ray_shards`` > 0,
    in that many Ray tasks over user shards (``actors.samples``: the same folder). Returns (validated world, sample
    statistics)."""
    from aigq.data.samples import build_samples_to
    from aigq.models.factory import prompt_token_counter

    world = world or cfg.world_dir()
    out = Path(out or cfg.samples_dir())
    with (_staged(out, "samples") as tmp,
          tracker.run("build-samples", cfg, tags={"aigq.world": str(world), "aigq.samples": str(out)})):
        t0 = time.perf_counter()
        validated = validate(world, tracker)  # writes world/quarantine/ in the world folder itself
        t1 = time.perf_counter()
        count, counted_by = prompt_token_counter(cfg)  # samples.max_prompt_tokens (None: no budget)
        if count is not None:
            tracker.params({"samples.prompt_tokens_counted_by": counted_by})
        start, days = validated.meta["start_date"], int(validated.meta["days"])
        if cfg.samples.ray_shards:  # issue 21: the same folder, built by Ray tasks over user shards
            from actors.samples import build_samples_on_ray

            stats = build_samples_on_ray(cfg, validated.tables, start, days, tmp, count_tokens=count)
        else:
            stats = build_samples_to(validated.tables, start, days, cfg.samples, tmp, count_tokens=count)
            if cfg.samples.related_queries:  # issue 18: the related-queries line, from what each sample's day knew
                from aigq.data.related import augment_samples

                stats.update(augment_samples(tmp, validated.tables, start, days, cfg.samples, count))
        t2 = time.perf_counter()
        tracker.metrics({f"samples.{k}": v for k, v in stats.items()})
        tracker.metrics({"seconds.validate": t1 - t0, "seconds.build": t2 - t1})
        tracker.artifact(tmp / "meta.json", "samples")
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
