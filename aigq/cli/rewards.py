"""``aigq train-ctr``: the daily CTR reward model (paper Eq. 15), and the demo's CTR step."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aigq.cli.common import ConfigOpt, Overrides, WorldOpt, console, fail, load, open_tracker, table
from aigq.config import AIGQConfig
from aigq.pipeline.ctr import last_train_day, train_ctr_stage
from aigq.tracking import Tracker


def train_ctr(day: Annotated[int, typer.Option("--day", "-d", help="Train φ_T on day T's logs (Eq. 15).")],
              config: ConfigOpt = None, world: WorldOpt = None,
              cold: Annotated[bool, typer.Option("--cold", help="Ignore day T-1's model; train from scratch.")] = False,
              oracle: Annotated[bool, typer.Option(help="Simulated worlds: also run the test-only hidden-model "
                                                        "evaluator (Spearman).")] = True,
              overrides: Overrides = None) -> None:
    """Train the CTR reward model for day T (warm start from T-1's model), report held-out AUC / log-loss vs a
    popularity-only scorer, save safetensors + JSON to <output_dir>/ctr/day-T. Objective (ctr.objective): HintQ
    clicks, or on a search-only log the next search against sampled negatives."""
    cfg = load(config, overrides)
    try:
        with console.status(f"training CTR model for day {day}"):
            out = train_ctr_stage(cfg, open_tracker(cfg), day, world, cold, oracle)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    rows = {k: v for k, v in out.items() if not k.startswith(("seconds.", "oracle.", "model."))}
    rows["seconds"] = round(sum(v for k, v in out.items() if k.startswith("seconds.")), 1)
    console.print(table(f"CTR model day {day}, objective {out['objective']} → {out['folder']}", rows))
    oracle_rows = {k: v for k, v in out.items() if k.startswith("oracle.")}
    if oracle_rows:
        console.print(table("test-only evaluator: vs the simulator's hidden click model", oracle_rows))


def demo_ctr(cfg: AIGQConfig, tracker: Tracker) -> dict[str, Any]:
    """The demo's CTR step: φ_T for the last train day T (cold, on ``ctr.cold_window_days`` days), held-out AUC vs
    popularity, and the test-only Spearman vs the hidden model; the model lands where HintQ and the Think index look
    for it. (Until 2026-12-02 the demo trained on the last 10 days only; on the tiny world that gave oracle Spearman
    0.41 against 0.56 for the full 30 days, and a ranker that ordered co-click's candidates worse than co-click's own
    order: ``benchmarks/RESULTS.md``.)"""
    day = last_train_day(cfg)
    with console.status(f"CTR reward model: day {day}, cold start on its last {cfg.ctr.cold_window_days} days"):
        out = train_ctr_stage(cfg, tracker, day, cold=True)
    keys = ("objective", "train.impressions", "eval.impressions", "eval.auc", "eval.popularity_auc", "eval.logloss",
            "oracle.spearman")
    console.print(table(f"CTR reward model day {day} (days {out['train_days'][0]}–{out['train_days'][-1]}) → "
                        f"{out['folder']}", {k: out[k] for k in keys if k in out}))
    return out


def register(app: typer.Typer) -> None:
    app.command("train-ctr")(train_ctr)
