"""Where a region of the query lies on a good reference part that lies or is shaped differently.

The comparative retriever compares a region with the *same image position* of the nearest good
part. When parts lie shifted or differ in shape (hazelnuts), that position can show another
part of the object (the cap instead of the shell). :func:`corresponding_box` finds the region
of the reference that corresponds to the query's, by the patch features the inspector already
has: each feature cell in a ring around the region (the region itself holds the defect, which
the good part lacks) is matched to its nearest cell anywhere on the reference, and the region
moves by the median of those displacements. The HTML report shows that region and says so.

Image-level alignment (rotation and shift by cross-correlation) was tried first and rejected:
on hazelnuts it was pulled onto the dark cap by the dark hole, on transistors it turned the
part upside down; the features' nearest neighbours follow the part, not its brightness.
"""

from __future__ import annotations

import numpy as np

from iad_agent.types import Box


def corresponding_box(query_grid: np.ndarray, reference_grid: np.ndarray, box: Box) -> tuple[Box, float]:
    """The region of the reference that corresponds to ``box`` of the query.

    Args:
        query_grid / reference_grid: ``(g, g, C)`` patch features of the two images.
        box: the query's region, normalized.

    Returns:
        The shifted box (the same box when the median displacement is zero), and the
        share of the ring's cells whose own displacement agrees with the median within one
        cell (how consistent the correspondence is).

    >>> g = np.random.default_rng(0).normal(size=(16, 16, 8)).astype(np.float32)
    >>> moved, agree = corresponding_box(g, np.roll(g, 3, axis=1), Box(0.25, 0.25, 0.5, 0.5))
    >>> round(moved.x1 - 0.25, 4), round(moved.y1 - 0.25, 4), agree > 0.9
    (0.1875, 0.0, True)
    """
    g = query_grid.shape[0]
    l, t, r, b = box.to_pixels(g, g)
    bw, bh = r - l, b - t
    ys, xs = np.mgrid[max(0, t - bh):min(g, b + bh), max(0, l - bw):min(g, r + bw)]
    ring = ~((ys >= t) & (ys < b) & (xs >= l) & (xs < r))
    ys, xs = ys[ring], xs[ring]
    if len(ys) < 4:
        return box, 0.0
    q = query_grid[ys, xs].astype(np.float32)
    ref = reference_grid.reshape(-1, reference_grid.shape[-1]).astype(np.float32)
    nearest = ((q**2).sum(1)[:, None] - 2 * q @ ref.T + (ref**2).sum(1)[None]).argmin(axis=1)
    ny, nx = np.divmod(nearest, reference_grid.shape[1])
    dx, dy = float(np.median(nx - xs)), float(np.median(ny - ys))
    agree = float(np.mean((np.abs(nx - xs - dx) <= 1) & (np.abs(ny - ys - dy) <= 1)))
    if dx == 0 and dy == 0:
        return box, agree
    return Box(box.x1 + dx / g, box.y1 + dy / g, box.x2 + dx / g, box.y2 + dy / g).clamped(), agree
