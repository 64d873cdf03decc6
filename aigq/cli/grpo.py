"""``aigq grpo`` and the demo's IL-GRPO step."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aigq.cli.common import (
    ConfigOpt,
    Overrides,
    console,
    fail,
    load,
    mlflow_hint,
    open_tracker,
    progress,
    say_in,
    table,
)
from aigq.config import AIGQConfig


def grpo(config: ConfigOpt = None,
         engine: Annotated[str | None, typer.Option(help="Rollout engine: vllm | transformers.")] = None,
         baseline: Annotated[bool, typer.Option("--plain-grpo", help="The paper's GRPO baseline (one sequence-level "
                                                "advantage) instead of IL-GRPO.")] = False,
         overrides: Overrides = None) -> None:
    """IL-GRPO post-training (paper §3.5): rollout workers, reward actors and the DDP learner on Ray."""
    extra = ([f"rollout.engine={engine}"] if engine else []) + (["grpo.algorithm=grpo"] if baseline else [])
    cfg = load(config, [*extra, *(overrides or [])])
    tracker = open_tracker(cfg)
    figures = train_grpo_and_report(cfg, tracker)
    mlflow_hint(tracker)
    if figures.get("ctr_gain", 0) <= 0 or figures.get("total_gain", 0) <= 0:
        console.print("[yellow]the mean CTR / total reward did not rise from the first to the last 20 % of "
                      "iterations[/yellow]")


def train_grpo_and_report(cfg: AIGQConfig, tracker, title: str = "IL-GRPO") -> dict[str, Any]:
    from aigq.pipeline.train import GRPO_ERRORS, run_grpo

    try:
        with progress() as prog:
            task = prog.add_task(f"{title}: starting actors", total=cfg.grpo.iterations)
            figures = run_grpo(cfg, tracker, say=say_in(prog),
                               on_iteration=lambda i, n: prog.update(task, completed=i, total=n,
                                                                     description=f"{title}: iterations"))
    except GRPO_ERRORS as exc:
        fail(exc)
    console.print(table(f"{title} ({cfg.grpo.algorithm}, {cfg.rollout.engine}; first vs last 20 % of iterations)",
                         {k: v for k, v in figures.items() if k != "history"}))
    return figures


def register(app: typer.Typer) -> None:
    app.command("grpo")(grpo)


__all__ = ["register", "train_grpo_and_report"]
