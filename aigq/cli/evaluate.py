"""``aigq eval`` (registered on the main app by ``aigq.cli``): the paper's Table 1 on this world.

    aigq eval -c configs/tiny_cpu.yaml                  # baselines + whichever policy variants exist
    aigq eval -c configs/tiny_cpu.yaml --suite          # first train the missing variants (aigq/pipeline/suite.py)
    aigq eval -c configs/tiny_cpu.yaml --arms ebr,co-click,direct-il-sft eval.max_user_days=200
    aigq eval -c configs/tiny_cpu.yaml --protocol last-query --arms popularity,co-click,ebr   # each user's last query

Every figure is printed, written and logged with its bootstrap interval (``<figure>_lo`` / ``_hi``; ``eval.bootstrap``
resamples, ``eval.confidence``) and again over the cold-start rows (``cold.<figure>``). MLflow metric names are
``eval.<arm>.<figure>`` (days) or ``eval.last-query.<arm>.<figure>`` (last-query), "@" written "_at_" (MLflow allows
no "@": ``query_hr@10`` → ``query_hr_at_10``); the run is tagged ``aigq.eval.protocol``.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from aigq.cli.common import ConfigOpt, Overrides, console, fail, load, open_tracker, say_in, table, usage
from aigq.evaluation.recommend import ARMS, POLICY_ARMS


def _arms(spec: str | None) -> list[str]:
    if not spec:
        return list(ARMS)
    arms = [a.strip() for a in spec.split(",") if a.strip()]
    # "<policy arm>@<folder>": that arm's prompts with an explicit policy folder (e.g. the demo's IL-GRPO policy)
    bad = [a for a in arms if a not in ARMS and not (a.partition("@")[0] in POLICY_ARMS and a.partition("@")[2])]
    if bad:
        usage(f"unknown arm(s) {', '.join(bad)}; choose from {', '.join(ARMS)}")
    return [a for a in ARMS if a in arms] + [a for a in arms if a not in ARMS]  # the paper's row order, then @


PROTOCOLS = ("days", "last-query")


def _report_variant(arm: str, vcfg, figures: dict) -> None:
    """A trained variant's figures, as ``aigq sft`` / ``aigq grpo`` print them."""
    shown = {k: v for k, v in figures.items() if k not in ("history", "samples") and isinstance(v, int | float | str)}
    console.print(table(f"{arm} ({vcfg.model.source})", shown))


def eval_cmd(config: ConfigOpt = None,
             suite: Annotated[bool, typer.Option("--suite", help="Train missing policy variants first "
                                                 "(into <run.output_dir>/variants/<arm>/).")] = False,
             arms: Annotated[str | None, typer.Option(help=f"Comma-separated subset of: {', '.join(ARMS)}")] = None,
             protocol: Annotated[str | None, typer.Option(
                 help="days: the test user-days (samples/test.parquet, the paper's split); last-query: each user's "
                      "last distinct query (samples/last_query.parquet). Sets eval.protocol (default: days).",
                 show_default=False)] = None,
             overrides: Overrides = None) -> None:
    """Offline evaluation like the paper's Table 1: EBR, popularity, co-click, zero-shot LLM and the policy variants
    on the test user-days (or, with --protocol last-query, each user's held-out last query); prints the table with
    bootstrap intervals, writes <run.output_dir>/eval/table1.md (last-query: eval/last-query/table1.md) and
    logs it to MLflow."""
    from aigq.evaluation.offline import ArmResult, earlier_results, evaluate
    from aigq.pipeline.suite import train_missing

    if protocol is not None and protocol not in PROTOCOLS:
        usage(f"unknown protocol {protocol}; choose from {', '.join(PROTOCOLS)}")
    cfg = load(config, [*(overrides or []), *([f"eval.protocol={protocol}"] if protocol else [])])
    chosen = _arms(arms)
    tracker = open_tracker(cfg)
    with tracker.run("eval", cfg, tags={"aigq.pipeline": "eval", "aigq.eval.protocol": cfg.eval.protocol}):
        if suite:
            status = train_missing(cfg, tracker, [a for a in chosen if a in POLICY_ARMS], say=say_in(indent=""),
                                   report=_report_variant)
            console.print(report_status(status))
        try:
            results, test = evaluate(cfg, chosen, say=say_in(indent=""))
        except (FileNotFoundError, ValueError) as exc:
            fail(exc)
        fresh = {r.arm: r for r in results}
        kept = earlier_results(cfg, test.height)  # rows of arms not asked for this time (same user-days)
        order = dict.fromkeys([*ARMS, *fresh, *kept])  # the paper's order, then arm@folder rows
        results = [fresh.get(a) or kept.get(a) or ArmResult(a, "not evaluated") for a in order
                   if a in fresh or a in kept or (arms is None and a in ARMS)]
        out, png = show_table(cfg, tracker, results, test)
    console.print(f"table → {out / 'table1.md'}" + (f", plot → {png}" if png else ""))


def _console_table(title: str, results, k: int, cols) -> Table:
    from aigq.evaluation import report

    table = Table(title=title, header_style="bold")
    for i, h in enumerate(report.headers(k, cols=cols)):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in results:
        table.add_row(report.row_name(r.arm), *report.cells(r, cols, sep="\n"))
    return table


def mlflow_metrics(cfg, results) -> dict[str, float]:
    """Every shown row's figures (and their ``_lo`` / ``_hi``) as MLflow metrics: ``eval.<arm>.<figure>`` (days) or
    ``eval.last-query.<arm>.<figure>``; "@" → "_at_"; undefined (NaN) figures left out."""
    from aigq.evaluation import report

    prefix = "eval." if cfg.eval.protocol == "days" else f"eval.{cfg.eval.protocol}."
    return {f"{prefix}{report.metric_key(r.arm)}.{m.replace('@', '_at_')}": float(v)
            for r in results if r.status == "ok" for m, v in r.metrics.items() if v is not None and v == v}


def show_table(cfg, tracker, results, test) -> tuple:
    """Print Table 1 (every figure with its interval) and the cold-start slice, write table1.md / metrics.json /
    table1.png under the protocol's eval folder and log them (and every row's figures) to the active MLflow run.
    Returns (eval folder, plot path or None)."""
    from aigq.evaluation import report
    from aigq.evaluation.offline import eval_dir, row_noun

    e = cfg.eval
    k, cold = e.k, int(test["metadata"].struct.field("cold_start").fill_null(False).sum())
    noun = row_noun(cfg)
    ci = f"; under each figure its {e.confidence:.0%} bootstrap interval" if e.bootstrap else ""
    console.print(_console_table(f"Table 1 on {cfg.run.output_dir} (protocol {e.protocol}: {test.height} {noun}, "
                                 f"{cold} cold-start{ci})", results, k, report.columns(k, e.hr_ks)))
    console.print(_console_table(f"cold-start slice: {cold} of {test.height} {noun}", results, k,
                                 report.cold_columns(k, e.hr_ks)))
    out = eval_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    md = report.markdown(results, k, test.height, cold, e.hr_ks, noun, e.confidence if e.bootstrap else None)
    (out / "table1.md").write_text(md)
    (out / "metrics.json").write_text(json.dumps({r.arm: {"status": r.status, "seconds": r.seconds,
                                                          **r.metrics} for r in results}, indent=2))
    png = report.bar_plot(results, k, out / "table1.png")
    tracker.metrics(mlflow_metrics(cfg, results))  # the whole table shown (kept rows too): the run holds every figure
    where = "eval" if e.protocol == "days" else f"eval/{e.protocol}"
    tracker.text(md, f"{where}/table1.md")
    tracker.artifact(out / "metrics.json", where)
    if png:
        tracker.artifact(png, where)
    return out, png


DEMO_ARMS = ("popularity", "co-click", "ebr", "direct-il-sft")


def demo_eval(cfg, tracker) -> None:
    """The demo's evaluation: the cheap baselines, the demo's IL-SFT policy and its IL-GRPO policy (row marked
    ``@<folder>``: trained by the demo against the demo's CTR model, not by ``--suite``) on ``eval.max_user_days``
    test user-days. ``aigq eval --suite`` fills every row of Table 1."""
    from aigq.evaluation.offline import evaluate
    from aigq.pipeline.train import grpo_dir

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
