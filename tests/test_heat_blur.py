"""The heat map's blur, learned at registration from synthetic defects (issue 11, magnetic tile pixel AUROC)."""

from __future__ import annotations

import numpy as np
import pytest

from iad_agent.vision.scoring import BLURS, Scoring, choose_blur


def _maps(seed: int, n: int, blob: tuple[slice, slice] | None):
    """Noisy 32×32 patch maps; with ``blob``, that region's patches run hotter (half of them, at random)."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for _ in range(n):
        m = rng.uniform(0.0, 1.0, (32, 32)).astype(np.float32)
        mask = np.zeros((256, 256), bool)
        if blob is not None:
            hot = rng.random(m[blob].shape) < 0.5
            m[blob] += hot * 0.8
            mask[blob[0].start * 8:blob[0].stop * 8, blob[1].start * 8:blob[1].stop * 8] = True
        maps.append(m)
        masks.append(mask)
    return maps, masks


def test_a_large_patchy_defect_asks_for_more_blur_a_point_defect_for_less():
    held, _ = _maps(0, 6, None)
    large, large_masks = _maps(1, 8, (slice(4, 20), slice(6, 22)))
    sigma, aurocs = choose_blur(held, large, large_masks)
    assert sigma > BLURS[0] and aurocs[f"{sigma:g}"] > aurocs[f"{BLURS[0]:g}"], aurocs
    point, point_masks = _maps(2, 8, None)
    for m, mask in zip(point, point_masks):
        m[16, 16] += 3.0
        mask[128:136, 128:136] = True
    sigma, aurocs = choose_blur(held, point, point_masks)
    assert sigma == BLURS[0], aurocs


def test_products_saved_before_the_blur_was_learned_keep_patchcores():
    assert Scoring.from_dict({"self_weight": 0.5, "knn_level": 1.0, "self_level": 1.0, "synthetic_auroc": {}}).heat_sigma == 4.0


def test_registration_learns_the_blur_and_the_plain_map_keeps_patchcores(data_root, tmp_path):
    """Magnetic tile: the blur is chosen from synthetic defects, saved, and used by the product's heat map only."""
    from iad_agent.inspector import Inspector
    from iad_agent.policies import resolve_policy
    from iad_agent.product import Product
    from iad_agent.vision.normal_bank import upsample_map

    free = sorted((data_root / "magnetic_tile/MT_Free/Imgs").glob("*.jpg"))[:40:10]
    product = Product.build("tile", free, allow_mixed_sizes=True)
    scoring = product.bank.scoring
    assert scoring.heat_sigma in BLURS and set(scoring.blur_auroc) == {f"{b:g}" for b in BLURS}
    product.save(tmp_path / "tile")
    assert Product.load(tmp_path / "tile").bank.scoring.heat_sigma == scoring.heat_sigma
    scoring.heat_sigma = 16.0  # whatever was learned: the product's map follows it, the knn baseline's does not
    query = sorted((data_root / "magnetic_tile/MT_Blowhole/Imgs").glob("*.jpg"))[0]
    prepared = Inspector(product, resolve_policy("knn").policy, {}).prepare(query)
    w, h = prepared.image.size
    assert np.allclose(prepared.heatmap, upsample_map(prepared.look.patch_map, w, h, sigma=16.0))
    assert np.allclose(prepared.plain_heatmap, upsample_map(prepared.look.plain.patch_map, w, h, sigma=4.0))
    assert not np.allclose(prepared.heatmap, prepared.plain_heatmap) or pytest.fail("the blur changed nothing")
