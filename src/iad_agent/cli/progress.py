"""Progress on stderr for every phase longer than a second (also with ``--json``: stdout stays clean)."""

from __future__ import annotations

from collections.abc import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def progress_bar(transient: bool = True) -> Progress:
    """A rich progress display on the CLI's stderr console: spinner, phase, bar, count, elapsed time.

    It never captures stdout (rich would send what is printed there to its own stream, stderr).
    """
    from iad_agent.cli import console

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=transient,
                    redirect_stdout=False, redirect_stderr=False)  # results on stdout stay on stdout


def phases(bar: Progress, task, what: str, after: str) -> Callable[[int, int], None]:  # noqa: ANN001 - a rich TaskID
    """A ``progress(done, total)`` callback that counts ``what`` and names the phase that follows (``after``)
    once the count is complete, so a long step after the last count never looks frozen."""

    def update(done: int, total: int) -> None:
        if total and done >= total:
            bar.update(task, completed=None, total=None, description=after)
        else:
            bar.update(task, completed=done, total=total, description=what)

    return update
