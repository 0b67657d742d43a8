"""The few-shot threshold rule: a prior on how good parts' scores spread, measured once across products.

A threshold for "a fraction ``fpr`` of good parts exceed it" needs the upper tail of good parts'
scores, and registration sees at most 8 held-out good scores — or, with one good image, scores
of its augmented views, which are easier than other good parts. The packaged prior
(``iad_agent/data/threshold_prior.json``) says how far the tail lies in a typical product; it
was measured with ``experiments/calib.py`` and ``experiments/thresholds.py`` on good training
images only (the file names the command), and it is stored with every calibration
(:class:`iad_agent.vision.normal_bank.Calibration`) so a product's threshold does not move under
a newer package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

#: Packaged constants of the few-shot threshold rule (:func:`prior_threshold`), measured once.
THRESHOLD_PRIOR_FILE = "threshold_prior.json"
#: The constants of one score kind (``global``: the product's scoring; ``knn``: plain nearest neighbour).
PRIOR_KEYS = ("view_shift", "view_sigma", "loo_shift", "sigma", "nu0")


def threshold_prior() -> dict:
    """The packaged threshold prior ``{"version", "global": {...}, "knn": {...}}``.

    The constants live in ``iad_agent/data/threshold_prior.json``, which says how and with which
    command they were measured; a calibration stores the copy it used, so a stored product's
    threshold never changes under a newer package.

    Raises:
        ValueError: the packaged file lacks a constant or holds a non-finite one (a broken install).
    """
    from importlib import resources

    path = resources.files("iad_agent") / "data" / THRESHOLD_PRIOR_FILE
    data = json.loads(path.read_text())
    out: dict = {"version": data.get("version")}
    bad = [] if isinstance(out["version"], int) else ["version"]
    for kind in ("global", "knn"):
        consts = data.get(kind) if isinstance(data.get(kind), dict) else {}
        out[kind] = {k: consts.get(k) for k in PRIOR_KEYS}
        bad += [f"{kind}.{k}" for k, v in out[kind].items()
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise ValueError(f"{path}: threshold prior constants missing or not finite: {', '.join(bad)}")
    return out


def prior_threshold(scores: Sequence[float], fpr: float, prior: dict[str, float], views: bool = False,
                    bank_size_factor: float = 1.0) -> float:
    """Threshold for false-alarm rate ``fpr`` from a few held-out good scores and a measured prior.

    Good parts' scores are taken as log-normal. With one good image (``views``: augmented views
    scored against it) the views are easier than other good parts by a factor the views
    cannot show: the centre is the views' median log score plus ``view_shift`` and the spread
    is ``view_sigma``, both measured across products. With leave-one-out scores the centre is
    their mean log score, carried to the full bank by ``bank_size_factor`` (plus
    ``loo_shift``), and the spread is the held-out scores' own, shrunk toward the products'
    typical spread ``sigma`` with the weight of ``nu0`` pseudo-scores (normal-inverse-χ²); the
    predictive spread adds the centre's uncertainty (``√(1 + 1/n)``). The threshold is the
    ``1 − fpr`` quantile of that normal on the log scale, so it falls strictly as ``fpr`` grows.

    >>> p = {"view_shift": 0.0, "view_sigma": 0.1, "loo_shift": 0.0, "sigma": 0.1, "nu0": 4.0}
    >>> round(prior_threshold([1.0], 0.5, p, views=True), 4)
    1.0
    """
    s = np.log(np.maximum(np.asarray(scores, dtype=np.float64), 1e-12))
    if s.size == 0:
        raise ValueError("no calibration scores")
    z = NormalDist().inv_cdf(1 - fpr)
    if views:
        return float(math.exp(float(np.median(s)) + prior["view_shift"] + z * prior["view_sigma"]))
    n, nu0 = s.size, prior["nu0"]
    var = (nu0 * prior["sigma"] ** 2 + (n - 1) * (float(s.var(ddof=1)) if n > 1 else 0.0)) / (nu0 + n - 1)
    centre = float(s.mean()) + math.log(max(bank_size_factor, 1e-12)) + prior["loo_shift"]
    return float(math.exp(centre + z * math.sqrt(var * (1 + 1 / n))))
