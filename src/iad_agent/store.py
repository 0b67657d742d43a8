"""Versioned, crash-safe folders with a cross-process lock: how a stored product is kept.

A product named ``NAME`` lives in a ``products/`` folder as::

    NAME              -> .NAME~v7      the pointer: a relative symbolic link, swapped atomically
    .NAME~v7/                          the current version (complete: only finished folders get a version name)
    .NAME~v6/                          the previous version, kept as a fallback
    .NAME~lock                         the lock file (``fcntl.flock``), holder's pid inside
    .NAME~tmp-1a2b3c4d/                a version being written (or debris of a killed writer)

A new version is written into a temporary folder, made durable, renamed to the next version
name and only then does the pointer move (one ``rename`` of a link). Whatever moment a writer
is killed at, a reader finds either the old or the new version: the pointer always names a
complete version, and when it names none (a lost link, a half-migrated product from before
versioning) the newest complete version is used. Writers hold the lock, so every temporary
found by a lock holder is debris of a dead writer and is removed.

Products written before versioning (``NAME/`` a real folder, and the ``.NAME.old`` /
``.NAME.XXXXXXXX`` folders of an interrupted swap) still load; the next write turns them into
versions. ``~`` is not allowed in names, so ``.NAME~…`` entries of different products never
collide; entries starting with a dot are never products.

No heavy imports here: listing products must stay fast.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from iad_agent.imageio import fsync_dir

log = logging.getLogger(__name__)

#: A file every complete version holds (written last by the product's writer).
MARKER = "product.json"
_VERSION = re.compile(r"v(\d{1,9})")
_held = threading.local()  # per thread: {lock path: [fd, depth]} (re-entrant lock)


def _step(name: str) -> None:
    """A named moment of a write (tests replace this to kill the writer exactly there)."""


class StoreError(RuntimeError):
    """A stored folder could not be written or removed; the message names it."""


def entry(pointer: Path, kind: str) -> Path:
    """The hidden sibling ``.NAME~kind`` of ``pointer``."""
    return pointer.with_name(f".{pointer.name}~{kind}")


def lock_path(pointer: Path) -> Path:
    return entry(pointer, "lock")


def _siblings(pointer: Path) -> list[Path]:
    prefix = f".{pointer.name}~"
    try:
        return [p for p in pointer.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:  # no such folder, or not a folder: nothing stored
        return []


def versions(pointer: Path) -> list[tuple[int, Path]]:
    """The finished version folders of ``pointer``, oldest first."""
    found = []
    for p in _siblings(pointer):
        m = _VERSION.fullmatch(p.name[len(pointer.name) + 2 :])
        if m and p.is_dir() and not p.is_symlink():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _legacy_debris(pointer: Path) -> list[Path]:
    """Folders an interrupted pre-versioning swap left: ``.NAME.old`` and ``.NAME.XXXXXXXX``."""
    pattern = re.compile(re.escape(f".{pointer.name}.") + r"(old|[a-z0-9_]{8})")
    try:
        return [p for p in pointer.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir()]
    except OSError:
        return []


def current(pointer: Path) -> Path | None:
    """The folder to read ``pointer``'s data from, or ``None`` when nothing is stored.

    The pointer's target when it is complete; otherwise (pointer lost, dangling, or naming an
    incomplete folder) the newest complete version, then a complete ``.NAME.old`` left by an
    interrupted pre-versioning swap.
    """
    if pointer.is_symlink():
        target = pointer.parent / os.readlink(pointer)
        if (target / MARKER).is_file():
            return target
        log.warning("%s points to %s, which is missing or incomplete; using the newest complete version", pointer, target)
    elif pointer.is_dir():
        if (pointer / MARKER).is_file():
            return pointer  # written before versioning
        log.warning("%s is incomplete (%s missing); using the newest complete version", pointer, MARKER)
    for _, folder in reversed(versions(pointer)):
        if (folder / MARKER).is_file():
            return folder
    old = pointer.with_name(f".{pointer.name}.old")
    if (old / MARKER).is_file():
        return old
    return None


def version_of(folder: Path | None) -> str | None:
    """A version folder's name (``.NAME~v7``), or ``None`` when nothing is stored."""
    return None if folder is None else folder.name


# ----------------------------------------------------------------------- locking
@contextlib.contextmanager
def lock(pointer: Path, on_wait: Callable[[str], None] | None = None, timeout: float | None = None) -> Iterator[None]:
    """Hold ``pointer``'s lock (exclusive, across processes and threads; re-entrant in a thread).

    Args:
        on_wait: called once with a description of the holder (``"pid 1234"``) when another
            process holds the lock, before waiting for it.
        timeout: give up after this many seconds (``StoreError``); ``None`` waits as long as
            it takes.
    """
    path = lock_path(pointer)
    held = _held.__dict__.setdefault("locks", {})
    key = str(path.absolute())
    if key in held:
        held[key][1] += 1
        try:
            yield
        finally:
            held[key][1] -= 1
        return
    fd = _acquire(path, on_wait, timeout)
    held[key] = [fd, 1]
    try:
        yield
    finally:
        del held[key]
        os.close(fd)  # releases the flock


def holds_lock(pointer: Path) -> bool:
    return str(lock_path(pointer).absolute()) in _held.__dict__.get("locks", {})


def _acquire(path: Path, on_wait: Callable[[str], None] | None, timeout: float | None) -> int:
    told = False
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the lock file ({exc.strerror or exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise StoreError(f"{path}: cannot lock ({exc.strerror or exc})") from exc
            if not told and on_wait is not None:
                on_wait(_holder(path))
            told = True
            if not _wait(fd, deadline):
                os.close(fd)
                raise StoreError(f"{path}: still locked by {_holder(path)} after {timeout:g} s")
        # The lock file may have been removed (product deleted) while we waited: then our lock
        # is on a file nobody else will open. Lock the file that is there now instead.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _wait(fd: int, deadline: float | None) -> bool:
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    while time.monotonic() < deadline:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            time.sleep(0.05)
    return False


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"


# ----------------------------------------------------------------------- writing
def _require_lock(pointer: Path) -> None:
    if not holds_lock(pointer):
        raise RuntimeError(f"{pointer}: write without holding its lock")


def clean_debris(pointer: Path, keep: tuple[Path | None, ...] = (), versions_too: bool = True) -> list[Path]:
    """Remove temporaries (and, with ``versions_too``, unused versions) of ``pointer``.

    The lock must be held: then no temporary is in use, every one is a dead writer's.

    Args:
        keep: folders to keep (the current and the previous version).
    """
    _require_lock(pointer)
    keep_names = {p.name for p in keep if p is not None}
    cur = current(pointer)
    removed = []
    for p in _siblings(pointer) + _legacy_debris(pointer):
        if p.name in keep_names or p == lock_path(pointer) or (cur is not None and p.name == cur.name):
            continue
        if not versions_too and _VERSION.fullmatch(p.name[len(pointer.name) + 2 :]) and p.name.startswith(f".{pointer.name}~"):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("%s: cannot remove stale temporary (%s)", p, exc)
            continue
        removed.append(p)
    if removed:
        log.info("removed %d stale temporaries of %s: %s", len(removed), pointer, ", ".join(p.name for p in removed))
    return removed


def _mkdir_new(parent: Path, prefix: str) -> Path:
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o777)  # the umask applies, as for any other program's folders
            return path
        except FileExistsError:
            continue
    raise StoreError(f"{parent}: cannot create a temporary folder")


def commit(pointer: Path, write: Callable[[Path], None], expected: str | None | bool = False,
           carry: Callable[[str], bool] | None = None) -> Path:
    """Write a new version of ``pointer`` with ``write(folder)`` and make it current.

    The caller must hold ``lock(pointer)``. ``write`` must create ``MARKER`` last (or
    ``carry`` bring it from the current version).

    Args:
        expected: the version (``version_of``) the new data was derived from; when the current
            version differs (another writer got there first), nothing is written and
            ``ConcurrentChange`` is raised. ``False`` skips the check.
        carry: entries of the current version (by name) to copy into the new one when
            ``write`` did not create them: files that others keep with the data (e.g. a
            learned gate installed in a product) survive a new version.

    Returns:
        The new version's folder.
    """
    _require_lock(pointer)
    parent = pointer.parent
    parent.mkdir(parents=True, exist_ok=True)
    base = current(pointer)
    if expected is not False and version_of(base) != expected:
        raise ConcurrentChange(pointer, expected, version_of(base))
    number = max((n for n, _ in versions(pointer)), default=0) + 1
    if base is not None and (base == pointer or base == pointer.with_name(f".{pointer.name}.old")):
        # A product written before versioning (a real folder, or ``.NAME.old``): make it a version.
        _step("before-migrate")
        migrated = entry(pointer, f"v{number}")
        os.replace(base, migrated)
        base, number = migrated, number + 1
        fsync_dir(parent)
        _step("after-migrate")
    clean_debris(pointer, keep=(base,))
    tmp = _mkdir_new(parent, f".{pointer.name}~tmp-")
    try:
        _step("tmp-created")
        write(tmp)
        if carry is not None and base is not None:
            _carry_over(base, tmp, carry)
        if not (tmp / MARKER).is_file():
            raise StoreError(f"{tmp}: the writer did not create {MARKER}")
        for f in tmp.rglob("*"):  # data files are fsynced by their writers; make the folders durable
            if f.is_dir():
                fsync_dir(f)
        fsync_dir(tmp)
        _step("written")
        new = entry(pointer, f"v{number}")
        os.replace(tmp, new)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)
    _step("renamed")
    link = entry(pointer, f"link-{secrets.token_hex(4)}")
    os.symlink(new.name, link)
    if pointer.is_dir() and not pointer.is_symlink():  # an incomplete pre-versioning folder: debris
        os.replace(pointer, entry(pointer, f"tmp-old-{secrets.token_hex(4)}"))
    os.replace(link, pointer)
    fsync_dir(parent)
    _step("switched")
    clean_debris(pointer, keep=(new, base))
    _step("cleaned")
    return new


def _carry_over(base: Path, new: Path, carry: Callable[[str], bool]) -> None:
    for entry_ in sorted(base.iterdir()):
        target = new / entry_.name
        if target.exists() or not carry(entry_.name):
            continue
        if entry_.is_dir():
            shutil.copytree(entry_, target)
        else:
            shutil.copy2(entry_, target)
        log.debug("%s carried over into the new version", entry_.name)


def remove(pointer: Path) -> bool:
    """Delete everything stored under ``pointer`` (lock held); ``False`` when nothing was there.

    Versions are first renamed to temporaries, the current one last, so a crash part-way leaves
    either the whole product or none (debris the next lock holder removes).
    """
    _require_lock(pointer)
    cur = current(pointer)
    found = cur is not None
    doomed = [p for _, p in versions(pointer) if p != cur] + [p for p in _legacy_debris(pointer) if p != cur]
    if cur is not None and cur != pointer:
        doomed.append(cur)
    trash = []
    for i, p in enumerate(doomed):
        if not p.exists():
            continue
        t = entry(pointer, f"tmp-rm{i}-{secrets.token_hex(4)}")
        os.replace(p, t)
        trash.append(t)
        _step(f"trashed-{i}")
    if pointer.is_symlink() or pointer.is_file():
        pointer.unlink()
    elif pointer.is_dir():
        t = entry(pointer, f"tmp-rm-{secrets.token_hex(4)}")
        os.replace(pointer, t)
        trash.append(t)
    fsync_dir(pointer.parent)
    _step("unlinked")
    for t in trash:
        shutil.rmtree(t, ignore_errors=True)
    clean_debris(pointer)
    lock_path(pointer).unlink(missing_ok=True)  # waiters notice (inode check) and re-lock
    return found


def names(folder: Path) -> list[str]:
    """Names stored in ``folder`` (one per pointer, or per orphaned complete version)."""
    if not folder.is_dir():
        return []
    found = set()
    for p in folder.iterdir():
        if p.name.startswith("."):
            stem, sep, kind = p.name[1:].partition("~")
            if sep and _VERSION.fullmatch(kind):
                found.add(stem)
            elif p.name.endswith(".old") and p.is_dir():
                found.add(p.name[1:-4])
        else:
            found.add(p.name)
    return sorted(n for n in found if current(folder / n) is not None)


class ConcurrentChange(StoreError):
    """Another writer stored a new version since the data being written was read."""

    def __init__(self, pointer: Path, expected: str | None, found: str | None) -> None:
        self.pointer, self.expected, self.found = pointer, expected, found
        was = "nothing was stored" if expected is None else f"it was at {expected}"
        super().__init__(f"{pointer}: changed by another writer meanwhile ({was}, now {found or 'removed'}); "
                         "nothing was overwritten")
