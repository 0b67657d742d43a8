"""The ``iad`` command line (Typer + rich). Each group of commands lives in its own module.

Results go to stdout, diagnostics (progress bars, warnings, errors) to stderr. Exit status, the
same for every command: 0 = done (and, for inspections, every part normal), 1 = at least one
part anomalous, 2 = usage error (bad option, unknown product, unwritable output: nothing was
computed), 3 = failure or no answer (an image that could not be inspected, a model that gave
no answer, a damaged product, a write that failed after the work). An OS error never shows a
traceback: it is reported with the file it concerns.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import typer
from rich.console import Console
from rich.markup import escape

from iad_agent.cli.help import Command, Group

EXIT_OK, EXIT_ANOMALOUS, EXIT_USAGE, EXIT_FAILURE = 0, 1, 2, 3

console = Console(stderr=True, soft_wrap=True)  # error lines must stay greppable: never wrap paths

#: Loggers of other libraries kept at WARNING unless ``-vv`` (``-v``: only iad_agent's debug lines).
THIRD_PARTY_LOGGERS = ("PIL", "faiss", "urllib3", "httpx", "httpcore", "openai", "matplotlib", "transformers",
                       "sentence_transformers", "torch", "filelock", "fsspec", "datasets", "asyncio", "multipart",
                       "python_multipart", "numexpr", "h5py", "ray", "alembic", "sqlalchemy", "uvicorn", "accelerate",
                       "peft", "trl", "huggingface_hub", "jax", "numba")


class _Group(Group):
    """The top-level group: turns an OS error or an unhandled API error of any command into a message."""

    def invoke(self, ctx: typer.Context):  # noqa: ANN201
        from iad_agent.errors import IADError, ProductError

        try:
            return super().invoke(ctx)
        except OSError as exc:
            where = exc.filename or "iad"
            console.print(f"[bold red]error:[/] {escape(f'{where}: {exc.strerror or exc}')}", highlight=False)
            raise typer.Exit(EXIT_FAILURE) from None
        except IADError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(EXIT_FAILURE if isinstance(exc, ProductError) else EXIT_USAGE) from None


class IADTyper(typer.Typer):
    """``typer.Typer`` whose commands and groups print plain help (see ``cli/help.py``)."""

    def __init__(self, *args, cls: type = Group, **kwargs) -> None:  # noqa: ANN002,ANN003
        kwargs.setdefault("add_completion", False)
        kwargs.setdefault("pretty_exceptions_show_locals", False)
        kwargs.setdefault("context_settings", {"max_content_width": 120})  # help as wide as the terminal, up to 120
        super().__init__(*args, cls=cls, rich_markup_mode=None, **kwargs)

    def command(self, *args, cls: type | None = None, **kwargs):  # noqa: ANN002,ANN003,ANN201
        return super().command(*args, cls=cls or Command, **kwargs)


app = IADTyper(no_args_is_help=True, cls=_Group,
               help="Agentic industrial anomaly inspector: register good parts, inspect, evaluate, train.")


def configure_logging(verbosity: int) -> None:
    """``-v``: iad_agent's debug lines; ``-vv``: everyone's. Other libraries stay at WARNING otherwise."""
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbosity >= 2 else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_time=False, show_path=False)], force=True)
    logging.getLogger("iad_agent").setLevel(logging.DEBUG if verbosity >= 1 else logging.WARNING)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity >= 2 else logging.WARNING)


def busy_cores(samples: int = 5, interval: float = 0.01) -> float:
    """How many cores other processes keep busy *now*: runnable tasks besides this one.

    Linux's ``/proc/loadavg`` holds the number of runnable tasks at the moment it is read (this
    process, reading it, is one of them); the least of a few readings 10 ms apart drops
    short-lived tasks. The 1-minute load average is the fallback where that file is missing; it
    lags: right after one ``iad`` command finished, the next saw a load of 0.8 on a quiet machine
    and ran on one thread (50 good images: 15 s instead of 12 s).
    """
    try:
        counts = []
        for i in range(samples):
            if i:
                time.sleep(interval)
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]))
        return float(max(0, min(counts) - 1))
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0


def default_threads() -> int:
    """Threads for torch, faiss and BLAS: the free cores, at least one.

    Several thread pools (torch's OpenMP, faiss's, BLAS) that each take every core fight for
    them, and on a busy machine a parallel region waits for its slowest thread: registering 50
    good images took 36 s with one thread and 254 s with two beside other jobs on this 2-core
    machine (also with ``OMP_WAIT_POLICY=PASSIVE``). So the pools get the cores not already
    busy (:func:`busy_cores`), all of them on a quiet machine, one on a busy one.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, int(cores - busy_cores() + 0.5)))


def configure_threads(threads: int | None) -> int:
    """Size the thread pools of torch, faiss (OpenMP) and BLAS before they start; returns the count.

    Environment variables set by the user win; the libraries read them when they load, which
    happens after this (every heavy import is lazy).
    """
    n = threads or int(os.environ.get("IAD_THREADS") or 0) or default_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    n = int(os.environ["OMP_NUM_THREADS"])
    if "torch" in sys.modules:  # already running (an in-process call): the variables came too late
        sys.modules["torch"].set_num_threads(n)
    return n


@app.callback()
def main(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True,
                                help="-v: debug lines of iad; -vv: also of the libraries it uses (PIL, faiss, ...)."),
    threads: int = typer.Option(None, "--threads", min=1, metavar="N", show_default="the idle cores, at least 1; $IAD_THREADS",
                                help="Threads for torch, faiss and BLAS."),
) -> None:
    configure_logging(verbose)
    configure_threads(threads)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Print a clear error and exit (no traceback for user errors)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # a path or box in brackets stays text
    raise typer.Exit(code)


from iad_agent.cli import register as _register  # noqa: E402,F401  (registers commands)
from iad_agent.cli import inspect as _inspect  # noqa: E402,F401
from iad_agent.cli import products as _products  # noqa: E402,F401  (`iad products`)
from iad_agent.cli import trajectories as _trajectories  # noqa: E402,F401
from iad_agent.cli import train as _train  # noqa: E402,F401
from iad_agent.cli import eval as _eval  # noqa: E402,F401  (registers `iad eval`)
from iad_agent.cli import batch as _batch  # noqa: E402,F401  (registers `iad batch`)
from iad_agent.cli import serve as _serve  # noqa: E402,F401  (registers `iad serve`)
from iad_agent.cli import dev as _dev  # noqa: E402,F401  (`iad dev`)
