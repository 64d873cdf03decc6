"""The ``aigq`` command line. Every command takes ``--config FILE`` and dotted overrides (``world.users=5000``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aigq import pipeline
from aigq.config import AIGQConfig, ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="AIGQ: generative pre-search query recommendation on Ray, vLLM and MLflow.")
console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (configs/*.yaml).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. world.users=5000", show_default=False)]


def _config(config: Path | None, overrides: list[str] | None) -> AIGQConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from None


def _tracker(cfg: AIGQConfig):
    from aigq.tracking import Tracker

    return Tracker(cfg.tracking)


def _table(title: str, rows: dict[str, Any]) -> Table:
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("what")
    t.add_column("value", justify="right")
    for k, v in rows.items():
        t.add_row(str(k), f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else str(v))
    return t


def _fail(exc: Exception) -> None:
    """One line (never wrapped; the message is text, not markup), exit status 1, no traceback."""
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(1)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


@app.command()
def simulate(config: ConfigOpt = None, out: Annotated[Path | None, typer.Option(help="World folder.")] = None,
             overrides: Overrides = None) -> None:
    """Simulate a world (users, items, events, HintQ exposures) from a hidden user model into parquet."""
    from aigq.data.validate import NotALogError

    cfg = _config(config, overrides)
    try:
        with _progress() as prog:
            task = prog.add_task("simulating users", total=None)
            meta = pipeline.simulate(cfg, _tracker(cfg), out,
                                     progress=lambda done, total: prog.update(task, completed=done, total=total))
    except NotALogError as exc:  # the output folder is not one of ours (pipeline.NotOurFolderError)
        _fail(exc)
    console.print(_table(f"world → {meta['world']}", {k: v for k, v in meta.items() if k != "world"}))


@app.command("import-log")
def import_log(path: Annotated[Path, typer.Argument(help="Search log (CSV/TSV or parquet).")],
               config: ConfigOpt = None, out: Annotated[Path | None, typer.Option(help="World folder.")] = None,
               preset: Annotated[str | None, typer.Option(help="Log layout: columns | aol (importer.preset).")] = None,
               items: Annotated[Path | None, typer.Option(
                   help="Side table item_id,title[,category] (importer.items).")] = None,
               categories: Annotated[Path | None, typer.Option(
                   help="Side table category_id,name[,parent] (importer.categories).")] = None,
               overrides: Overrides = None) -> None:
    """Import a plain search log (user, query time, query, clicked item, category, click time) into a world."""
    from aigq.data.validate import NotALogError

    cfg = _config(config, [*(overrides or []), *([f"importer.preset={preset}"] if preset else [])])
    if items is not None:
        cfg.importer.items = str(items)
    if categories is not None:
        cfg.importer.categories = str(categories)
    try:
        report = pipeline.import_log(cfg, _tracker(cfg), path, out)
    except (NotALogError, FileNotFoundError) as exc:
        _fail(exc)
    rows: dict[str, Any] = {"preset": report.preset, "rows in": report.rows_in, "rows imported": report.rows_ok,
                            "rows quarantined": report.rejected, **{f"  {k}": v for k, v in report.by_reason.items()}}
    for kind, side in report.side.items():
        rows.update({f"{kind} table rows": side.rows_in, f"{kind} table rows rejected": side.rows_in - side.rows_ok,
                     **{f"  {k}": v for k, v in side.by_reason.items()}, f"log {kind} named by it": side.matched})
    console.print(_table(f"import → {report.world}", rows))
    if report.quarantine:
        console.print(f"quarantined rows (with reasons): {report.quarantine}")
    for kind, side in report.side.items():
        if side.quarantine:
            console.print(f"rejected {kind} table rows (with reasons): {side.quarantine}")


@app.command()
def validate(config: ConfigOpt = None, world: Annotated[Path | None, typer.Option(help="World folder.")] = None,
             overrides: Overrides = None) -> None:
    """Check every table of a world against its schema; write rejected rows to world/quarantine/."""
    from aigq.data.validate import NotALogError

    cfg = _config(config, overrides)
    try:
        v = pipeline.validate(world or cfg.world_dir(), _tracker(cfg))
    except (NotALogError, FileNotFoundError) as exc:
        _fail(exc)
    _print_validation("validation", v)


def _print_validation(title: str, v) -> None:
    t = Table(title=title, header_style="bold")
    for col in ("table", "rows in", "ok", "quarantined", "reasons"):
        t.add_column(col)
    for name, r in v.reports.items():
        t.add_row(name, f"{r.rows_in:,}", f"{r.rows_ok:,}", f"{r.rejected:,}",
                  ", ".join(f"{k}: {n}" for k, n in r.by_reason.items()))
    console.print(t)


@app.command("build-samples")
def build_samples(config: ConfigOpt = None,
                  world: Annotated[Path | None, typer.Option(help="World folder.")] = None,
                  out: Annotated[Path | None, typer.Option(help="Samples folder.")] = None,
                  overrides: Overrides = None) -> None:
    """Validate a world and build AIGQ-Direct / AIGQ-Think training samples and per user-day test targets."""
    from aigq.data.validate import NotALogError

    cfg = _config(config, overrides)
    try:
        with console.status("validating and building samples"):
            validated, stats = pipeline.build_samples(cfg, _tracker(cfg), world, out)
    except (NotALogError, FileNotFoundError) as exc:
        _fail(exc)
    rejected = {f"quarantined {k}": r.rejected for k, r in validated.reports.items() if r.rejected}
    console.print(_table(f"samples → {out or cfg.samples_dir()}", {**stats, **rejected}))


@app.command()
def stats(path: Annotated[Path | None, typer.Argument(help="A world or samples folder.")] = None,
          config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Summarise a world folder or a samples folder."""
    cfg = _config(config, overrides)
    target = path or cfg.world_dir()
    try:
        if (target / "meta.json").is_file() and (target / "events").is_dir():
            console.print(_table(f"world {target}", pipeline.world_stats(target)))
        else:
            console.print(_table(f"samples {target}", pipeline.samples_stats(target)))
    except FileNotFoundError as exc:
        _fail(exc)


def _import_or_simulate(cfg: AIGQConfig, tracker: Any, log: Path | None) -> None:
    """The demo's first step: import the user's log (``--log``) or simulate the embedded world."""
    from aigq.data.validate import NotALogError

    if log is None:
        try:
            with _progress() as prog:
                task = prog.add_task("1/3 simulate", total=None)
                meta = pipeline.simulate(cfg, tracker, progress=lambda d, t: prog.update(task, completed=d, total=t))
        except NotALogError as exc:  # the output folder is not one of ours (pipeline.NotOurFolderError)
            _fail(exc)
        console.print(_table(f"1/3 world → {meta['world']}", {k: meta[k] for k in
                                                               ("users", "events", "exposures", "clicked_exposures")}))
        return
    try:
        with console.status(f"1/3 import {log}"):
            report = pipeline.import_log(cfg, tracker, log)
    except (NotALogError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(_table(f"1/3 import {log} ({report.preset}) → {report.world}", {
        "rows in": report.rows_in, "rows imported": report.rows_ok, "rows quarantined": report.rejected,
        **report.counts}))


@app.command()
def demo(config: ConfigOpt = None,
         log: Annotated[Path | None, typer.Option(
             "--log", help="Your own search log (CSV/TSV or parquet) instead of the simulated world; the config "
                           "then defaults to configs/search_log.yaml.")] = None,
         items: Annotated[Path | None, typer.Option(help="With --log: side table item_id,title[,category].")] = None,
         categories: Annotated[Path | None, typer.Option(
             help="With --log: side table category_id,name[,parent].")] = None,
         overrides: Overrides = None) -> None:
    """End to end, one MLflow parent run: simulate (or import --log) → validate → samples → IL-SFT → reward model
    → IL-GRPO → Think index + Serve apps → HintQ answers for a few users → evaluation of baselines and the demo's
    policies (Table 1; with --log the last-query protocol of configs/search_log.yaml)."""
    import polars as pl

    from aigq.data.schema import read_meta

    default = Path("configs/search_log.yaml" if log else "configs/tiny_cpu.yaml")
    side = [f"importer.{k}={v}" for k, v in (("items", items), ("categories", categories)) if v is not None]
    cfg = _config(config or default, [*(overrides or []), *side])
    tracker = _tracker(cfg)
    with tracker.run("demo", cfg, tags={"aigq.pipeline": "demo", **({"aigq.input": str(log)} if log else {})}):
        _import_or_simulate(cfg, tracker, log)
        with console.status("2/3 validate + 3/3 build samples"):
            validated, stats = pipeline.build_samples(cfg, tracker)
        _print_validation("2/3 validation (bad rows → world/quarantine/)", validated)
        console.print(_table(f"3/3 samples → {cfg.samples_dir()}", stats))
        if not stats.get("direct.samples"):
            _fail(ValueError(f"no AIGQ-Direct samples from {cfg.world_dir()}: no train-day exposure with a click "
                             "and no user with a search session before their held-out last query"))
        direct = pl.read_parquet(cfg.samples_dir() / "direct.parquet", n_rows=1)
        label_source = read_meta(cfg.samples_dir())["samples_config"]["label_source"]
        console.print(f"[bold]one AIGQ-Direct sample[/bold] (labels from {label_source})")
        console.print(direct["prompt"][0], markup=False)
        console.print(f"target: {direct['target'][0].to_list()}", markup=False)
        console.print(f"test user-days: {stats.get('test.samples', 0):,.0f}, cold-start share "
                      f"{stats.get('test.cold_start_share', 0):.3f}; held-out last queries: "
                      f"{stats.get('last_query.samples', 0):,.0f}")
        from aigq.cli_models import train_and_report  # issue 3: IL-SFT of the tiny policy + sampled lists

        train_and_report(cfg, tracker, title="IL-SFT")
        from aigq.cli_rewards import demo_ctr  # issue 4: CTR reward model for the last train day (HintQ ranks with it)

        ctr = demo_ctr(cfg, tracker, _table)
        from aigq.cli_grpo import train_grpo_and_report  # issue 5: IL-GRPO against that CTR model + rule rewards

        train_grpo_and_report(cfg, tracker)
        from aigq.cli_serve import demo_serve  # issue 6: think index, Serve apps up, HintQ answers a few users

        demo_serve(cfg, tracker, _table, config=config or default, overrides=[*(overrides or []), *side])
        from aigq.cli_eval import demo_eval  # issue 7: Table-1 metrics for baselines and the demo's policies

        demo_eval(cfg, tracker)
    from aigq.evaluation.offline import eval_dir

    out = Path(cfg.run.output_dir)
    days = int(read_meta(cfg.world_dir())["days"])
    console.print(_table("artefacts", {
        "world": cfg.world_dir(), "samples": cfg.samples_dir(), "IL-SFT policy": out / "sft" / "policy",
        "reward model": ctr["folder"], "IL-GRPO policy": out / "grpo" / "policy",
        "Think index + serve store": out / "serve", "evaluation": eval_dir(cfg), "world days": days}))
    if tracker.enabled:
        console.print(f"MLflow: mlflow ui --backend-store-uri {tracker.uri}")


@app.command("export-log")
def export_log(out: Annotated[Path, typer.Argument(help="Folder for search_log.csv, items.csv, categories.csv.")],
               config: ConfigOpt = None, world: Annotated[Path | None, typer.Option(help="World folder.")] = None,
               overrides: Overrides = None) -> None:
    """Write a world as a plain search log (what `aigq import-log --items --categories` reads back)."""
    from aigq.data.export import export_search_log
    from aigq.data.validate import NotALogError, validate_world

    cfg = _config(config, overrides)
    try:
        v = validate_world(world or cfg.world_dir(), write_quarantine=False)
    except (NotALogError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(_table(f"search log → {out}", export_search_log(v.tables, out)))


from aigq import cli_models  # noqa: E402  (sft + models sub-commands; imports this module's helpers)

cli_models.register(app)

from aigq import cli_rewards  # noqa: E402  (train-ctr: the CTR reward model, issue 4)

cli_rewards.register(app, ConfigOpt, Overrides, _config, _table, _tracker)

from aigq import cli_serve  # noqa: E402  (serve up|down|status|rollout, think-index: issue 6)

cli_serve.register(app, ConfigOpt, Overrides, _config, _table, _tracker)

from aigq import cli_grpo  # noqa: E402  (grpo: IL-GRPO post-training, issue 5)

cli_grpo.register(app)

from aigq import cli_compare  # noqa: E402  (compare: MLflow run comparison, issue 7)

cli_compare.register(app)

from aigq import cli_loop  # noqa: E402  (ab: simulated A/B; loop: the daily closed loop — issue 7)

cli_loop.register(app)

from aigq import cli_eval  # noqa: E402  (eval: offline Table 1 — metrics, baselines, policy variants; issue 7)

cli_eval.register(app)

if __name__ == "__main__":
    app()
