"""Folder batches: which images, one result row per image, results that survive an interruption.

``iad inspect DIR --out results.csv --jsonl results.jsonl --resume`` and ``iad batch`` (both
engines) share this module:

* :func:`find_images` — the images of folders (recursively), globs or single files, sorted.
* :func:`result_row` — the flat row of one image (the CSV / Parquet columns :data:`FIELDS`);
  the JSONL file holds the whole ``iad inspect --json`` object instead.
* :class:`ResultFile` — CSV, JSONL or Parquet results. Each row is appended and flushed to
  disk as soon as its image is done (Parquet, which cannot be appended to, keeps a JSONL
  checkpoint beside it until the run ends), so an interrupted run loses at most the image in
  flight and ``resume=True`` continues where it stopped; without it an existing file is never
  overwritten.
* :class:`Tally` — counts and the exit status a script on a line branches on.

Nothing here imports torch or an extra at module level; Parquet needs ``pyarrow`` (the
``[scale]`` extra).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iad_agent.errors import IADError

if TYPE_CHECKING:
    from iad_agent.api import InspectionOutcome

#: Columns of a CSV / Parquet result row, in order.
FIELDS = ("image", "product", "policy", "anomaly_present", "score", "threshold", "box", "defect_type", "confidence",
          "stop_reason", "tool_calls", "elapsed_ms", "heatmap", "error")
_GLOB_CHARS = set("*?[")


class BatchError(IADError, ValueError):
    """A batch that cannot run as asked: no images, an output that exists without resume, ..."""


def find_images(specs: str | Path | Sequence[str | Path], recursive: bool = True) -> list[Path]:
    """The image files named by folders, glob patterns or files, in a stable (sorted) order.

    Args:
        specs: one or more folders (searched recursively unless ``recursive`` is false; hidden
            files and folders are skipped), glob patterns such as ``"line2/**/*.png"``, or files.
        recursive: search folders' subfolders too.

    Raises:
        BatchError: a spec names nothing, or no image was found at all.
    """
    from iad_agent.imageio import IMAGE_SUFFIXES

    specs = [specs] if isinstance(specs, (str, Path)) else list(specs)
    found: dict[Path, None] = {}
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = [p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                     and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        elif path.is_file():
            files = [path]
        elif _GLOB_CHARS & set(str(spec)):
            files = [Path(p) for p in glob.glob(str(path), recursive=True)]
            files = [p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise BatchError(f"{spec}: the pattern matches no image")
        else:
            raise BatchError(f"{spec}: no such file or folder")
        found.update(dict.fromkeys(sorted(files)))
    if not found:
        raise BatchError(f"{', '.join(map(str, specs))}: no images found (looked for "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return list(found)


def heatmap_name(image: str | Path) -> str:
    """A heat-map file name for ``image`` that two images of a batch cannot share.

    >>> heatmap_name("line2/a/000.png") != heatmap_name("line2/b/000.png")
    True
    """
    tag = hashlib.sha1(str(image).encode()).hexdigest()[:8]
    return f"{Path(image).stem}_{tag}_heatmap.png"


def result_row(image: str | Path, result: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    """The flat row of one image: the verdict's fields from an ``iad inspect --json`` object, or the error.

    >>> result_row("a.png", error="a.png: empty file")["error"]
    'a.png: empty file'
    """
    row: dict[str, Any] = dict.fromkeys(FIELDS)
    row["image"] = str(image)
    row["error"] = error
    if result is not None:
        for key in FIELDS[1:-1]:
            row[key] = result.get(key)
        row["tool_calls"] = ",".join(c["name"] for c in result.get("tool_calls", []))
    return row


def outcome_to_row(outcome: InspectionOutcome, heatmap_dir: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(row, full JSON object)`` of one :class:`~iad_agent.api.InspectionOutcome`; writes its heat map if asked."""
    if not outcome.ok:
        return result_row(outcome.image, error=str(outcome.error)), {"image": str(outcome.image), "error": str(outcome.error)}
    if heatmap_dir is not None:
        from iad_agent.report import save_heatmap

        save_heatmap(outcome.result, heatmap_dir / heatmap_name(outcome.image))
    full = outcome.result.to_dict()
    return result_row(outcome.image, full), full


@dataclass
class Tally:
    """What a batch found, and the exit status that says so.

    Exit status: 1 = at least one part anomalous; otherwise 3 = some image could not be
    inspected or got no answer; otherwise 0 = every part inspected and normal.
    """

    normal: int = 0
    anomalous: int = 0
    no_answer: int = 0
    failed: int = 0
    skipped: int = 0
    anomalous_images: list[str] = field(default_factory=list)

    def add(self, row: dict[str, Any]) -> None:
        verdict = _verdict(row)
        if verdict == "failed":
            self.failed += 1
        elif verdict is True:
            self.anomalous += 1
            self.anomalous_images.append(str(row["image"]))
        elif verdict is False:
            self.normal += 1
        else:
            self.no_answer += 1

    @property
    def total(self) -> int:
        return self.normal + self.anomalous + self.no_answer + self.failed

    @property
    def exit_code(self) -> int:
        return 1 if self.anomalous else 3 if self.failed or self.no_answer else 0

    def summary(self) -> str:
        return (f"{self.total} images: {self.anomalous} anomalous, {self.normal} normal, {self.no_answer} no answer, "
                f"{self.failed} failed" + (f" ({self.skipped} done before, not inspected again)" if self.skipped else ""))


def _verdict(row: dict[str, Any]) -> bool | None | str:
    if row.get("error") not in (None, ""):
        return "failed"
    value = row.get("anomaly_present")
    return {"True": True, "true": True, "False": False, "false": False}.get(value, value) if isinstance(value, str) else value


def _csv_line(values: Iterable[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else "" if value is None else value


class ResultFile:
    """Results of a batch in one file: ``.csv``, ``.jsonl`` or ``.parquet`` (by the suffix, or ``kind``).

    Rows are appended as images finish and flushed to disk (``fsync``) one by one. With
    ``resume`` an existing file is continued: a row torn by an interruption is dropped and
    :attr:`done` maps the images already in it to their rows, so they are not inspected again.

    Raises:
        BatchError: the file exists and ``resume`` is false; it cannot be read back; an
            unknown suffix.
    """

    def __init__(self, path: str | Path, resume: bool = False, kind: str | None = None) -> None:
        self.path = Path(path)
        self.kind = kind or self.path.suffix.lower().lstrip(".")
        if self.kind not in ("csv", "jsonl", "parquet"):
            raise BatchError(f"{self.path}: results can be written as .csv, .jsonl or .parquet, not {self.path.suffix or 'no suffix'}")
        self.done: dict[str, dict[str, Any]] = {}
        self._rows: list[dict[str, Any]] = []  # Parquet: everything, written when the run ends
        log = self._checkpoint
        if (self.path.exists() or log.exists()) and not resume:
            raise BatchError(f"{self.path}: already exists; pass --resume to continue that run, or choose another file")
        if self.path.is_dir():
            raise BatchError(f"{self.path}: is a folder, not a results file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "parquet":
            self._resume_parquet()
            self._fh = open(log, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        else:
            self._resume_text()
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._fh = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed in close()
            if new and self.kind == "csv":
                self._append(_csv_line(FIELDS))

    @property
    def _checkpoint(self) -> Path:
        return self.path.with_name(self.path.name + ".partial.jsonl")

    def __enter__(self) -> ResultFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, row: dict[str, Any], full: dict[str, Any] | None = None) -> None:
        """Append one image's row (CSV, Parquet) or full JSON object (JSONL)."""
        if self.kind == "csv":
            self._append(_csv_line(_cell(row[k]) for k in FIELDS))
        elif self.kind == "jsonl":
            self._append(json.dumps(full if full is not None else row, ensure_ascii=False) + "\n")
        else:
            self._rows.append(dict(row))
            self._append(json.dumps(row, ensure_ascii=False) + "\n")
        self.done[str(row["image"])] = row

    def close(self) -> None:
        if self._fh.closed:
            return
        self._fh.close()
        if self.kind == "parquet":
            write_parquet(self._rows, self.path)
            self._checkpoint.unlink(missing_ok=True)

    def _append(self, text: str) -> None:
        self._fh.write(text)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def _resume_text(self) -> None:
        if not self.path.exists():
            return
        _drop_torn_tail(self.path)
        text = self.path.read_text(encoding="utf-8")
        if self.kind == "csv":
            reader = csv.DictReader(io.StringIO(text))
            if text and tuple(reader.fieldnames or ()) != FIELDS:
                raise BatchError(f"{self.path}: its columns are not those of an `iad inspect` results file; "
                                 "choose another file")
            rows = list(reader)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        self.done = {str(r["image"]): _row_of(r) for r in rows}

    def _resume_parquet(self) -> None:
        if self.path.exists():
            self._rows = read_parquet(self.path)
        if self._checkpoint.exists():
            _drop_torn_tail(self._checkpoint)
            seen = {r["image"] for r in self._rows}
            for line in self._checkpoint.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                if row["image"] not in seen:
                    self._rows.append(row)
                    seen.add(row["image"])
        self.done = {str(r["image"]): r for r in self._rows}


def _row_of(record: dict[str, Any]) -> dict[str, Any]:
    """A result row from a CSV row or a JSONL object (the full JSON has no ``error`` when it succeeded)."""
    if "tool_calls" in record and isinstance(record["tool_calls"], list):
        return result_row(record["image"], record)
    return {k: record.get(k) for k in FIELDS}


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that an interruption left without its newline (it is written again)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


def write_parquet(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write result rows as one Parquet file, atomically (``box`` as a list of 4 floats)."""
    from iad_agent.extras import require

    require("scale", "pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from iad_agent.imageio import atomic_write_bytes

    schema = pa.schema([("image", pa.string()), ("product", pa.string()), ("policy", pa.string()),
                        ("anomaly_present", pa.bool_()), ("score", pa.float64()), ("threshold", pa.float64()),
                        ("box", pa.list_(pa.float64())), ("defect_type", pa.string()), ("confidence", pa.float64()),
                        ("stop_reason", pa.string()), ("tool_calls", pa.string()), ("elapsed_ms", pa.float64()),
                        ("heatmap", pa.string()), ("error", pa.string())])
    table = pa.Table.from_pylist([{k: r.get(k) for k in FIELDS} for r in rows], schema=schema)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue().to_pybytes())


def read_parquet(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results Parquet file."""
    from iad_agent.extras import require

    require("scale", "pyarrow")
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError) as exc:
        raise BatchError(f"{path}: cannot read these results ({exc}); choose another file") from exc


def split_done(images: Sequence[str | Path], outputs: Sequence[ResultFile]) -> tuple[Tally, list]:
    """A resumed run: a tally of the images every output already holds (counted as skipped) and
    the images still to inspect, in order."""
    tally, todo = Tally(), []
    for image in images:
        key = str(image)
        if outputs and all(key in out.done for out in outputs):
            tally.add(outputs[0].done[key])
            tally.skipped += 1
        else:
            todo.append(image)
    return tally, todo


def inspect_to_files(images: Sequence[str | Path], product: Any, policy: Any, outputs: Sequence[ResultFile], *,
                     heatmap_dir: Path | None = None, max_steps: int | None = None,
                     progress: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> Tally:
    """Inspect ``images`` one by one on this machine and write each outcome to every output.

    Images that every output already holds (a resumed run) are counted from those rows and
    not inspected again.

    Args:
        product: a :class:`~iad_agent.product.Product` or the name of a registered one.
        policy: a policy name or a :class:`~iad_agent.policies.ResolvedPolicy`.
        outputs: open :class:`ResultFile` objects.
        heatmap_dir: write each image's heat map here (names from :func:`heatmap_name`).
        progress: called with each new row and its full JSON object.
    """
    from iad_agent import api

    tally, todo = split_done(images, outputs)
    if heatmap_dir is not None:
        heatmap_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {} if max_steps is None else {"max_steps": max_steps}
    for outcome in api.inspect_many(todo, product, policy, **kwargs):
        row, full = outcome_to_row(outcome, heatmap_dir)
        for out in outputs:
            if str(outcome.image) not in out.done:
                out.write(row, full)
        tally.add(row)
        if progress is not None:
            progress(row, full)
    return tally
