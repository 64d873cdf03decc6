"""``aigq compare`` (registered on the main app by ``aigq.cli``): compare MLflow runs in the terminal, in files and as
the artifacts of a new MLflow run tagged ``aigq.pipeline=compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aigq.cli.common import ConfigOpt, Overrides, console, fail, load
from aigq.compare import CompareError, Comparison, compare, fmt, parse_tags, select_runs, write_comparison

TERMINAL_PARAMS = 30  # differing params shown in the terminal; all of them go to comparison.md / .csv

Many = list[str] | None


def compare_cmd(
    config: ConfigOpt = None,
    experiment: Annotated[Many, typer.Option("--experiment", "-e", help="Experiment name (repeatable). Default: "
                                             "tracking.experiment, or the experiments of the --run ids.")] = None,
    tag: Annotated[Many, typer.Option("--tag", "-t", help="key=value, repeatable (ANDed), e.g. aigq.stage=grpo.")] = None,
    filter_string: Annotated[str | None, typer.Option("--filter", "-f", help="MLflow filter string, e.g. "
                                                      "\"metrics.`grpo.ctr_gain` > 0\".")] = None,
    run: Annotated[Many, typer.Option("--run", "-r", help="Run id (repeatable).")] = None,
    metric: Annotated[Many, typer.Option("--metric", "-m", help="Metric key or glob to show (repeatable); default: "
                                         "losses, rewards, gains, eval metrics.")] = None,
    curve: Annotated[Many, typer.Option("--curve", help="Metric key or glob to plot over steps (repeatable); "
                                        "default: reward and loss curves.")] = None,
    max_runs: Annotated[int, typer.Option(help="At most this many runs (newest first).")] = 50,
    out: Annotated[Path | None, typer.Option(help="Output folder (default <run.output_dir>/compare).")] = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Log the comparison as a new MLflow run.")] = True,
    overrides: Overrides = None,
) -> None:
    """Compare MLflow runs: params that differ, final metrics, reward/loss curves and HR@K bars (markdown, CSV, PNG)."""
    from mlflow import MlflowClient

    from aigq.tracking import Tracker, tracking_uri

    cfg = load(config, overrides)
    if max_runs < 1:
        fail(ValueError("--max-runs must be at least 1"))
    client = MlflowClient(tracking_uri=tracking_uri(cfg.tracking))
    desc = _describe(experiment, tag, filter_string, run)
    try:
        runs = select_runs(client, experiment, parse_tags(tag), filter_string, run, max_runs,
                           default_experiment=cfg.tracking.experiment)
        cmp = compare(client, runs, metric, curve, selection=desc)
        out_dir = out or cfg.out_dir() / "compare"
        files = write_comparison(client, cmp, out_dir)
    except CompareError as exc:
        fail(exc)
    _print(cmp)
    for kind, path in files.items():
        console.print(f"{kind}: {path}")
    if log and cfg.tracking.enabled:
        tracker = Tracker(cfg.tracking)
        tags = {"aigq.pipeline": "compare", "aigq.compared": ",".join(r.run_id for r in cmp.runs)[:5000]}
        with tracker.run("compare", tags=tags) as mlrun:
            tracker.params({"compare.selection": desc, "compare.runs": len(cmp.runs)})
            tracker.artifacts(out_dir, "compare")
        console.print(f"logged as MLflow run {mlrun.info.run_id} (experiment {cfg.tracking.experiment}, "
                      f"artifacts under compare/)")


def _describe(experiment: Many, tag: Many, filter_string: str | None, run: Many) -> str:
    parts = [f"--experiment {e}" for e in experiment or []] + [f"--tag {t}" for t in tag or []]
    parts += [f"--filter {filter_string}"] if filter_string else []
    parts += [f"--run {r}" for r in run or []]
    return " ".join(parts) or "(default experiment)"


def _print(cmp: Comparison) -> None:
    runs = Table(title=f"{len(cmp.runs)} runs", header_style="bold")
    for col in ("run", "experiment", "stage", "status"):
        runs.add_column(col)
    for r in cmp.runs:
        runs.add_row(r.label, r.experiment, r.stage or "—", r.status)
    console.print(runs)
    console.print(_grid("final metrics", "metric", cmp.labels, [(k, [fmt(v) for v in vals]) for k, vals in cmp.metrics],
                        right=True))
    if not cmp.params:
        console.print("params: all equal")
        return
    shown = cmp.params[:TERMINAL_PARAMS]
    title = f"params that differ ({len(cmp.params)})" + (f", first {len(shown)}" if len(shown) < len(cmp.params)
                                                         else "")
    console.print(_grid(title, "param", cmp.labels, [(k, [fmt(v, 40) for v in vals]) for k, vals in shown]))


def _grid(title: str, first: str, labels: list[str], rows: list[tuple[str, list[str]]], right: bool = False) -> Table:
    t = Table(title=title, header_style="bold")
    t.add_column(first)
    for label in labels:
        t.add_column(label, justify="right" if right else "left", overflow="fold")
    for key, vals in rows:
        t.add_row(key, *vals)
    return t


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)


__all__ = ["register"]
