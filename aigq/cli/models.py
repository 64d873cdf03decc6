"""``aigq sft`` and ``aigq models prepare``, and the demo's IL-SFT step (its figures and a few sampled lists)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aigq import pipeline
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
    usage,
)
from aigq.config import AIGQConfig

models_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prepare policy base models.")

# The paper's IL-SFT ablation rows (§5) as override presets.
ABLATIONS: dict[str, list[str]] = {
    "plain": ["samples.rerank=false", "samples.compress=false", "sft.variant=direct"],
    "rerank": ["samples.rerank=true", "samples.compress=false", "sft.variant=direct"],
    "compress": ["samples.rerank=true", "samples.compress=true", "sft.variant=direct"],
    "think": ["samples.rerank=true", "samples.compress=true", "sft.variant=think", "sft.reasoning=true"],
    "think-noreason": ["samples.rerank=true", "samples.compress=true", "sft.variant=think", "sft.reasoning=false"],
}


@models_app.command("prepare")
def prepare(source: Annotated[str, typer.Argument(help="tiny | smollm2 | path")] = "tiny",
            config: ConfigOpt = None,
            force: Annotated[bool, typer.Option(help="Rebuild even when cached.")] = False,
            overrides: Overrides = None) -> None:
    """Build (tiny) or convert (smollm2) a base model into its cached folder, or check a local folder (path)."""
    from aigq.models.factory import ModelNotFoundError, prepare_base

    cfg = load(config, [f"model.source={source}", *(overrides or [])])
    try:
        with progress() as prog:
            task = prog.add_task(f"preparing {source}", total=4 if source == "smollm2" else 1)

            def say(msg: str) -> None:
                prog.console.print(f"  {msg}")
                prog.advance(task)

            folder = prepare_base(cfg, say, force=force)
            prog.update(task, completed=prog.tasks[0].total)
    except (ModelNotFoundError, FileNotFoundError, ModuleNotFoundError) as exc:
        fail(exc)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    console.print(f"{source} ready: {folder} ({size / 2**20:.1f} MiB)")


def _sft_overrides(ablation: str | None, overrides: list[str] | None) -> list[str]:
    if ablation is None:
        return list(overrides or [])
    if ablation not in ABLATIONS:
        usage(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
    return [*ABLATIONS[ablation], *(overrides or [])]


def sft(config: ConfigOpt = None,
        ablation: Annotated[str | None, typer.Option(help=f"Paper ablation row: {' | '.join(ABLATIONS)}")] = None,
        build_samples: Annotated[bool, typer.Option("--build-samples",
                                                    help="(Re)build samples from the world first.")] = False,
        overrides: Overrides = None) -> None:
    """IL-SFT (Eq. 5) of the policy on a DDP LearnerWorker group; logs to MLflow and registers the final policy."""
    cfg = load(config, _sft_overrides(ablation, overrides))
    tracker = open_tracker(cfg)
    if build_samples:
        with console.status("building samples"):
            pipeline.build_samples(cfg, tracker)
    figures = train_and_report(cfg, tracker)
    mlflow_hint(tracker)
    if figures.get("sample_parse_rate", 1.0) < 0.95 or figures.get("eval_loss_drop", 1.0) < 0.30:
        console.print("[yellow]below the issue's bar (eval-loss drop ≥ 30 %, parse rate ≥ 95 %)[/yellow]")


def train_and_report(cfg: AIGQConfig, tracker, title: str = "IL-SFT", show: int = 3) -> dict[str, Any]:
    """Run IL-SFT with a progress bar, print the figures and ``show`` sampled lists (also used by ``aigq demo``)."""
    from aigq.data import prompt as P
    from aigq.pipeline.train import SFT_ERRORS, run_sft

    try:
        with progress() as prog:
            task = prog.add_task(f"{title}: preparing", total=None)
            figures = run_sft(cfg, tracker, say=say_in(prog),
                              on_step=lambda s, n: prog.update(task, completed=s, total=n,
                                                               description=f"{title}: training"))
    except SFT_ERRORS as exc:
        fail(exc)
    samples = figures.pop("samples", None)
    keys = ("train_samples", "steps_trained", "samples_per_s", "tokens_per_s", "eval_loss_first", "eval_loss_final",
            "eval_loss_drop", "sample_parse_rate", "sample_at_least_rate", "sample_mean_queries", "weights_identical", "registered_version",
            "policy")
    console.print(table(f"{title} ({cfg.sft.variant}, {cfg.model.source})", {k: figures[k] for k in keys
                                                                                if k in figures}))
    if samples is not None:
        for row in samples.head(show).iter_rows(named=True):
            console.print(f"[bold]user {row['user_id']} (day {row['day']})[/bold] generated:", markup=True)
            console.print(f"  {P.parse_output(row['generated'], cfg.sft.variant)}", markup=False)
            console.print(f"  actually searched/clicked: {row['target']}", markup=False)
    return figures


def register(app: typer.Typer) -> None:
    app.command("sft")(sft)
    app.add_typer(models_app, name="models")


__all__ = ["ABLATIONS", "register", "train_and_report"]
