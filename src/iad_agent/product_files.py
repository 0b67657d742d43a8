"""The files of a stored product version: writing them, and reading them back validated.

A version folder holds::

    bank/bank.npz, bank/bank.json   the normal bank (``NormalBank.save``): feature grids, coreset, calibration
    gate.json                       the embedded policy's gate parameters
    limits.json                     each tool's calibrated normal limit (before: in gate.json)
    good_images.json                content hash and date of each good image (parallel to the bank's paths)
    priors.json, defects.npy/.json  optional: priors, labelled defect examples (and the similarity a type must exceed)
    text_index.npz                  optional: embedded defect descriptions and evidence words (``defect_types``)
    tools.json                      optional: the tools' calibration readings
    product.json                    written last: name, image size, dates, and a summary for listings

Every file is checked on load: a missing, empty, truncated or wrongly typed file raises
:class:`~iad_agent.product.DamagedProduct` naming it and saying how to repair the product,
never a bare decoder traceback or a product that answers ``null``. A version found incomplete
(a file missing) gives way to the previous complete version, with a warning.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from iad_agent import store
from iad_agent.errors import DamagedProduct, ProductError, ProductNotFound

if TYPE_CHECKING:  # imported where used: reading a summary (``iad products``) needs neither numpy nor PIL
    from iad_agent.product import DefectExamples, Product

DEFAULT_MAX_SIDE = 4096  # as ``imageio.DEFAULT_MAX_SIDE``: products stored before max_side was kept

log = logging.getLogger(__name__)

FORMAT = 2  # 1: before versions, content hashes and summaries were stored
#: What ``write_product`` writes (or leaves out on purpose); any other file in a version (e.g. a
#: learned gate installed there) is carried over into the next version.
OWN_FILES = frozenset({"bank", "gate.json", "limits.json", "good_images.json", "priors.json", "defects.npy", "defects.json",
                       "tools.json", "text_index.npz", store.MARKER})


class _Missing(Exception):
    """A file of the version is missing: the version is incomplete."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path}: missing")
        self.path = path


def repair_hint(name: str) -> str:
    return (f"The stored product {name!r} is damaged; remove it with `iad products rm {name} --yes` and register it "
            f"again with `iad register {name} --normals DIR`.")


def _damaged(path: Path, name: str, problem: str) -> DamagedProduct:
    return DamagedProduct(f"{path}: {problem}. {repair_hint(name)}")


# ----------------------------------------------------------------------- writing
def _json_text(data: Any) -> str:
    return json.dumps(data, indent=1, allow_nan=False)


def write_product(product: Product, folder: Path) -> None:
    """Write every file of ``product`` into the new version folder ``folder`` (``product.json`` last)."""
    import numpy as np

    from iad_agent.imageio import atomic_write_bytes, atomic_write_text

    product.bank.save(folder / "bank")
    atomic_write_text(folder / "gate.json", _json_text(asdict(product.gate)))
    atomic_write_text(folder / "limits.json", _json_text(product.tool_limits.to_dict()))
    atomic_write_text(folder / "good_images.json", _json_text({"sha256": product.image_hashes, "added": product.image_added}))
    if product.priors:
        atomic_write_text(folder / "priors.json", _json_text(product.priors))
    if product.defects.signatures is not None:
        buf = io.BytesIO()
        np.save(buf, product.defects.signatures)
        atomic_write_bytes(folder / "defects.npy", buf.getvalue())
        atomic_write_text(folder / "defects.json", _json_text({"types": product.defects.types, "paths": product.defects.paths,
                                                               "sha256": product.defect_hashes,
                                                               "min_similarity": product.defects.min_similarity}))
    if product.text_index is not None:
        buf = io.BytesIO()
        index = product.text_index
        np.savez(buf, texts=np.array(index.texts, dtype=str), vectors=index.vectors.astype(np.float32),
                 min_similarity=np.array(np.nan if index.min_similarity is None else index.min_similarity))
        atomic_write_bytes(folder / "text_index.npz", buf.getvalue())
    if product.tool_readings:
        atomic_write_text(folder / "tools.json", _json_text(product.tool_readings))
    cal = product.bank.calibration
    atomic_write_text(folder / store.MARKER, _json_text({
        "format": FORMAT,
        "name": product.name,
        "max_side": product.max_side,
        "image_size": list(product.image_size) if product.image_size else None,
        "created": product.created,
        "updated": product.updated,
        "summary": {
            "images": len(product.bank),
            "threshold": cal.threshold if cal else None,
            "fpr": cal.fpr if cal else None,
            "method": cal.method if cal else None,
            "labelled_defect_types": sorted(set(product.defects.types)),
            "defect_types": product.defect_types,
        },
    }))


# ----------------------------------------------------------------------- reading
def read_product(pointer: Path) -> Product:
    """Load the current version stored at ``pointer`` (falling back past an incomplete one).

    Raises:
        ProductNotFound: nothing stored there.
        DamagedProduct: a file is damaged (or every version is incomplete).
    """
    src = store.current(pointer)
    if src is None:
        raise ProductNotFound(pointer.name, pointer.parent.parent, store.names(pointer.parent))
    tried = []
    while src is not None:
        try:
            product = _read(pointer, src)
        except _Missing as exc:
            tried.append(src)
            now = store.current(pointer)  # a writer may have replaced the version while it was read
            if now is not None and now not in tried:
                src = now
                continue
            older = [p for _, p in reversed(store.versions(pointer)) if p not in tried and (p / store.MARKER).is_file()]
            if not older:
                raise _damaged(exc.path, pointer.name, "is missing") from None
            log.warning("%s: stored product %r is incomplete (%s missing); using its previous version %s",
                        pointer, pointer.name, exc.path.name, older[0].name)
            src = older[0]
            continue
        product.folder, product.version = pointer, src.name
        return product
    raise ProductNotFound(pointer.name, pointer.parent.parent, store.names(pointer.parent))


def read_json(path: Path, name: str, kind: type = dict) -> Any:
    """A JSON file's content, of type ``kind``; ``_Missing`` when absent, ``DamagedProduct`` when unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _Missing(path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _damaged(path, name, f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if not text.strip():
        raise _damaged(path, name, "is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _damaged(path, name, f"is not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, kind):
        raise _damaged(path, name, f"should hold a JSON {'object' if kind is dict else 'list'}, not {type(data).__name__}")
    return data


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_record(cls: type, data: dict, path: Path, name: str) -> Any:
    """Build dataclass ``cls`` from ``data``, refusing values whose type differs from the field's default.

    Missing fields take their defaults (older products); unknown keys are ignored (newer ones).
    Numbers must be finite; ``*_threshold`` limits positive; ``w_*`` weights not negative.
    """
    for f in fields(cls):
        if f.name not in data:
            continue
        v, default = data[f.name], f.default
        if isinstance(default, bool):
            ok, want = isinstance(v, bool), "true or false"
        elif isinstance(default, (int, float)):
            ok, want = _number(v), "a finite number"
            if ok and f.name.endswith("_threshold") and v <= 0:
                ok, want = False, "a positive number"
            elif ok and f.name.startswith("w_") and v < 0:
                ok, want = False, "a number ≥ 0"
        elif isinstance(default, str):
            ok, want = isinstance(v, str), "a string"
        else:
            ok, want = True, ""
        if not ok:
            raise _damaged(path, name, f"{f.name!r} is {json.dumps(v)}, should be {want}")
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _read_meta(src: Path, name: str) -> dict:
    meta = read_json(src / store.MARKER, name)
    if not isinstance(meta.get("name"), str):
        raise _damaged(src / store.MARKER, name, "has no product name")
    max_side, size = meta.get("max_side", DEFAULT_MAX_SIDE), meta.get("image_size")
    if not (isinstance(max_side, int) and max_side >= 8) or not (
            size is None or (isinstance(size, list) and len(size) == 2 and all(isinstance(x, int) and x > 0 for x in size))):
        raise _damaged(src / store.MARKER, name, "has a wrong max_side or image_size")
    return meta


def _read(pointer: Path, src: Path) -> Product:
    from iad_agent.product import GateParams, Product
    from iad_agent.tools.base import ToolLimits

    name = pointer.name
    meta = _read_meta(src, name)
    max_side, size = meta.get("max_side", DEFAULT_MAX_SIDE), meta.get("image_size")
    gate_dict = read_json(src / "gate.json", name)
    gate = check_record(GateParams, gate_dict, src / "gate.json", name)
    if (src / "limits.json").exists():
        limits = check_record(ToolLimits, read_json(src / "limits.json", name), src / "limits.json", name)
    else:  # stored before limits.json: the limits were gate parameters
        limits = check_record(ToolLimits, gate_dict, src / "gate.json", name)
    bank = _read_bank(src / "bank", name)
    priors = {}
    if (src / "priors.json").exists():
        priors = read_json(src / "priors.json", name)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in priors.items()):
            raise _damaged(src / "priors.json", name, "should map names to texts (strings)")
    defects, defect_hashes = _read_defects(src, name, bank.memory.shape[1])
    product = Product(meta["name"], bank, gate, pointer, defects, priors, max_side, tuple(size) if size else None, limits)
    if (src / "good_images.json").exists():
        info = read_json(src / "good_images.json", name)
        hashes, added = info.get("sha256"), info.get("added")
        if not (isinstance(hashes, list) and isinstance(added, list) and len(hashes) == len(added) == len(bank)):
            raise _damaged(src / "good_images.json", name, f"should list {len(bank)} good images like the bank does")
        product.image_hashes, product.image_added = hashes, added
    if defect_hashes is not None:
        product.defect_hashes = defect_hashes
    if (src / "tools.json").exists():
        product.tool_readings = read_json(src / "tools.json", name)
    if (src / "text_index.npz").exists():
        product.text_index = _read_text_index(src / "text_index.npz", name)
    product.created, product.updated = meta.get("created"), meta.get("updated")
    return product


def _read_bank(folder: Path, name: str):
    from iad_agent.vision.features import FeatureConfig
    from iad_agent.vision.normal_bank import NormalBank

    meta_path, arrays_path = folder / "bank.json", folder / "bank.npz"
    meta = read_json(meta_path, name)
    if not arrays_path.is_file():
        raise _Missing(arrays_path)
    if not (isinstance(meta.get("config"), dict) and _strings(meta.get("paths")) and meta["paths"]
            and isinstance(meta.get("max_patches"), int) and isinstance(meta.get("seed"), int)):
        raise _damaged(meta_path, name, "lacks the feature config, the good images' paths or the bank settings")
    try:
        config = FeatureConfig.from_dict(meta["config"])
    except Exception as exc:  # noqa: BLE001 - any bad config is the file's fault
        raise _damaged(meta_path, name, f"has an unusable feature config ({exc})") from None
    problem = config.spec.problem() if config.spec is not None else None
    if problem:  # a custom backbone (--backbone) that is gone or replaced: the stored features would not match
        raise ProductError(f"{meta_path}: product {name!r} cannot be loaded: {problem}; put the model back there, "
                           f"or register the product again with another --backbone")
    cal = meta.get("calibration")
    known = {"fpr", "method", "global_scores", "aligned_scores", "patch_threshold",
             "knn_scores", "knn_patch_threshold", "bank_size_factor", "knn_bank_size_factor",  # these four: issue 11
             "views_shift", "synthetic_median", "synthetic_level", "split_score",  # one good image's threshold
             "prior_spread"}  # 2-7 good images: the spread of good scores is not measured
    if not isinstance(cal, dict) or set(cal) - known:
        raise _damaged(meta_path, name, "has no usable calibration")
    scores_ok = all(isinstance(cal.get(k), list) and cal[k] and all(_number(x) for x in cal[k])
                    for k in ("global_scores", "aligned_scores"))
    if not (scores_ok and _number(cal.get("fpr")) and 0 < cal["fpr"] < 1 and _number(cal.get("patch_threshold"))
            and cal["patch_threshold"] > 0 and isinstance(cal.get("method"), str)
            and _number(cal.get("prior_spread", 0.0)) and 0 <= cal.get("prior_spread", 0.0) < 1
            and _number(cal.get("synthetic_level", 0.0)) and cal.get("synthetic_level", 0.0) >= 0
            and _number(cal.get("split_score", 0.0)) and cal.get("split_score", 0.0) >= 0):
        raise _damaged(meta_path, name, "has a calibration with missing, non-finite or out-of-range values")
    try:
        bank = NormalBank.load(folder)
        grids, memory, origin = bank.grids, bank.memory, bank.origin
        # grids: one (h, w, C) array per good image; shapes differ when the aspect ratio is kept
        ok = (len(grids) == len(bank.paths) and all(g.ndim == 3 and min(g.shape[:2]) > 0 for g in grids)
              and memory.ndim == 2 and memory.shape[0] > 0 and all(g.shape[2] == memory.shape[1] for g in grids)
              and origin.shape == (memory.shape[0],) and 0 <= int(origin.min()) and int(origin.max()) < len(bank.paths))
    except Exception as exc:  # noqa: BLE001 - a truncated zip raises BadZipFile, EOFError, ValueError, ...
        raise _damaged(arrays_path, name, f"cannot be read ({type(exc).__name__}: {exc})") from None
    if not ok:
        raise _damaged(arrays_path, name, f"holds arrays that do not match the {len(bank.paths)} good images of bank.json")
    threshold = bank.calibration.threshold
    if not (math.isfinite(threshold) and threshold > 0):
        raise _damaged(meta_path, name, f"gives a threshold of {threshold:g}")
    return bank


def _read_defects(src: Path, name: str, dim: int) -> tuple[DefectExamples | None, list | None]:
    import numpy as np

    from iad_agent.product import DefectExamples

    npy, js = src / "defects.npy", src / "defects.json"
    if not npy.exists() and not js.exists():
        return None, None
    d = read_json(js, name)
    if not npy.exists():
        raise _Missing(npy)
    if not (_strings(d.get("types")) and _strings(d.get("paths")) and len(d["types"]) == len(d["paths"])):
        raise _damaged(js, name, "should list a type and a path per defect example")
    try:
        sigs = np.load(npy, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise _damaged(npy, name, f"cannot be read ({type(exc).__name__}: {exc})") from None
    if sigs.shape != (len(d["types"]), dim) or not np.isfinite(sigs).all():
        raise _damaged(npy, name, f"should hold {len(d['types'])} finite signatures of size {dim}")
    hashes = d.get("sha256")
    if hashes is not None and not (isinstance(hashes, list) and len(hashes) == len(d["types"])):
        raise _damaged(js, name, "has a sha256 list that does not match its examples")
    limit = d.get("min_similarity")
    if limit is not None and not _number(limit):
        raise _damaged(js, name, f"'min_similarity' is {json.dumps(limit)}, should be a finite number or null")
    return DefectExamples(d["types"], sigs.astype(np.float32), d["paths"], limit), hashes


def _read_text_index(path: Path, name: str):  # noqa: ANN202 - a defect_types.TextIndex
    import numpy as np

    from iad_agent.defect_types import TextIndex

    try:
        with np.load(path, allow_pickle=False) as z:
            texts, vectors, limit = [str(t) for t in z["texts"]], z["vectors"].astype(np.float32), float(z["min_similarity"])
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise _damaged(path, name, f"cannot be read ({type(exc).__name__}: {exc})") from None
    if vectors.ndim != 2 or vectors.shape[0] != len(texts) or not np.isfinite(vectors).all():
        raise _damaged(path, name, f"should hold one finite vector per text ({len(texts)})")
    return TextIndex(texts, vectors, None if math.isnan(limit) else limit)


def read_summary(pointer: Path, good_images: bool = False) -> dict:
    """What ``iad products`` shows, read without loading the bank's arrays (fast).

    Returns a dict with ``name, images, threshold, fpr, method, defect_types,
    labelled_defect_types, created, updated, version, folder`` (and ``good_images``, their
    paths, when asked), or ``error`` (the damage) when the product cannot be read.
    """
    src = store.current(pointer)
    out: dict[str, Any] = {"name": pointer.name, "folder": str(pointer), "version": store.version_of(src)}
    try:
        if src is None:
            raise _Missing(pointer / store.MARKER)
        meta = _read_meta(src, pointer.name)
        summary = meta.get("summary")
        if not isinstance(summary, dict):  # stored before summaries were kept
            summary = _legacy_summary(src, pointer.name)
        out.update({k: summary.get(k) for k in ("images", "threshold", "fpr", "method", "defect_types", "labelled_defect_types")})
        out["created"], out["updated"] = meta.get("created"), meta.get("updated")
        if good_images:
            paths = read_json(src / "bank" / "bank.json", pointer.name).get("paths")
            out["good_images"] = paths if _strings(paths) else None
        if out["updated"] is None:
            from datetime import datetime, timezone

            out["updated"] = datetime.fromtimestamp((src / store.MARKER).stat().st_mtime, timezone.utc).replace(microsecond=0).isoformat()
    except (_Missing, DamagedProduct) as exc:
        out["error"] = str(exc).split(". The stored product")[0] if isinstance(exc, DamagedProduct) else f"{exc.path}: missing"
    return out


def _legacy_summary(src: Path, name: str) -> dict:
    bank = read_json(src / "bank" / "bank.json", name)
    cal = bank.get("calibration") or {}
    threshold = None
    if cal.get("global_scores") and _number(cal.get("fpr")):
        from iad_agent.vision.normal_bank import threshold_for_fpr

        threshold = threshold_for_fpr(cal["global_scores"], cal["fpr"])
    labelled = sorted(set(read_json(src / "defects.json", name).get("types", []))) if (src / "defects.json").exists() else []
    priors = read_json(src / "priors.json", name) if (src / "priors.json").exists() else {}
    described = [k for k in priors if k not in ("good", "normal") and k not in labelled]
    return {"images": len(bank.get("paths") or []), "threshold": threshold, "fpr": cal.get("fpr"), "method": cal.get("method"),
            "defect_types": labelled + described, "labelled_defect_types": labelled}
