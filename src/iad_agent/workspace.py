"""The workspace: the folder of registered products, and every change to them as one locked step.

``Workspace(root)`` is ``--workspace``, else ``$IAD_WORKSPACE``, else ``~/.iad``; products live
in ``root/products/`` (see ``iad_agent.store`` for the layout). Every change — register,
re-set the false-alarm rate, remove good images, remove a product — checks first that the
workspace is a writable folder (before any feature is computed), then takes the product's
lock, re-loads the product inside it (so two registrations of one product at once both land,
one after the other), and stores the result as a new version. Nothing here prints: results are
returned, waiting for another registration is reported through ``on_wait``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from typing import TYPE_CHECKING

from iad_agent import store
from iad_agent.errors import ProductNotFound, RegistrationError, WorkspaceError
from iad_agent.store import NAME_RE, check_name

if TYPE_CHECKING:  # imported where used: listing products loads neither numpy nor PIL
    from iad_agent.product import Product
    from iad_agent.registration import Registration


class Workspace:
    """The folder of registered products: ``--workspace``, else ``$IAD_WORKSPACE``, else ``~/.iad``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root or os.environ.get("IAD_WORKSPACE") or Path.home() / ".iad").expanduser()

    @property
    def products_dir(self) -> Path:
        return self.root / "products"

    def product_dir(self, name: str) -> Path:
        return self.products_dir / check_name(name)

    # ------------------------------------------------------------------ reading
    def products(self) -> list[str]:
        """Names of the registered products (never temporaries or other hidden entries)."""
        return [n for n in store.names(self.products_dir) if NAME_RE.fullmatch(n)]

    def exists(self, name: str) -> bool:
        return store.current(self.product_dir(name)) is not None

    def load(self, name: str) -> Product:
        """The product's current version, validated.

        Raises:
            ProductNotFound: not registered here (the message lists what is).
            DamagedProduct: a stored file is damaged (the message names it and the repair).
        """
        folder = self.product_dir(name)
        if store.current(folder) is None:
            where = self.root if self.root.is_dir() else f"{self.root} (which does not exist)"
            raise ProductNotFound(name, where, self.products())
        from iad_agent.product import Product

        return Product.load(folder)

    def summaries(self, good_images: bool = False) -> list[dict]:
        """Per product: ``name, images, threshold, fpr, method, defect_types, labelled_defect_types,
        created, updated, version, folder`` (``good_images``: their paths, when asked; ``error``
        for a damaged product), read without loading any bank."""
        from iad_agent.product_files import read_summary

        return [read_summary(self.product_dir(n), good_images) for n in self.products()]

    # ------------------------------------------------------------------ checks
    def ensure_writable(self) -> Path:
        """Check that the workspace is (or can be made) a writable folder; create ``products/``.

        Raises:
            WorkspaceError: the workspace (or a folder on its path) is a file, or it cannot be
                written (read-only folder or file system, no permission).
        """
        hint = "give --workspace DIR (or set $IAD_WORKSPACE) to a writable folder"
        for p in [self.root, *self.root.parents]:
            if p.exists() and not p.is_dir():
                raise WorkspaceError(f"{self.root}: workspace cannot be used: {p} is a file, not a folder; {hint}")
            if p.exists():
                break
        try:
            self.products_dir.mkdir(parents=True, exist_ok=True)
            probe = self.products_dir / f".write-check-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise WorkspaceError(f"{self.root}: workspace is not writable ({exc.strerror or exc}); {hint}") from exc
        return self.root

    # ------------------------------------------------------------------ changes
    def lock(self, name: str, on_wait: Callable[[str], None] | None = None, timeout: float | None = None):
        """Hold ``name``'s lock (context manager); ``on_wait(holder)`` is called if it must wait."""
        self.ensure_writable()
        return store.lock(self.product_dir(name), on_wait, timeout)

    def register(self, name: str, normals: str | Path | Sequence[str | Path] = (), *, recursive: bool = False,
                 on_wait: Callable[[str], None] | None = None, default_priors: dict[str, str] | None = None,
                 **options) -> Registration:
        """Register good images as ``name`` (new, or added to the stored product) and store it.

        The workspace is checked first (before any image is read). Inside the product's lock
        the stored product is re-loaded and extended, so concurrent registrations of one
        product add up. Images already registered are skipped; with nothing to add and the same
        settings, nothing is stored (``changed`` False). With no images, a different ``fpr``
        re-sets the threshold and tool limits from the stored scores.

        Args:
            normals: a folder of good images, or good image files.
            recursive: with a folder, include the images in its subfolders; without it, a
                warning in the result says how many there were.
            on_wait: called with the lock holder (``"pid 1234"``) when another registration
                of this product is running; this one then waits for it.
            default_priors: priors for a new product (merged under ``options['priors']``);
                ignored when the product exists.
            options: ``registration.register``'s: ``config, fpr, defects_dir, priors,
                allow_mixed_sizes, max_side, max_patches, progress, brightness``.

        Raises:
            WorkspaceError: the workspace is not a writable folder (checked first).
            RegistrationError, DamagedProduct: as ``registration.register`` / ``Product.load``.
        """
        from iad_agent.registration import register

        folder = self.product_dir(name)
        self.ensure_writable()
        files, warnings = _image_files(normals, recursive)
        waited: list[str] = []
        with self.lock(name, _noting(on_wait, waited)):
            store.clean_debris(folder, versions_too=False)  # a killed registration's temporaries
            existing = self.load(name) if store.current(folder) is not None else None
            if existing is None and default_priors:
                options["priors"] = {**default_priors, **(options.get("priors") or {})}
            reg = register(name, files, existing=existing, **options)
            reg.waited_for = waited[0] if waited else None
            reg.warnings[:0] = warnings
            if reg.changed:
                reg.folder = reg.product.save(folder)
        return reg

    def set_fpr(self, name: str, fpr: float, on_wait: Callable[[str], None] | None = None) -> Registration:
        """Re-set ``name``'s threshold and tool limits for false-alarm rate ``fpr`` from its stored
        calibration scores (nothing extracted) and store it. Same as ``register(name, fpr=fpr)``."""
        return self.register(name, (), on_wait=on_wait, fpr=fpr)

    def remove_images(self, name: str, paths: Sequence[str | Path], on_wait: Callable[[str], None] | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Registration:
        """Remove good images (by the path they were registered under) from ``name`` and store it.

        The coreset is rebuilt from the stored features and the product recalibrated.

        Raises:
            RegistrationError: a path not registered, or removing the last good image.
        """
        waited: list[str] = []
        with self.lock(name, _noting(on_wait, waited)):
            store.clean_debris(self.product_dir(name), versions_too=False)
            reg = self.load(name).without_images(paths, progress)
            reg.waited_for = waited[0] if waited else None
            reg.folder = reg.product.save(self.product_dir(name))
        return reg

    def install_file(self, name: str, filename: str, data: bytes, on_wait: Callable[[str], None] | None = None) -> Path:
        """Store ``data`` as ``filename`` in product ``name``, as a new version (atomic, locked).

        For what others keep with a product (a learned gate: ``learned_gate.json``); such files
        are carried over into every later version. Returns the new version's folder.

        Raises:
            ProductNotFound: no such product. RegistrationError: a bad file name.
        """
        from iad_agent.imageio import atomic_write_bytes
        from iad_agent.product_files import OWN_FILES

        if filename in OWN_FILES or not filename or filename.startswith(".") or "/" in filename or filename in ("..",):
            raise RegistrationError(f"cannot install a file named {filename!r} in a product")
        folder = self.product_dir(name)
        with self.lock(name, on_wait):
            if store.current(folder) is None:
                raise ProductNotFound(name, self.root, self.products())
            try:
                return store.commit(folder, lambda tmp: atomic_write_bytes(tmp / filename, data),
                                    carry=lambda entry: entry != filename)
            except OSError as exc:
                raise WorkspaceError(f"{folder}: cannot store {filename} ({exc.strerror or exc})") from exc

    def remove(self, name: str, on_wait: Callable[[str], None] | None = None) -> Path:
        """Delete product ``name`` (every version); a damaged product can be removed too.

        Returns:
            The removed product's folder.

        Raises:
            ProductNotFound: nothing of that name is stored.
        """
        folder = self.product_dir(name)
        if store.current(folder) is None:
            raise ProductNotFound(name, self.root, self.products())
        with self.lock(name, on_wait):
            try:
                found = store.remove(folder)
            except OSError as exc:
                raise WorkspaceError(f"{folder}: cannot remove product {name!r} ({exc.strerror or exc})") from exc
        if not found:
            raise ProductNotFound(name, self.root, self.products())
        return folder


def _image_files(normals: str | Path | Sequence[str | Path], recursive: bool) -> tuple[list[Path], list[str]]:
    from iad_agent.imageio import IMAGE_SUFFIXES, scan_images

    if not isinstance(normals, (str, Path)):
        return [Path(p) for p in normals], []
    try:
        scan = scan_images(normals, recursive)
    except NotADirectoryError as exc:
        raise RegistrationError(str(exc)) from exc
    if not scan.files:
        inside = f" ({scan.unused} in subfolders: pass --recursive)" if scan.unused else ""
        raise RegistrationError(f"{normals}: no images found{inside} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return scan.files, [scan.warning] if scan.warning else []


def _noting(on_wait: Callable[[str], None] | None, waited: list[str]) -> Callable[[str], None]:
    def note(holder: str) -> None:
        waited.append(holder)
        if on_wait is not None:
            on_wait(holder)

    return note
