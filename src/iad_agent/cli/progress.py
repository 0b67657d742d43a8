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


def trainer_progress(bar: Progress, what: str):  # noqa: ANN201 - a transformers.TrainerCallback
    """A ``transformers`` callback that drives ``bar`` (steps done / total, the last loss) on stderr.

    It replaces the trainer's own printing (a tqdm bar and metric dicts written to stdout), so
    the command prints its final metrics once, on stdout.
    """
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        task = None

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001,ANN201,ANN003
            self.task = bar.add_task(what, total=state.max_steps or None)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001,ANN201,ANN003
            bar.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001,ANN201,ANN003
            if logs and "loss" in logs:
                bar.update(self.task, description=f"{what} (loss {logs['loss']:.4g})")

    return _Progress()


def quiet_trainer_printing(trainer) -> None:  # noqa: ANN001 - a transformers.Trainer
    """Remove the trainer's own progress bar and metric printing (see :func:`trainer_progress`)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
