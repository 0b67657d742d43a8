"""The zero-shot batch's patch-length cap on the unseen ELPV cells, on and off (scratch).

    ZS_CLIP=0.75 PYTHONPATH=src:experiments python experiments/zeroshot_clip.py    # the package's cap
    ZS_CLIP=0 PYTHONPATH=src:experiments python experiments/zeroshot_clip.py       # uncapped

``zeroshot_elpv.py``'s batch (100 good + 100 defective cells, brightness matching off and on),
with ``ZeroShotSettings.clip_quantile`` set to ``ZS_CLIP`` (default: the package's,
``CLIP_QUANTILE``). On the dev categories the same comparison is ``iad eval --shots 0 --policy
zero-shot --policy zero-shot-no-clip``.
"""
import dataclasses
import os
import sys

from iad_agent import zeroshot
from iad_agent.vision.features import CLIP_QUANTILE

sys.path.insert(0, os.path.dirname(__file__))
import zeroshot_elpv  # noqa: E402

Q = float(os.environ.get("ZS_CLIP", CLIP_QUANTILE))


def batch_maps_at_q(grids, settings=zeroshot.ZeroShotSettings(), *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
    return zeroshot.batch_maps(grids, dataclasses.replace(settings, clip_quantile=Q), *args, **kwargs)


if __name__ == "__main__":
    zeroshot_elpv.batch_maps = batch_maps_at_q
    zeroshot_elpv.main()
