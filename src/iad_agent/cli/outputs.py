"""Where ``iad inspect`` puts heat maps and reports, checked before any work, never overwriting each other.

* Heat maps go to ``--out-dir`` (default: a new folder per run in the workspace,
  ``<workspace>/runs/<date>-<time>-<random>``, never the current folder), named
  ``<stem>_<hash of the path>_heatmap.png``: ``a/000.png`` and ``b/000.png`` cannot collide.
* ``--report FILE``: with one image, its report; with several, ``FILE`` is an index page
  linking one report per image, written into the output folder.
* Every output path is checked before the product is loaded or an image read (a folder that
  is a file, read-only, a report path that is a folder …); a write that still fails later is
  reported and the inspection's result is printed all the same.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from iad_agent.imageio import OutputPathError, check_output_path


def run_folder(workspace: Path | None) -> Path:
    """A new, unique output folder for one run, in the workspace: ``runs/20261129-221530-3fa2``."""
    from iad_agent.workspace import Workspace

    return Workspace(workspace).root / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass
class Outputs:
    """The output paths of one ``iad inspect`` run.

    Attributes:
        out_dir: the heat-map (and several images' reports) folder; created on first write.
        report: ``--report`` (one image: its report; several: the index page), or ``None``.
        heatmap: ``--heatmap`` (one image only), or ``None``.
        several: more than one image (reports go to ``out_dir``, ``report`` is the index).
        problems: writes that failed, as messages (the run then exits with status 3).
    """

    out_dir: Path
    report: Path | None = None
    heatmap: Path | None = None
    several: bool = False
    problems: list[str] = field(default_factory=list)
    index: list[dict] = field(default_factory=list)

    @classmethod
    def checked(cls, out_dir: Path | None, report: Path | None, heatmap: Path | None, several: bool,
                workspace: Path | None) -> Outputs:
        """The outputs, every path checked for writing (nothing is created yet).

        Raises:
            OutputPathError: a path that cannot be written, named with the reason.
        """
        default = out_dir is None
        folder = run_folder(workspace) if default else Path(out_dir).expanduser()
        try:
            check_output_path(folder, folder=True)
        except OutputPathError as exc:
            if default:
                raise OutputPathError(f"{exc}; heat maps go into a new folder of the workspace unless you give "
                                      "--out-dir DIR") from exc
            raise
        for path in (report, heatmap):
            if path is not None:
                check_output_path(path)
        return cls(folder, report, heatmap, several)

    def heatmap_path(self, image: Path) -> Path:
        from iad_agent.scale.folder import heatmap_name

        if self.heatmap is not None and not self.several:
            return self.heatmap
        return self.out_dir / heatmap_name(image)

    def report_path(self, image: Path) -> Path | None:
        if self.report is None:
            return None
        if not self.several:
            return self.report
        return self.out_dir / self.heatmap_path(image).name.replace("_heatmap.png", "_report.html")

    def write(self, what: str, path: Path, write) -> bool:  # noqa: ANN001 - a callable writing path
        """Run ``write(path)``; an OS error is recorded (named with the path), never raised."""
        try:
            write(path)
            return True
        except OSError as exc:
            self.problems.append(f"{exc.filename or path}: cannot write the {what} ({exc.strerror or exc})")
            return False

    def add_to_index(self, image: Path, d: dict | None, report: Path | None, error: str | None = None) -> None:
        self.index.append({"image": str(image), "result": d, "error": error,
                           "report": os.path.relpath(report, self.report.parent) if report and self.report else None})

    def write_index(self) -> None:
        """The index page of several images' reports (when ``--report`` was given)."""
        if not (self.several and self.report is not None):
            return
        from iad_agent.imageio import atomic_write_text
        from iad_agent.report import render_index

        self.write("report index", self.report, lambda p: atomic_write_text(p, render_index(self.index)))
