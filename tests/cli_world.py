"""A small simulated world built through the CLI (``aigq simulate`` + ``aigq build-samples``) for end-to-end command
tests. Not a test module."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from aigq.cli import app


def cli_world(out: Path, users: int, days: int, *extra: str) -> list[str]:
    """Simulate a world and build its samples under ``out``; returns the overrides that point a command at it
    (``run.output_dir`` + ``world.*`` + ``extra``). The two build commands run with tracking off."""
    base = [f"run.output_dir={out}", f"world.users={users}", f"world.days={days}", *extra]
    for cmd in ("simulate", "build-samples"):
        res = CliRunner().invoke(app, [cmd, *base, "tracking.enabled=false"])
        assert res.exit_code == 0, res.output
    return base
