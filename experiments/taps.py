"""Which backbone blocks are tapped for the patch features (global look; scratch).

    TAPS=4:8,7:16 IAD_LAB_CACHE=/work/taps/c47 PYTHONPATH=src:experiments OMP_NUM_THREADS=1 \
        python experiments/taps.py cats [shots] > OUT.jsonl

``TAPS``: ``block:key`` pairs of EfficientNet-Lite0 blocks (0-based) whose outputs are concatenated on
the finest one's grid (keys only order them). The package taps the last block of the stride-8 and of
the stride-16 stage, ``4:8,10:16``; block 7 ends the 80-channel half of the stride-16 stage (less
semantic, more local). Use a separate ``IAD_LAB_CACHE`` per ``TAPS`` (the cache key does not see
them). The product is registered as the package does (patch-length cap included); rows as
``window_knn.py`` (``WINDOW`` unset).
"""
import os, sys
sys.path.insert(0, 'experiments')
from iad_agent.vision import features

TAPS = {int(b): int(k) for b, k in (p.split(':') for p in os.environ.get('TAPS', '4:8,10:16').split(','))}
_init = features.EfficientNetLite.__init__


def _init_taps(self, *a, **kw):
    _init(self, *a, **kw)
    self._taps = dict(TAPS)
    self._last = max(TAPS)


features.EfficientNetLite.__init__ = _init_taps
import calib  # noqa: E402
from iad_agent.eval.runner import set_threads  # noqa: E402

set_threads(1)
cats = sys.argv[1].split(',')
shots = sys.argv[2].split(',') if len(sys.argv) > 2 else ['1', '4', 'all']
calib.print_look_rows(cats, shots, taps=os.environ.get('TAPS', '4:8,10:16'))
