"""The library API: register products, inspect images, list products.

The one entry point that the ``iad`` command, the HTTP service and the Ray engine share (see
``ARCHITECTURE.md``); evaluation and trajectory building sit below it and use
:class:`~iad_agent.inspector.Inspector` directly. Nothing here prints, exits or changes the
environment, and importing this module loads neither torch nor faiss (they load when a
product is built or loaded). Problems are raised as typed errors that callers turn into
messages or HTTP status codes:

* :class:`RegistrationError` (a ``ValueError``): registration refused; names the file or folder.
* :class:`ImageError` (a ``ValueError``): an image that cannot be inspected; names the file.
* :class:`ProductNotFound` (a ``LookupError``): no product of that name in the workspace.
* :class:`ProductError` (a ``RuntimeError``): a stored product that cannot be loaded.
* :class:`PolicyConfigError` (a ``ValueError``): unknown policy / tool name, or bad backend options.
* :class:`MissingExtra` (an ``ImportError``): a VLM policy without ``pip install 'iad-agent[vlm]'``.

All of them but :class:`ImageError` derive from :class:`IADError`. (Over 400 lines on purpose: it is
the whole public surface in one place, mostly docstrings; the work is done in the modules it calls.)

Example (the README's main job)::

    from iad_agent import api

    api.register("hazelnut", "shared/data/mvtec_ad/hazelnut/train/good")
    result = api.inspect("shared/data/mvtec_ad/hazelnut/test/hole/001.png", "hazelnut")
    result.to_dict()["anomaly_present"]      # True
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from iad_agent.errors import IADError, MissingExtra, PolicyConfigError, ProductError, ProductNotFound, RegistrationError
from iad_agent.imageio import ImageError
from iad_agent.policies import ResolvedPolicy, VLMOptions, resolve_policy

if TYPE_CHECKING:
    from PIL import Image

    from iad_agent.inspector import InspectionResult, Inspector
    from iad_agent.product import Product
    from iad_agent.registration import Registration
    from iad_agent.types import Sample

__all__ = [
    "IADError", "ImageError", "InspectionOutcome", "MissingExtra", "PolicyConfigError", "ProductError", "ProductNotFound", "RegistrationError",
    "ResolvedPolicy", "VLMOptions", "delete_product", "fpr_for_threshold", "inspect", "inspect_many", "list_products",
    "load_product", "make_inspector", "product_summaries", "product_version", "read_priors", "register",
    "register_details", "resolve_policy",
    "set_fpr", "threshold_for_fpr",
]

#: Step budget of one inspection (turns of the policy).
DEFAULT_MAX_STEPS = 6
#: What ``iad inspect`` and the service use when no policy is named.
DEFAULT_POLICY = "embedded"

PathLike = Union[str, Path]
ImageInput = Union[str, Path, "Image.Image"]


# ----------------------------------------------------------------------------- products


def list_products(workspace: PathLike | None = None) -> list[str]:
    """Names of the products registered in ``workspace`` (default ``$IAD_WORKSPACE``, else ``~/.iad``)."""
    from iad_agent.product import Workspace

    return Workspace(workspace).products()


def load_product(name: str, workspace: PathLike | None = None) -> Product:
    """A registered product, loaded from the workspace.

    Raises:
        ProductNotFound: no product of that name is registered there.
        ProductError: the stored product cannot be loaded (``DamagedProduct``: the message
            names the damaged file and the repair), or its folder cannot be read.
        RegistrationError: ``name`` is not a valid product name.
    """
    from iad_agent.workspace import Workspace

    ws = Workspace(workspace)
    try:
        return ws.load(name)
    except OSError as exc:  # a permission problem in the workspace; anything else is not the product's fault
        folder = ws.product_dir(name)
        if not str(exc.filename or "").startswith(str(folder)):
            raise
        raise ProductError(f"{exc.filename}: cannot read product {name!r} ({exc.strerror or exc})") from exc


def read_priors(path: PathLike) -> dict[str, str]:
    """A priors file: a JSON object ``{"good": "...", "<defect type>": "..."}`` of strings.

    Raises:
        RegistrationError: the file cannot be read or does not hold such an object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistrationError(f"{path}: cannot read priors ({exc}); "
                                "expected JSON {\"good\": \"...\", \"<defect type>\": \"...\"}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise RegistrationError(f"{path}: priors must be a JSON object of strings {{\"good\": \"...\", \"<defect type>\": \"...\"}}")
    return data


def register(name: str, normals: PathLike | Sequence[PathLike] | None = None, **options) -> Product:
    """Register a product from good images, or add to a registered one; sets its threshold from them alone.

    The product as :func:`register_details` leaves it; ``options`` are its keyword arguments
    (``workspace, defects, priors, fpr, recursive, backbone, resolution, layers, allow_mixed_sizes,
    match_brightness, save, progress, on_wait``). The example in the module docstring is the README's main job.
    """
    return register_details(name, normals, **options).product


def register_details(
    name: str,
    normals: PathLike | Sequence[PathLike] | None = None,
    *,
    workspace: PathLike | None = None,
    defects: PathLike | None = None,
    priors: PathLike | Mapping[str, str] | None = None,
    fpr: float | None = None,
    recursive: bool = False,
    backbone: str = "efficientnet-lite0",
    resolution: int = 256,
    layers: Sequence[int] | None = None,
    allow_mixed_sizes: bool = False,
    match_brightness: bool = True,
    save: bool = True,
    progress: Callable[[int, int], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Registration:
    """Register good images, defect examples or priors, or a new false-alarm rate; say what changed.

    Goes through :meth:`iad_agent.workspace.Workspace.register`: the workspace is checked
    first (before any image is read), the product's lock is taken (a concurrent registration of
    the same product is waited for, ``on_wait`` is told), images already registered — the same
    picture under any name — are skipped, and the result is stored as a new version
    atomically. Running the same registration twice leaves the product as it was
    (``changed`` False). A new product gets the domain-knowledge priors of its name (MMAD's,
    packaged, or the file ``$IAD_PRIORS`` names; see :mod:`iad_agent.tools.priors`) under
    ``priors``.

    Args:
        name: product name (1-64 letters, digits, ``_``, ``-``, ``.``).
        normals: a folder of good images, or a list of image files; ``None`` to change only
            the defect examples, the priors or the false-alarm rate of a registered product.
        workspace: the products folder (default ``$IAD_WORKSPACE``, else ``~/.iad``).
        defects: a folder with one subfolder of example images per defect type (its layout is
            checked before anything else).
        priors: a priors JSON file or a mapping ``{"good": text, "<defect type>": text}``.
        fpr: false-alarm rate on good parts that the threshold is set for; ``None`` keeps the
            stored one (0.05 for a new product). Given alone, the threshold and the tools'
            limits are re-set from the stored held-out scores (nothing is extracted).
        recursive: with a folder, include the images in its subfolders (without it they are
            left out with a warning in ``warnings``).
        backbone: feature extractor of a new product: ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``,
            a local Hugging Face model folder (DINOv2, DINOv3, CLIP, SigLIP, ConvNeXt, ResNet, ...)
            or ``timm:MODEL_NAME:CHECKPOINT`` (:mod:`iad_agent.vision.backbones`). Saved with the
            product and used whenever it is loaded.
        resolution: input resolution (short side) of the feature extractor of a new product.
        layers: a custom backbone's tapped layers (default: what suits its family).
        allow_mixed_sizes: accept good images of different sizes.
        match_brightness: a new product whose good images are shot under varying light sees every
            image at their median brightness and contrast (:mod:`iad_agent.vision.brightness`);
            ``False`` keeps every image as it is (a part darker or lighter as a whole stays an
            anomaly). Products whose good images keep their brightness are never matched.
        save: store the product in the workspace; ``False`` builds a one-off product that
            is only returned (the workspace is neither read nor written).
        progress: called as ``progress(done, total)`` while features are extracted.
        on_wait: called with the holder of the product's lock (``"pid 1234"``) when another
            registration of it is running; this one then waits for it.

    Returns:
        The :class:`~iad_agent.registration.Registration`: the product, what was added or
        skipped (and why), the limits before and after, warnings, whom it waited for.

    Raises:
        RegistrationError: nothing to register, no or unreadable images, mixed sizes, a bad
            priors file or defects folder, an invalid name, ``fpr`` out of range, an unusable
            backbone (its message names the folder or checkpoint; also when the package it needs
            is not installed); a ``WorkspaceError`` (one of them) when the workspace is not a
            writable folder.
        ProductNotFound: only ``fpr``, defects or priors given for a product not registered.
        ProductError: the stored product to extend cannot be loaded.
    """
    from iad_agent.registration import check_defects_dir
    from iad_agent.registration import register as build
    from iad_agent.tools.priors import domain_priors
    from iad_agent.vision.backbones import feature_config
    from iad_agent.workspace import Workspace

    if normals is None and defects is None and priors is None and fpr is None:
        raise RegistrationError("nothing to register: give good images (--normals DIR), defect examples (--defects DIR), "
                                "priors (--priors FILE) or a false-alarm rate (--fpr)")
    if fpr is not None and not FPR_RANGE[0] <= fpr <= FPR_RANGE[1]:
        raise RegistrationError(f"false-alarm rate must be between {FPR_RANGE[0]} and {FPR_RANGE[1]}, got {fpr}")
    if defects is not None:
        check_defects_dir(defects)
    user_priors = dict(priors) if isinstance(priors, Mapping) else read_priors(priors) if priors is not None else {}
    try:
        default_priors = domain_priors(name)
    except ValueError as exc:  # a broken $IAD_PRIORS file
        raise RegistrationError(str(exc)) from exc
    try:
        config = feature_config(backbone, resolution, layers)  # a new product's; an existing one keeps its own
        if not save:
            from iad_agent.product import list_images

            files = _image_files(normals, lambda folder: list_images(folder, recursive))
            return build(name, files, config, fpr, defects, {**default_priors, **user_priors}, allow_mixed_sizes,
                         progress=progress, brightness=match_brightness)
        ws = Workspace(workspace)
        if normals is None and not ws.exists(name):
            raise ProductNotFound(name, ws.root, ws.products())
        return ws.register(name, () if normals is None else normals, recursive=recursive, on_wait=on_wait,
                           default_priors=default_priors, config=config, fpr=fpr, defects_dir=defects,
                           priors=user_priors or None, allow_mixed_sizes=allow_mixed_sizes, progress=progress,
                           brightness=match_brightness)
    except IADError:
        raise
    except (FileNotFoundError, ValueError, MissingExtra) as exc:  # an image that vanished, a bad backbone or resolution, ...
        raise RegistrationError(str(exc)) from exc


def product_version(name: str, workspace: PathLike | None = None) -> str:
    """A short fingerprint of the stored product's current version (changes whenever it does).

    The stored version's number (``v7``: every registration, added image, new false-alarm rate
    or installed file makes a new one) and a hash of its ``product.json`` (which tells apart a
    product removed and registered again under the same name). The service keys its loaded
    products by it and records it with every inspection.

    Raises:
        ProductNotFound: no product of that name is registered.
        RegistrationError: ``name`` is not a valid product name.
    """
    from iad_agent import store
    from iad_agent.workspace import Workspace

    ws = Workspace(workspace)
    pointer = ws.product_dir(name)
    for _ in range(5):  # a new version may replace the one being read: read again
        folder = store.current(pointer)
        if folder is None:
            raise ProductNotFound(name, ws.root, ws.products())
        try:
            meta = (folder / store.MARKER).read_bytes()
        except OSError:
            continue
        return f"{folder.name.partition('~')[2] or 'v0'}-{hashlib.sha256(meta).hexdigest()[:8]}"
    raise ProductError(f"{pointer}: product {name!r} keeps changing while it is read; try again")


def product_summaries(workspace: PathLike | None = None) -> list[dict]:
    """Per registered product: ``name, images, threshold, fpr, method, defect_types, created, updated,
    version`` (``error`` for a damaged one), read without loading any product (fast)."""
    from iad_agent.workspace import Workspace

    return Workspace(workspace).summaries()


def delete_product(name: str, workspace: PathLike | None = None) -> None:
    """Remove a registered product, every stored version of it (a crash leaves all or nothing).

    Raises:
        ProductNotFound: no product of that name is registered.
        RegistrationError: ``name`` is not a valid product name.
    """
    from iad_agent.workspace import Workspace

    Workspace(workspace).remove(name)


#: The range of false-alarm rates a threshold may be set for (as ``iad register --fpr``).
FPR_RANGE = (0.001, 0.5)


def threshold_for_fpr(product: Product, fpr: float) -> float:
    """The threshold that ``product``'s held-out good scores give for false-alarm rate ``fpr``.

    The calibration's own rule (:meth:`Calibration.threshold_at`): a normal fit of the held-out
    scores carried to the full bank by its ``bank_size_factor``; with 2–7 good images their mean
    plus the prior spread; with one good image tied at 5 % to its synthetic defects' median and
    its split score (:func:`iad_agent.vision.learn.split_score`; products stored before: the
    synthetic median alone, or the views' fit moved by :meth:`Calibration.shifted`).
    """
    return product.bank.calibration.threshold_at(fpr)


def fpr_for_threshold(product: Product, threshold: float) -> float:
    """The expected false-alarm rate of ``threshold``: the smallest rate that sets it this low.

    The inverse of :func:`threshold_for_fpr`, clipped to :data:`FPR_RANGE` (a threshold above
    the one for 0.1 % means "at most 0.1 %"). The threshold falls as the rate grows, except
    where few scores switch it from a normal fit to the empirical quantile, so the first
    crossing is found on a log grid and then refined by bisection.
    """
    grid = [math.exp(math.log(FPR_RANGE[0]) + i / 199 * math.log(FPR_RANGE[1] / FPR_RANGE[0])) for i in range(200)]
    crossing = next((i for i, f in enumerate(grid) if threshold_for_fpr(product, f) <= threshold), None)
    if crossing is None:
        return FPR_RANGE[1]
    if crossing == 0:
        return FPR_RANGE[0]
    lo, hi = grid[crossing - 1], grid[crossing]  # threshold(lo) > threshold >= threshold(hi)
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        if threshold_for_fpr(product, mid) > threshold:
            lo = mid
        else:
            hi = mid
    return round(hi, 6)


def set_fpr(name: str, fpr: float, workspace: PathLike | None = None) -> Product:
    """Set a registered product's threshold for a new false-alarm rate, from its stored good scores.

    The threshold and each tool's normal limit are set exactly as a registration with ``fpr``
    would set them (nothing is re-extracted), and stored as a new version (locked, atomic):
    ``iad register NAME --fpr F`` does the same.

    Raises:
        RegistrationError: ``fpr`` outside :data:`FPR_RANGE`, or an invalid name.
        ProductNotFound, ProductError: as for :func:`load_product`.
    """
    from iad_agent.workspace import Workspace

    if not FPR_RANGE[0] <= fpr <= FPR_RANGE[1]:
        raise RegistrationError(f"false-alarm rate must be between {FPR_RANGE[0]} and {FPR_RANGE[1]}, got {fpr}")
    ws = Workspace(workspace)
    if not ws.exists(name):
        raise ProductNotFound(name, ws.root, ws.products())
    return ws.set_fpr(name, float(fpr)).product


def one_off_name(folder: PathLike) -> str:
    """A valid product name for a one-off product made from ``folder``.

    >>> one_off_name("/data/good parts (line 2)")
    'good_parts_line_2'
    """
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(folder).name).strip("._-")[:64]
    return name or "product"


def _image_files(normals: PathLike | Sequence[PathLike] | None, list_images: Callable[[Path], list[Path]]) -> list[Path]:
    if normals is None:
        return []
    if isinstance(normals, (str, Path)):
        files = list_images(Path(normals))
        if not files:
            raise RegistrationError(f"{normals}: no images found (looked for .png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp)")
        return files
    files = [Path(p) for p in normals]
    if not files:
        raise RegistrationError("no good images given: a product needs at least one good image")
    return files


# ----------------------------------------------------------------------------- inspection


def make_inspector(product: Product | str, policy: str | ResolvedPolicy = DEFAULT_POLICY, *,
                   workspace: PathLike | None = None, options: VLMOptions | None = None,
                   disable_tools: Iterable[str] = (), max_steps: int = DEFAULT_MAX_STEPS) -> Inspector:
    """An :class:`~iad_agent.inspector.Inspector` to keep and call repeatedly (a service, a Ray actor).

    Args:
        product: a :class:`~iad_agent.product.Product`, or the name of a registered one.
        policy: a policy name (see :func:`resolve_policy`): ``embedded``, ``knn``,
            ``embedded-no-zoom``, ``embedded+highfreq``, ``openai``, ``hf``, ...; or a policy
            already resolved with :func:`resolve_policy` (a VLM backend is then not built again).
        workspace: where a product given by name is registered.
        options: VLM backend settings (``openai`` / ``hf``); only used with a policy name.
        disable_tools: tools to leave out (full names or aliases such as ``zoom``); only used
            with a policy name.
        max_steps: hard budget of policy turns.

    Raises:
        ProductNotFound, ProductError: a product name that cannot be loaded.
        PolicyConfigError: an unknown policy or tool, or bad backend options.
    """
    from iad_agent.inspector import Inspector

    if max_steps < 1:
        raise PolicyConfigError(f"max_steps must be at least 1, got {max_steps}")
    resolved = resolve_policy(policy, tuple(disable_tools), options) if isinstance(policy, str) else policy
    prod = load_product(product, workspace) if isinstance(product, str) else product
    return Inspector(prod, resolved.policy, resolved.tools, max_steps=max_steps)


def inspect(image: ImageInput, product: Product | str, policy: str | ResolvedPolicy = DEFAULT_POLICY, *,
            workspace: PathLike | None = None, options: VLMOptions | None = None, disable_tools: Iterable[str] = (),
            max_steps: int = DEFAULT_MAX_STEPS, sample: Sample | None = None) -> InspectionResult:
    """Inspect one image: verdict, score against the threshold, box, heat map, defect type, trace.

    Arguments as for :func:`make_inspector`; ``image`` is a file or a PIL image, ``sample`` the
    ground truth when the image comes from a dataset (kept in the trace).

    Raises:
        ImageError: the image cannot be read or is unusable; the message names the file.
        ProductNotFound, ProductError, PolicyConfigError: as for :func:`make_inspector`.
    """
    inspector = make_inspector(product, policy, workspace=workspace, options=options, disable_tools=disable_tools,
                               max_steps=max_steps)
    return inspector.inspect(image, sample)


@dataclass
class InspectionOutcome:
    """One image of :func:`inspect_many`: its result, or why it could not be inspected.

    Attributes:
        image: the image as it was given.
        result: the inspection, ``None`` when the image could not be read.
        error: the problem with the image, ``None`` when it was inspected.
    """

    image: ImageInput
    result: InspectionResult | None = None
    error: ImageError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def inspect_many(images: Iterable[ImageInput], product: Product | str, policy: str | ResolvedPolicy = DEFAULT_POLICY, *,
                 workspace: PathLike | None = None, options: VLMOptions | None = None,
                 disable_tools: Iterable[str] = (), max_steps: int = DEFAULT_MAX_STEPS) -> Iterator[InspectionOutcome]:
    """Inspect images one after the other, yielding each outcome as soon as it is known.

    The product and the policy are loaded once. An image that cannot be read is yielded
    with its :class:`ImageError` and the stream goes on; a caller can show progress and
    write results as they come, and stop early by leaving the loop.

    Raises:
        ProductNotFound, ProductError, PolicyConfigError: before the first image, as for
            :func:`make_inspector`.
    """
    inspector = make_inspector(product, policy, workspace=workspace, options=options, disable_tools=disable_tools,
                               max_steps=max_steps)
    return _outcomes(inspector, images)


def _outcomes(inspector: Inspector, images: Iterable[ImageInput]) -> Iterator[InspectionOutcome]:
    for image in images:
        try:
            yield InspectionOutcome(image, result=inspector.inspect(image))
        except ImageError as exc:
            yield InspectionOutcome(image, error=exc)
