"""Scaling feature channels before every distance (global look; scratch).

    PYTHONPATH=src:experiments IAD_LAB_CACHE=/work/coarse/cache python experiments/feature_scale.py VARIANT cats > OUT.jsonl

VARIANT: ``base``; ``s8=A`` (the stride-8 stage's channels × A, every product); ``zstd`` (each channel
÷ its standard deviation over the references' patches, per product); ``zsqrt`` (÷ its square root);
``clip`` (the package's patch-length cap, ``FeatureConfig.clip_length`` at the ``L2Q`` quantile of the
references' smoothed patch lengths, default ``CLIP_QUANTILE``; the product's config carries it, so
the package itself caps every smoothed grid and leaves the self term's unsmoothed grid alone; ``base``
is the lab's uncapped product, i.e. ``embedded-no-clip``); ``clipraw``: ``clip``, and the self term's
unsmoothed grids capped too, at the ``RAWQ`` quantile (default 0.75) of the references' unsmoothed
patch lengths (not in the package).
The scale is applied to every grid the product sees (references, held-out, synthetic defects, test
images; smoothed and unsmoothed), as a package change would. Rows as ``look_check.py``.
``NOFLOOR=1``: the self weight may be 0 again (before ``learn.MIN_SELF_WEIGHT``; the scale variants
of ``experiments/README.md`` were measured so). ``EXTRA_GOOD=40``: also score up to 40 good images of
the category's pool that are not references (1 and 4 shots only), for products with few good test
images.
"""
import os, sys, json, numpy as np
sys.path.insert(0, 'experiments')
import calib
from iad_agent.eval.runner import set_threads
from iad_agent.vision import features

set_threads(1)
variant, cats = sys.argv[1], sys.argv[2].split(',')
SCALE = {'v': None}


def apply(g):
    if SCALE['v'] is None:
        return g
    if isinstance(g, list):
        return [apply(x) for x in g]
    return (np.asarray(g, np.float32) * SCALE['v']).astype(np.float32)


_call = features.FeatureExtractor.__call__
features.FeatureExtractor.__call__ = lambda self, images: apply(_call(self, images))
_grid_of = calib.grid_of
calib.grid_of = lambda path, config: apply(_grid_of(path, config))
RAW_CAP = {'v': 0.0}  # clipraw: the cap of the unsmoothed grids (0: none)
if variant == 'clipraw':
    _with_raw = features.FeatureExtractor.with_raw

    def _capped_raw(self, images):
        grids, raw = _with_raw(self, images)
        return grids, [features.clip_lengths(r, RAW_CAP['v']) for r in raw]

    features.FeatureExtractor.with_raw = _capped_raw
    _grid_scaled = calib.grid_of
    calib.grid_of = lambda path, config: (features.clip_lengths(_grid_scaled(path, config), RAW_CAP['v'])
                                          if config.smooth == 1 else _grid_scaled(path, config))


if os.environ.get('NOFLOOR'):  # the self weight chosen among 0 … 1, as before learn.MIN_SELF_WEIGHT
    from iad_agent.vision import learn as learn_module
    from iad_agent.vision.scoring import WEIGHTS
    learn_module.SELF_WEIGHTS = WEIGHTS


def scale_for(refs, config):
    c = 152
    if variant in ('base', 'clip', 'clipraw'):
        return None
    if variant.startswith('s8='):
        s = np.ones(c, np.float32); s[:40] = float(variant[3:]); return s
    SCALE['v'] = None
    f = np.concatenate([_grid_of(p, config).reshape(-1, c) for p in refs[:16]])
    sd = f.std(0) + 1e-3
    s = 1 / sd if variant == 'zstd' else 1 / np.sqrt(sd)
    return (s / np.sqrt((s ** 2 * sd ** 2).sum() / (sd ** 2).sum())).astype(np.float32)  # keep the total variance


EXTRA = int(os.environ.get('EXTRA_GOOD', '0'))  # also score up to this many other good images of the pool (never references)
pools = {c: pool for c, pool, _ in calib.categories(cats, True, 100)} if EXTRA else {}
for cat, k, seed, refs, test, y in calib.groups(cats, True, 100, ['1', '4'] if EXTRA else ['1', '4', 'all']):
    if EXTRA:
        from iad_agent.types import Sample
        from iad_agent.eval.plan import evenly_spaced
        more = evenly_spaced([p for p in pools[cat] if p not in set(refs)], EXTRA)
        test = list(test) + [Sample(p, cat, 0) for p in more]
        y = np.concatenate([y, np.zeros(len(more), int)])
    c3 = calib.package_config(refs)
    if variant in ('clip', 'clipraw'):  # registration's cap (registration._cap_lengths), from the uncapped good grids
        import dataclasses
        q = float(os.environ.get('L2Q', features.CLIP_QUANTILE))
        if variant == 'clipraw':
            raw_config = dataclasses.replace(c3, smooth=1)
            RAW_CAP['v'] = features.clip_length_of([_grid_of(p, raw_config) for p in refs[:16]],
                                                   float(os.environ.get('RAWQ', 0.75)))
        c3 = dataclasses.replace(c3, clip_length=features.clip_length_of([_grid_of(p, c3) for p in refs[:16]], q))
    SCALE['v'] = scale_for(refs, c3)
    calib._self_cache.clear()
    print(json.dumps(dict(variant=variant, cat=cat, shots=str(k), seed=seed, **calib.look_row(refs, test, y, c3))), flush=True)
