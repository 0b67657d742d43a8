"""The zero-shot batch with its patch vectors' length capped, as registration caps a product's (scratch).

    ZS_CLIP=0.75 PYTHONPATH=src:experiments python experiments/zeroshot_clip.py eval --dataset all --shots 0 --seeds 1 \
        --max-test 150 --policy zero-shot --policy zero-shot-mutual --policy zero-shot-self --workers 1 --out OUT
    ZS_CLIP=0.75 PYTHONPATH=src:experiments python experiments/zeroshot_clip.py elpv          # zeroshot_elpv.py's batch

``ZS_CLIP=q``: every smoothed grid of the batch is capped at the ``q`` quantile of the batch's patch
lengths (all its images: most parts of a batch are good) before mutual scoring and self-similarity;
0 or unset: the package as it is. ``eval`` runs ``iad eval`` in this process (so ``--workers 1``).
"""
import os
import sys

from iad_agent import zeroshot
from iad_agent.vision.features import clip_length_of, clip_lengths

Q = float(os.environ.get("ZS_CLIP", "0") or 0)
_batch_maps = zeroshot.batch_maps


def capped_batch_maps(grids, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
    if Q:
        length = clip_length_of(grids, Q, max_grids=len(grids))
        grids = [clip_lengths(g, length) for g in grids]
    return _batch_maps(grids, *args, **kwargs)


zeroshot.batch_maps = capped_batch_maps

if __name__ == "__main__":
    if sys.argv[1] == "elpv":
        sys.argv = sys.argv[:1] + sys.argv[2:]
        sys.path.insert(0, os.path.dirname(__file__))
        import zeroshot_elpv

        zeroshot_elpv.batch_maps = capped_batch_maps
        zeroshot_elpv.main()
    else:
        from iad_agent.cli import app

        app()
