"""The ``iad`` command line (Typer + rich). Each group of commands lives in its own module."""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Agentic industrial anomaly inspector: register good parts, inspect, evaluate, train.")
console = Console(stderr=True, soft_wrap=True)  # error lines must stay greppable: never wrap paths


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_time=False, show_path=False)])


def fail(message: str, code: int = 2) -> None:
    """Print a clear error and exit (no traceback for user errors)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


from iad_agent.cli import inspect as _inspect  # noqa: E402,F401  (registers commands)
from iad_agent.cli import products as _products  # noqa: E402,F401  (`iad products`)
from iad_agent.cli import trajectories as _trajectories  # noqa: E402,F401
from iad_agent.cli import train as _train  # noqa: E402,F401
from iad_agent.cli import eval as _eval  # noqa: E402,F401  (registers `iad eval`)
from iad_agent.cli import batch as _batch  # noqa: E402,F401  (registers `iad batch`)
from iad_agent.cli import serve as _serve  # noqa: E402,F401  (registers `iad serve`)
