"""``aigq ab`` (simulated A/B of HintQ arms, paper Table 3) and ``aigq loop --days N`` (the daily closed loop,
Eq. 15 / Figure 3); registered on the main app at the end of ``aigq.cli``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aigq.cli.common import ConfigOpt, Overrides, console, fail, load, open_tracker

wide = console if console.is_terminal else Console(width=170)  # logs and files keep whole table rows

Lists = Annotated[list[str] | None, typer.Option("--lists", help="CHANNEL=FILE: a channel's arm lists (parquet: "
                                                                 "user_id, day, queries) instead of generating them.")]


def _pct(x: Any, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def ab_table(table, control: str) -> Table:
    t = Table(title=f"simulated A/B (HintQ top 3, hidden click model, common random numbers; control = {control})",
              header_style="bold")
    for col in ("arm", "users", "impr.", "CTR %", "PVR %", "E[UCTR] %", f"E[gain] vs {control} % [95% CI]",
                "UCTR % [95% CI]", f"gain vs {control} % [95% CI]", "unique queries %", "unique leaf cats %"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    for r in table.iter_rows(named=True):
        t.add_row(r["arm"], f"{r['users']:,}", f"{r['impressions']:,}", _pct(r["ctr"], 2), _pct(r["pvr"]),
                  _pct(r["euctr"]),
                  "–" if r["arm"] == control else f"{r['egain'] * 100:+.1f} [{r['egain_lo'] * 100:+.1f}, "
                                                  f"{r['egain_hi'] * 100:+.1f}]",
                  f"{_pct(r['uctr'])} [{_pct(r['uctr_lo'])}, {_pct(r['uctr_hi'])}]",
                  "–" if r["arm"] == control else f"{r['gain'] * 100:+.1f} [{r['gain_lo'] * 100:+.1f}, "
                                                  f"{r['gain_hi'] * 100:+.1f}]",
                  _pct(r.get("discovery.queries")), _pct(r.get("discovery.categories")))
    return t


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            fail(ValueError(f"{what} {item!r}: expected NAME=VALUE"))
        out[name.strip()] = value.strip()
    return out


def ab(config: ConfigOpt = None, lists: Lists = None,
       channel: Annotated[list[str] | None, typer.Option(help="CHANNEL=SOURCE: an `aigq eval` arm or "
                                                              "policy:<direct|think>:<folder> (adds to ab.channels).")
                          ] = None,
       arm: Annotated[list[str] | None, typer.Option(help="ARM=CH1,CH2,...: the arms to compare (replaces "
                                                          "ab.arms).")] = None,
       fresh: Annotated[bool, typer.Option("--fresh", help="Regenerate cached channel lists.")] = False,
       overrides: Overrides = None) -> None:
    """Simulated A/B on the test days: each arm's channels → HintQ's CTR ranking → top 3 → hidden-model clicks;
    UCTR with 95 % intervals, gain vs control, discovery shares (Table 3)."""
    from aigq.evaluation.ab_inputs import run_from_config

    cfg = load(config, overrides)
    given = {k: Path(v) for k, v in _pairs(lists, "--lists").items()}
    update: dict[str, Any] = {"channels": {**cfg.ab.channels, **_pairs(channel, "--channel")}}
    if arm:
        update["arms"] = {k: [c.strip() for c in v.split(",") if c.strip()] for k, v in _pairs(arm, "--arm").items()}
    cfg = cfg.model_copy(update={"ab": cfg.ab.model_copy(update=update)})
    tracker = open_tracker(cfg)
    t0 = time.perf_counter()
    try:
        with tracker.run("ab", cfg, tags={"aigq.pipeline": "ab"}):
            out = run_from_config(cfg, given, say=lambda m: console.print(f"  {m}", markup=False, highlight=False),
                                  fresh=fresh)
            table = out["table"]
            for r in table.iter_rows(named=True):
                tracker.metrics({f"ab.{r['arm']}.{k}": v for k, v in r.items()
                                 if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))})
            tracker.text(_markdown(table, cfg.ab.control), "ab.md")
            tracker.artifact(out["out"] / "summary.parquet", "ab")
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        fail(exc)
    wide.print(ab_table(table, cfg.ab.control))
    console.print(f"shown texts: {out['match']} (vocabulary = exact known query; mapped = generated text → leaf "
                  f"category, popularity 0); ranker: {out['ctr_model'] or 'recall order'}; "
                  f"{time.perf_counter() - t0:.0f} s; impressions → {out['out'] / 'impressions.parquet'}")


def _markdown(table, control: str) -> str:
    lines = [f"| arm | users | CTR % | PVR % | expected UCTR % | expected gain vs {control} % [95% CI] | "
             f"UCTR % [95% CI] | gain vs {control} % [95% CI] | unique queries % | unique leaf cats % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        gain = "–" if r["arm"] == control else (f"{r['gain'] * 100:+.1f} [{r['gain_lo'] * 100:+.1f}, "
                                                 f"{r['gain_hi'] * 100:+.1f}]")
        egain = "–" if r["arm"] == control else (f"{r['egain'] * 100:+.1f} [{r['egain_lo'] * 100:+.1f}, "
                                                  f"{r['egain_hi'] * 100:+.1f}]")
        lines.append(f"| {r['arm']} | {r['users']} | {_pct(r['ctr'], 2)} | {_pct(r['pvr'])} | "
                     f"{_pct(r['euctr'])} | {egain} | {_pct(r['uctr'])} "
                     f"[{_pct(r['uctr_lo'])}, {_pct(r['uctr_hi'])}] | {gain} | "
                     f"{_pct(r.get('discovery.queries'))} | {_pct(r.get('discovery.categories'))} |")
    return "\n".join(lines) + "\n"


def loop_tables(rows: list[dict[str, Any]]) -> tuple[Table, Table]:
    """Per arm and day, and the Figure-3 comparison (PVR and CTR per day, daily RL vs not)."""
    t = Table(title="daily loop: day T+1 simulated from what was deployed after day T", header_style="bold")
    for col in ("arm", "T", "day", "requests", "impr.", "clicks", "CTR %", "PVR %", "UCTR %", "direct %", "think %",
                "fallback %", "seconds"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    for r in rows:
        fb = r.get("share.coclick", 0.0) + r.get("share.popular", 0.0)
        secs = sum(v for k, v in r.items() if k.startswith("seconds."))
        t.add_row(r["arm"], str(r["T"]), str(r["day"]), f"{int(r['requests'])}", f"{int(r['impressions'])}",
                  f"{int(r['clicks'])}", _pct(r["ctr"], 2), _pct(r["pvr"]), _pct(r.get("uctr")),
                  _pct(r.get("share.direct", 0.0)), _pct(r.get("share.think", 0.0)), _pct(fb), f"{secs:.0f}")
    f = Table(title="Figure 3 shape: PVR share and CTR per day, with vs without daily RL", header_style="bold")
    for col in ("day", "PVR daily RL %", "PVR no daily RL %", "CTR daily RL %", "CTR no daily RL %"):
        f.add_column(col, justify="right")
    by = {(r["arm"], r["day"]): r for r in rows}
    for d in sorted({r["day"] for r in rows}):
        a, b = by.get(("daily_rl", d), {}), by.get(("frozen", d), {})
        f.add_row(str(d), _pct(a.get("pvr")), _pct(b.get("pvr")), _pct(a.get("ctr"), 2), _pct(b.get("ctr"), 2))
    return t, f


def loop(days: Annotated[int | None, typer.Option("--days", "-n", help="Days T to run (default loop.days).")] = None,
         config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """The daily closed loop (Eq. 15): CTR retrain → IL-GRPO → Think index → hot rollout → day T+1 simulated from
    what is deployed; per-day PVR share and CTR with and without daily RL (Figure 3)."""
    from actors.learner import LearnerConfigError
    from aigq.loop.runner import run_loop

    cfg = load(config, overrides)
    n = days or cfg.loop.days
    tracker = open_tracker(cfg)
    t0 = time.perf_counter()
    try:
        out = run_loop(cfg, tracker, n, config, overrides,
                       say=lambda m: console.print(m, highlight=False))
    except (FileNotFoundError, ValueError, RuntimeError, TimeoutError, LearnerConfigError) as exc:
        fail(exc)
    per_day, fig3 = loop_tables(out["rows"])
    wide.print(per_day)
    wide.print(fig3)
    if out["note"]:
        console.print(f"note: {out['note']}")
    console.print(f"loop: {len(out['rows'])} arm-days in {time.perf_counter() - t0:.0f} s wall; folders under "
                  f"{out['dir']}")
    if tracker.enabled:
        console.print(f"MLflow: mlflow ui --backend-store-uri {tracker.uri}")


def register(app: typer.Typer) -> None:
    app.command("ab")(ab)
    app.command("loop")(loop)
