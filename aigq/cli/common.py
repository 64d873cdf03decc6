"""What every ``aigq`` command shares: the config option and overrides, loading the config, the console, tables,
progress bars, the tracker, and the one way a command fails (one line, exit status 1 or 2, no traceback).

Commands only parse their options, call a stage (``aigq.pipeline``, ``aigq.loop``, ``aigq.evaluation``) and print
what it returns; nothing below the CLI imports this package (an import-linter contract in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aigq.config import AIGQConfig, ConfigError, load_config
from aigq.say import Say

console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (configs/*.yaml).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. world.users=5000", show_default=False)]
WorldOpt = Annotated[Path | None, typer.Option(help="World folder.")]


def load(config: Path | None, overrides: list[str] | None) -> AIGQConfig:
    """The config from ``--config`` and the overrides; a bad one is ``config error: …`` and exit status 2."""
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        console.print(f"[red]config error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


def open_tracker(cfg: AIGQConfig):
    from aigq.tracking import Tracker

    return Tracker(cfg.tracking)


def table(title: str, rows: dict[str, Any]) -> Table:
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("what")
    t.add_column("value", justify="right")
    for k, v in rows.items():
        t.add_row(str(k), f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else str(v))
    return t


def fail(exc: Exception | str) -> NoReturn:
    """One line (never wrapped; the message is text, not markup), exit status 1, no traceback."""
    console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
    raise typer.Exit(1)


def usage(message: str) -> NoReturn:
    """A bad option value: one line, exit status 2 (as typer's own usage errors)."""
    console.print(f"[red]{escape(message)}[/red]", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def say_in(prog: Progress | None = None, indent: str = "  ") -> Say:
    """A stage's ``say`` that prints above a progress bar (or to the console), as text, not markup."""
    out = prog.console if prog is not None else console
    return lambda m: out.print(f"{indent}{m}", markup=False, highlight=False)


def mlflow_hint(tr) -> None:
    if tr.enabled:
        console.print(f"MLflow: mlflow ui --backend-store-uri {tr.uri}")
