"""``aigq sft`` and ``aigq models prepare`` (registered on the main app by ``aigq.cli``), and the demo's SFT step."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aigq.cli import ConfigOpt, Overrides, _config, _fail, _progress, _table, _tracker, console
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

    cfg = _config(config, [f"model.source={source}", *(overrides or [])])
    try:
        with _progress() as prog:
            task = prog.add_task(f"preparing {source}", total=4 if source == "smollm2" else 1)

            def say(msg: str) -> None:
                prog.console.print(f"  {msg}")
                prog.advance(task)

            folder = prepare_base(cfg, say, force=force)
            prog.update(task, completed=prog.tasks[0].total)
    except (ModelNotFoundError, FileNotFoundError, ModuleNotFoundError) as exc:
        _fail(exc)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    console.print(f"{source} ready: {folder} ({size / 2**20:.1f} MiB)")


def _sft_overrides(ablation: str | None, overrides: list[str] | None) -> list[str]:
    if ablation is None:
        return list(overrides or [])
    if ablation not in ABLATIONS:
        console.print(f"[red]unknown ablation {ablation!r}[/red]; choose from {', '.join(ABLATIONS)}")
        raise typer.Exit(2)
    return [*ABLATIONS[ablation], *(overrides or [])]


def sft(config: ConfigOpt = None,
        ablation: Annotated[str | None, typer.Option(help=f"Paper ablation row: {' | '.join(ABLATIONS)}")] = None,
        build_samples: Annotated[bool, typer.Option("--build-samples",
                                                    help="(Re)build samples from the world first.")] = False,
        overrides: Overrides = None) -> None:
    """IL-SFT (Eq. 5) of the policy on a DDP LearnerWorker group; logs to MLflow and registers the final policy."""
    cfg = _config(config, _sft_overrides(ablation, overrides))
    tracker = _tracker(cfg)
    if build_samples:
        from aigq import pipeline

        with console.status("building samples"):
            pipeline.build_samples(cfg, tracker)
    figures = train_and_report(cfg, tracker)
    if tracker.enabled:
        console.print(f"MLflow: mlflow ui --backend-store-uri {tracker.uri}")
    if figures.get("sample_parse_rate", 1.0) < 0.95 or figures.get("eval_loss_drop", 1.0) < 0.30:
        console.print("[yellow]below the issue's bar (eval-loss drop ≥ 30 %, parse rate ≥ 95 %)[/yellow]")


def train_and_report(cfg: AIGQConfig, tracker, title: str = "IL-SFT", show: int = 3) -> dict[str, Any]:
    """Run IL-SFT with a progress bar, print the figures and ``show`` sampled lists (also used by ``aigq demo``)."""
    from aigq.actors.learner import LearnerConfigError
    from aigq.actors.sft import run_sft
    from aigq.data import prompt as P
    from aigq.learner.data import SampleSchemaError
    from aigq.models.factory import ModelNotFoundError

    try:
        with _progress() as prog:
            task = prog.add_task(f"{title}: preparing", total=None)
            figures = run_sft(cfg, tracker, say=lambda m: prog.console.print(f"  {m}"),
                              on_step=lambda s, n: prog.update(task, completed=s, total=n,
                                                               description=f"{title}: training"))
    except (SampleSchemaError, ModelNotFoundError, LearnerConfigError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    samples = figures.pop("samples", None)
    keys = ("train_samples", "steps_trained", "samples_per_s", "tokens_per_s", "eval_loss_first", "eval_loss_final",
            "eval_loss_drop", "sample_parse_rate", "sample_at_least_rate", "sample_mean_queries", "weights_identical", "registered_version",
            "policy")
    console.print(_table(f"{title} ({cfg.sft.variant}, {cfg.model.source})", {k: figures[k] for k in keys
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


__all__ = ["register", "train_and_report", "ABLATIONS"]
