"""``aigq eval`` (registered on the main app by ``aigq.cli``): the paper's Table 1 on this world.

    aigq eval -c configs/tiny_cpu.yaml                  # baselines + whichever policy variants exist
    aigq eval -c configs/tiny_cpu.yaml --suite          # first train the missing variants (aigq/evaluation/suite.py)
    aigq eval -c configs/tiny_cpu.yaml --arms ebr,co-click,direct-il-sft eval.max_user_days=200
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from aigq.cli import ConfigOpt, Overrides, _config, _fail, _tracker, console
from aigq.evaluation.recommend import ARMS, POLICY_ARMS


def _arms(spec: str | None) -> list[str]:
    if not spec:
        return list(ARMS)
    arms = [a.strip() for a in spec.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        console.print(f"[red]unknown arm(s) {', '.join(bad)}[/red]; choose from {', '.join(ARMS)}")
        raise typer.Exit(2)
    return [a for a in ARMS if a in arms]  # the paper's row order


def eval_cmd(config: ConfigOpt = None,
             suite: Annotated[bool, typer.Option("--suite", help="Train missing policy variants first "
                                                 "(into <run.output_dir>/variants/<arm>/).")] = False,
             arms: Annotated[str | None, typer.Option(help=f"Comma-separated subset of: {', '.join(ARMS)}")] = None,
             overrides: Overrides = None) -> None:
    """Offline evaluation like the paper's Table 1: EBR, popularity, co-click, zero-shot LLM and the policy variants
    on the test user-days; prints the table, writes <run.output_dir>/eval/table1.md and logs it to MLflow."""
    from aigq.evaluation import suite as S
    from aigq.evaluation.offline import ArmResult, earlier_results, evaluate

    cfg = _config(config, overrides)
    chosen = _arms(arms)
    tracker = _tracker(cfg)
    with tracker.run("eval", cfg, tags={"aigq.pipeline": "eval"}):
        if suite:
            status = S.train_missing(cfg, tracker, [a for a in chosen if a in POLICY_ARMS],
                                     say=lambda m: console.print(m, markup=False))
            console.print(report_status(status))
        try:
            results, test = evaluate(cfg, chosen, say=lambda m: console.print(m, markup=False))
        except (FileNotFoundError, ValueError) as exc:
            _fail(exc)
        fresh = {r.arm: r for r in results}
        kept = earlier_results(cfg, test.height)  # rows of arms not asked for this time (same user-days)
        results = [fresh.get(a) or kept.get(a) or ArmResult(a, "not evaluated") for a in ARMS
                   if a in fresh or a in kept or arms is None]
        out, png = show_table(cfg, tracker, results, test)
    console.print(f"table → {out / 'table1.md'}" + (f", plot → {png}" if png else ""))


def show_table(cfg, tracker, results, test) -> tuple:
    """Print Table 1, write table1.md / metrics.json / table1.png under <run.output_dir>/eval and log them (and every
    row's figures) to the active MLflow run. Returns (eval folder, plot path or None)."""
    from aigq.evaluation import report
    from aigq.evaluation.offline import eval_dir

    k, cold = cfg.eval.k, int(test["metadata"].struct.field("cold_start").sum())
    table = Table(title=f"Table 1 on {cfg.run.output_dir} ({test.height} test user-days, {cold} cold-start)",
                  header_style="bold")
    for i, h in enumerate(report.headers(k)):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in results:
        table.add_row(report.row_name(r.arm), *report.cells(r))
    console.print(table)
    out = eval_dir(cfg)
    md = report.markdown(results, k, test.height, cold)
    (out / "table1.md").write_text(md)
    (out / "metrics.json").write_text(json.dumps({r.arm: {"status": r.status, "seconds": r.seconds,
                                                          **r.metrics} for r in results}, indent=2))
    png = report.bar_plot(results, k, out / "table1.png")
    for r in results:  # the whole table shown (kept rows too), so the run holds every figure
        if r.status == "ok":
            tracker.metrics({f"eval.{report.metric_key(r.arm)}.{m}": v for m, v in r.metrics.items() if v == v})
    tracker.text(md, "eval/table1.md")
    tracker.artifact(out / "metrics.json", "eval")
    if png:
        tracker.artifact(png, "eval")
    return out, png


DEMO_ARMS = ("popularity", "co-click", "ebr", "direct-il-sft")


def demo_eval(cfg, tracker) -> None:
    """The demo's evaluation: the cheap baselines, the demo's IL-SFT policy and its IL-GRPO policy (row marked
    ``@<folder>``: trained by the demo against the demo's CTR model, not by ``--suite``) on ``eval.max_user_days``
    test user-days. ``aigq eval --suite`` fills every row of Table 1."""
    from aigq.actors.grpo_driver import grpo_dir
    from aigq.evaluation.offline import evaluate

    arms = [*DEMO_ARMS, f"direct-il-sft+il-grpo@{grpo_dir(cfg) / 'policy'}"]
    with tracker.run("eval", cfg, tags={"aigq.pipeline": "eval"}):
        results, test = evaluate(cfg, arms, say=lambda m: console.print(f"  {m}", markup=False))
        out, _ = show_table(cfg, tracker, results, test)
    console.print(f"table → {out / 'table1.md'}; every row: aigq eval --suite -c CONFIG")


def report_status(status: dict[str, str]) -> Table:
    t = Table(title="policy variants (--suite)", header_style="bold")
    t.add_column("arm")
    t.add_column("status")
    for arm, s in status.items():
        t.add_row(arm, s)
    return t


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)


__all__ = ["register"]
