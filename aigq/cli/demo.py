"""``aigq demo``: the whole pipeline end to end in one MLflow parent run, each stage printed as it finishes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from aigq import pipeline
from aigq.cli.common import ConfigOpt, Overrides, console, fail, load, open_tracker, progress, table
from aigq.cli.data import print_validation
from aigq.cli.evaluate import demo_eval
from aigq.cli.grpo import train_grpo_and_report
from aigq.cli.models import train_and_report
from aigq.cli.rewards import demo_ctr
from aigq.cli.serve import demo_serve
from aigq.config import AIGQConfig
from aigq.data.validate import NotALogError


def _import_or_simulate(cfg: AIGQConfig, tracker: Any, log: Path | None) -> None:
    """The demo's first step: import the user's log (``--log``) or simulate the embedded world."""
    if log is None:
        try:
            with progress() as prog:
                task = prog.add_task("1/3 simulate", total=None)
                meta = pipeline.simulate(cfg, tracker, progress=lambda d, t: prog.update(task, completed=d, total=t))
        except NotALogError as exc:  # the output folder is not one of ours (pipeline.NotOurFolderError)
            fail(exc)
        console.print(table(f"1/3 world → {meta['world']}", {k: meta[k] for k in
                                                               ("users", "events", "exposures", "clicked_exposures")}))
        return
    try:
        with console.status(f"1/3 import {log}"):
            report = pipeline.import_log(cfg, tracker, log)
    except (NotALogError, FileNotFoundError) as exc:
        fail(exc)
    console.print(table(f"1/3 import {log} ({report.preset}) → {report.world}", {
        "rows in": report.rows_in, "rows imported": report.rows_ok, "rows quarantined": report.rejected,
        **report.counts}))


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
    cfg = load(config or default, [*(overrides or []), *side])
    tracker = open_tracker(cfg)
    with tracker.run("demo", cfg, tags={"aigq.pipeline": "demo", **({"aigq.input": str(log)} if log else {})}):
        _import_or_simulate(cfg, tracker, log)
        with console.status("2/3 validate + 3/3 build samples"):
            validated, stats = pipeline.build_samples(cfg, tracker)
        print_validation("2/3 validation (bad rows → world/quarantine/)", validated)
        console.print(table(f"3/3 samples → {cfg.samples_dir()}", stats))
        if not stats.get("direct.samples"):
            fail(ValueError(f"no AIGQ-Direct samples from {cfg.world_dir()}: no train-day exposure with a click "
                            "and no user with a search session before their held-out last query"))
        direct = pl.read_parquet(cfg.samples_dir() / "direct.parquet", n_rows=1)
        label_source = read_meta(cfg.samples_dir())["samples_config"]["label_source"]
        console.print(f"[bold]one AIGQ-Direct sample[/bold] (labels from {label_source})")
        console.print(direct["prompt"][0], markup=False)
        console.print(f"target: {direct['target'][0].to_list()}", markup=False)
        console.print(f"test user-days: {stats.get('test.samples', 0):,.0f}, cold-start share "
                      f"{stats.get('test.cold_start_share', 0):.3f}; held-out last queries: "
                      f"{stats.get('last_query.samples', 0):,.0f}")
        train_and_report(cfg, tracker, title="IL-SFT")  # IL-SFT of the policy + sampled lists
        ctr = demo_ctr(cfg, tracker)  # CTR reward model for the last train day (HintQ ranks with it)
        train_grpo_and_report(cfg, tracker)  # IL-GRPO against that CTR model + rule rewards
        # Think index, Serve apps up, HintQ answers a few users
        demo_serve(cfg, tracker, config=config or default, overrides=[*(overrides or []), *side])
        demo_eval(cfg, tracker)  # Table-1 metrics for baselines and the demo's policies
    from aigq.evaluation.offline import eval_dir

    days = int(read_meta(cfg.world_dir())["days"])
    console.print(table("artefacts", {
        "world": cfg.world_dir(), "samples": cfg.samples_dir(), "IL-SFT policy": cfg.sft_dir() / "policy",
        "reward model": ctr["folder"], "IL-GRPO policy": cfg.grpo_dir() / "policy",
        "Think index + serve store": cfg.serve_dir(), "evaluation": eval_dir(cfg), "world days": days}))
    if tracker.enabled:
        console.print(f"MLflow: mlflow ui --backend-store-uri {tracker.uri}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
