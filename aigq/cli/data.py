"""Data commands: ``simulate``, ``import-log``, ``validate``, ``build-samples``, ``stats``, ``export-log``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from aigq import pipeline
from aigq.cli.common import ConfigOpt, Overrides, WorldOpt, console, fail, load, open_tracker, progress, table
from aigq.data.validate import NotALogError


def simulate(config: ConfigOpt = None, out: Annotated[Path | None, typer.Option(help="World folder.")] = None,
             overrides: Overrides = None) -> None:
    """Simulate a world (users, items, events, HintQ exposures) from a hidden user model into parquet."""
    cfg = load(config, overrides)
    try:
        with progress() as prog:
            task = prog.add_task("simulating users", total=None)
            meta = pipeline.simulate(cfg, open_tracker(cfg), out,
                                     progress=lambda done, total: prog.update(task, completed=done, total=total))
    except NotALogError as exc:  # the output folder is not one of ours (pipeline.NotOurFolderError)
        fail(exc)
    console.print(table(f"world → {meta['world']}", {k: v for k, v in meta.items() if k != "world"}))


def import_log(path: Annotated[Path, typer.Argument(help="Search log (CSV/TSV or parquet).")],
               config: ConfigOpt = None, out: Annotated[Path | None, typer.Option(help="World folder.")] = None,
               preset: Annotated[str | None, typer.Option(help="Log layout: columns | aol (importer.preset).")] = None,
               items: Annotated[Path | None, typer.Option(
                   help="Side table item_id,title[,category] (importer.items).")] = None,
               categories: Annotated[Path | None, typer.Option(
                   help="Side table category_id,name[,parent] (importer.categories).")] = None,
               overrides: Overrides = None) -> None:
    """Import a plain search log (user, query time, query, clicked item, category, click time) into a world."""
    cfg = load(config, [*(overrides or []), *([f"importer.preset={preset}"] if preset else [])])
    if items is not None:
        cfg.importer.items = str(items)
    if categories is not None:
        cfg.importer.categories = str(categories)
    try:
        report = pipeline.import_log(cfg, open_tracker(cfg), path, out)
    except (NotALogError, FileNotFoundError) as exc:
        fail(exc)
    rows: dict[str, Any] = {"preset": report.preset, "rows in": report.rows_in, "rows imported": report.rows_ok,
                            "rows quarantined": report.rejected, **{f"  {k}": v for k, v in report.by_reason.items()}}
    for kind, side in report.side.items():
        rows.update({f"{kind} table rows": side.rows_in, f"{kind} table rows rejected": side.rows_in - side.rows_ok,
                     **{f"  {k}": v for k, v in side.by_reason.items()}, f"log {kind} named by it": side.matched})
    console.print(table(f"import → {report.world}", rows))
    if report.quarantine:
        console.print(f"quarantined rows (with reasons): {report.quarantine}")
    for kind, side in report.side.items():
        if side.quarantine:
            console.print(f"rejected {kind} table rows (with reasons): {side.quarantine}")


def validate(config: ConfigOpt = None, world: WorldOpt = None,
             overrides: Overrides = None) -> None:
    """Check every table of a world against its schema; write rejected rows to world/quarantine/."""
    cfg = load(config, overrides)
    try:
        v = pipeline.validate(world or cfg.world_dir(), open_tracker(cfg))
    except (NotALogError, FileNotFoundError) as exc:
        fail(exc)
    print_validation("validation", v)


def print_validation(title: str, v) -> None:
    t = Table(title=title, header_style="bold")
    for col in ("table", "rows in", "ok", "quarantined", "reasons"):
        t.add_column(col)
    for name, r in v.reports.items():
        t.add_row(name, f"{r.rows_in:,}", f"{r.rows_ok:,}", f"{r.rejected:,}",
                  ", ".join(f"{k}: {n}" for k, n in r.by_reason.items()))
    console.print(t)


def build_samples(config: ConfigOpt = None,
                  world: WorldOpt = None,
                  out: Annotated[Path | None, typer.Option(help="Samples folder.")] = None,
                  overrides: Overrides = None) -> None:
    """Validate a world and build AIGQ-Direct / AIGQ-Think training samples and per user-day test targets."""
    cfg = load(config, overrides)
    try:
        with console.status("validating and building samples"):
            validated, stats = pipeline.build_samples(cfg, open_tracker(cfg), world, out)
    except (NotALogError, FileNotFoundError) as exc:
        fail(exc)
    rejected = {f"quarantined {k}": r.rejected for k, r in validated.reports.items() if r.rejected}
    console.print(table(f"samples → {out or cfg.samples_dir()}", {**stats, **rejected}))


def stats(path: Annotated[Path | None, typer.Argument(help="A world or samples folder.")] = None,
          config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Summarise a world folder or a samples folder."""
    cfg = load(config, overrides)
    target = path or cfg.world_dir()
    try:
        if (target / "meta.json").is_file() and (target / "events").is_dir():
            console.print(table(f"world {target}", pipeline.world_stats(target)))
        else:
            console.print(table(f"samples {target}", pipeline.samples_stats(target)))
    except FileNotFoundError as exc:
        fail(exc)


def export_log(out: Annotated[Path, typer.Argument(help="Folder for search_log.csv, items.csv, categories.csv.")],
               config: ConfigOpt = None, world: WorldOpt = None,
               overrides: Overrides = None) -> None:
    """Write a world as a plain search log (what `aigq import-log --items --categories` reads back)."""
    from aigq.data.export import export_search_log
    from aigq.data.validate import NotALogError, validate_world

    cfg = load(config, overrides)
    try:
        v = validate_world(world or cfg.world_dir(), write_quarantine=False)
    except (NotALogError, FileNotFoundError) as exc:
        fail(exc)
    console.print(table(f"search log → {out}", export_search_log(v.tables, out)))


def register(app: typer.Typer) -> None:
    for name, fn in (("simulate", simulate), ("import-log", import_log), ("validate", validate),
                     ("build-samples", build_samples), ("stats", stats), ("export-log", export_log)):
        app.command(name)(fn)
