"""The ``aigq`` command line. Every command takes ``--config FILE`` and dotted overrides (``world.users=5000``).

One module per area, each with ``register(app)``; shared options and helpers in :mod:`aigq.cli.common`. Commands
parse, call a stage (``aigq.pipeline``, ``aigq.evaluation``, ``aigq.loop``) and print what it returns.
"""

from __future__ import annotations

import typer

from aigq.cli import compare, data, demo, evaluate, grpo, loop, models, rewards, serve

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="AIGQ: generative pre-search query recommendation on Ray, vLLM and MLflow.")

# the order of `aigq --help`
for _module in (data, demo, models, rewards, serve, grpo, compare, loop, evaluate):
    _module.register(app)

__all__ = ["app"]

if __name__ == "__main__":
    app()
