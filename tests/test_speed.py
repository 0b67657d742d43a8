"""Speed work must not change results: the fast paths give what the plain ones give, on real images.

These tests check equality (up to float rounding) and memory-releasing behaviour, never timings
(timings are measured by ``iad dev bench`` and ``python -m iad_agent.eval.memory``).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def real_images(data_root):
    hazelnut = Image.open(data_root / "mvtec_ad/hazelnut/test/crack/000.png").convert("RGB")
    grid = Image.open(data_root / "mvtec_ad/grid/test/broken/000.png").convert("RGB")
    return [hazelnut, grid, hazelnut.crop((100, 200, 900, 500))]  # a non-square crop too


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1"])
def test_fused_backbone_gives_the_packaged_features(real_images, name):
    """Batch norms folded into the convolutions, paddings folded, channels-last, with torch and
    with numpy (the engine of a cold `iad inspect`): the packaged module's features."""
    from iad_agent.vision.features import EfficientNetLite, FeatureConfig, FeatureExtractor

    config = FeatureConfig(backbone=name)
    plain = FeatureExtractor(config, backbone=EfficientNetLite(name, config.strides, fused=False))
    fast = FeatureExtractor(config, backbone=EfficientNetLite(name, config.strides, engine="torch"))
    numpy_ = FeatureExtractor(config, backbone=EfficientNetLite(name, config.strides, engine="numpy"))
    assert fast.backbone._fused is not None  # the packaged layout is recognised: the fast path runs
    assert numpy_.backbone.numpy_layers is not None and fast.backbone.numpy_layers is None
    for img in real_images:
        a = plain([img])[0]
        for b in (fast([img])[0], numpy_([img])[0]):
            assert a.shape == b.shape and b.flags["C_CONTIGUOUS"] and b.dtype == np.float32
            assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    a = plain(real_images[:2])  # a batch
    for b in (fast(real_images[:2]), numpy_(real_images[:2])):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def test_numpy_weights_cache_is_rebuilt_when_damaged(tmp_path, monkeypatch, real_images):
    """The fused weights' cache file: written on first use, read back equal, rebuilt if damaged."""
    from iad_agent.vision import lite_numpy

    monkeypatch.setenv("IAD_CACHE", str(tmp_path))
    lite_numpy.fused_weights.cache_clear()
    try:
        first = lite_numpy.fused_weights("efficientnet-lite0", 10)
        (path,) = tmp_path.glob("efficientnet-lite0-fused-10-*.npz")
        lite_numpy.fused_weights.cache_clear()
        again = lite_numpy.fused_weights("efficientnet-lite0", 10)
        np.testing.assert_array_equal(first[0][1], again[0][1])
        path.write_bytes(b"not a zip")
        lite_numpy.fused_weights.cache_clear()
        rebuilt = lite_numpy.fused_weights("efficientnet-lite0", 10)
        np.testing.assert_array_equal(first[1][4][2][1], rebuilt[1][4][2][1])
        assert path.stat().st_size > 100_000
    finally:
        lite_numpy.fused_weights.cache_clear()


def test_grid_operations_equal_torch_and_scipy():
    """The numpy stand-ins for torch's interpolate / avg_pool2d and scipy's gaussian_filter / label."""
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    from iad_agent.vision import grid_ops

    rng = np.random.default_rng(0)
    for shape, sigma in [((32, 32), 0.5), ((32, 86), 0.5), ((5, 3), 3.0), ((64, 64), 1.0)]:
        x = rng.random(shape).astype(np.float32)
        np.testing.assert_allclose(grid_ops.gaussian_filter(x, sigma), ndimage.gaussian_filter(x, sigma), rtol=1e-6, atol=1e-7)
        up = F.interpolate(torch.from_numpy(x)[None, None], size=(300, 170), mode="bilinear", align_corners=False)[0, 0]
        np.testing.assert_allclose(grid_ops.upsample(x, 300, 170), up.numpy(), atol=1e-5)
        labels, _ = ndimage.label(x > 0.5)
        for seed in [(0, 0), (2, 1), (shape[0] - 1, shape[1] - 1)]:
            np.testing.assert_array_equal(grid_ops.region_at(x > 0.5, seed), labels == labels[seed])
    t = rng.random((2, 17, 9, 5)).astype(np.float32)
    nchw = torch.from_numpy(t).permute(0, 3, 1, 2)
    resized = F.interpolate(nchw, size=(34, 18), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    np.testing.assert_allclose(grid_ops.resize_bilinear(t, (34, 18)), resized.numpy(), atol=1e-6)
    pooled = F.avg_pool2d(nchw, 3, stride=1, padding=1, count_include_pad=False).permute(0, 2, 3, 1)
    np.testing.assert_allclose(grid_ops.avg_pool(t, 3), pooled.numpy(), atol=1e-6)


def test_cold_inspection_imports_neither_torch_nor_scipy(cli_workspace, data_root, tmp_path, monkeypatch):
    """A cold `iad inspect` with the packaged backbone runs on numpy: torch (~2 s to import) and
    scipy.ndimage stay out of the process, and the verdict is the in-process one."""
    import json
    import os
    import subprocess
    import sys

    from iad_agent.vision.lite_numpy import fused_weights

    monkeypatch.setenv("IAD_CACHE", str(tmp_path / "cache"))  # the subprocess inherits it
    fused_weights.cache_clear()
    fused_weights("efficientnet-lite0", 10)  # the weights cache exists (as after any registration)
    fused_weights.cache_clear()
    assert list((tmp_path / "cache").glob("efficientnet-lite0-fused-10-*.npz"))
    image = data_root / "mvtec_ad/hazelnut/test/crack/000.png"
    code = ("import json, sys\nfrom iad_agent.cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(m for m in ('torch', 'scipy.ndimage', 'matplotlib', 'transformers', "
            "'sentence_transformers') if m in sys.modules)), file=sys.stderr)")
    out_dir = cli_workspace.parent / "cold-out"
    done = subprocess.run([sys.executable, "-c", code, "inspect", str(image), "--product", "hazelnut", "--workspace",
                           str(cli_workspace), "--out-dir", str(out_dir), "--json"], capture_output=True, text=True,
                          env=dict(os.environ), check=False, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
    cold = json.loads(done.stdout)
    from iad_agent.api import inspect, load_product

    warm = inspect(image, load_product("hazelnut", cli_workspace)).to_dict()
    assert cold["anomaly_present"] == warm["anomaly_present"] and cold["box"] == warm["box"]
    assert cold["score"] == pytest.approx(warm["score"], rel=1e-4)
    assert cold["threshold"] == pytest.approx(warm["threshold"], rel=1e-6)


def _self_similarity_reference(grid, k=4, radius=2, border=2):
    """The first implementation (a boolean neighbourhood mask per chunk), kept as the reference."""
    import torch

    h, w, c = grid.shape
    x = torch.from_numpy(np.ascontiguousarray(grid.reshape(-1, c), dtype=np.float32))
    yy, xx = torch.div(torch.arange(h * w), w, rounding_mode="floor"), torch.arange(h * w) % w
    sq = (x * x).sum(1)
    kk = max(1, min(k, h * w - (2 * radius + 1) ** 2))
    d = sq[:, None] - 2 * x @ x.T + sq[None]
    near = ((yy[:, None] - yy[None]).abs() <= radius) & ((xx[:, None] - xx[None]).abs() <= radius)
    d[near] = float("inf")
    out = d.topk(kk, dim=1, largest=False).values[:, -1].clamp_min(0).sqrt().reshape(h, w).numpy()
    if border:
        out[:border], out[-border:], out[:, :border], out[:, -border:] = 0, 0, 0, 0
    return out


def test_self_similarity_map_is_unchanged(real_images):
    """The neighbourhood left out through an index table is the same as through the boolean mask."""
    from iad_agent.vision.features import FeatureExtractor
    from iad_agent.vision.normal_bank import image_score
    from iad_agent.vision.similarity import self_similarity_map

    extractor = FeatureExtractor()
    for img in real_images:
        grid = extractor([img])[0]
        expected = _self_similarity_reference(grid)
        # numpy's matrix product (no torch at inspection) rounds differently from torch's, and
        # |x|² - 2x·y + |y|² cancels for near patches: squared distances agree up to float32
        # noise on the scale of |x|² (so a distance near 0 may read 0 in one and 0.06 in the other)
        tol = 1e-5 * float((grid.astype(np.float64) ** 2).sum(-1).max())
        for got in (self_similarity_map(grid), self_similarity_map(grid, chunk=100)):
            np.testing.assert_allclose(got.astype(np.float64) ** 2, expected.astype(np.float64) ** 2, rtol=1e-4, atol=tol)
        assert image_score(self_similarity_map(grid)) == pytest.approx(image_score(expected), rel=1e-5)
    rng = np.random.default_rng(0)
    small = rng.standard_normal((7, 9, 16)).astype(np.float32)  # a grid barely larger than the neighbourhood
    np.testing.assert_allclose(self_similarity_map(small, border=0), _self_similarity_reference(small, border=0), rtol=1e-4)
    assert self_similarity_map(small, border=0).min() > 0


def test_zoom_nearest_distances_match_the_full_matrix(real_images):
    """The zoom's crop-to-references nearest distances (faiss) equal the full distance matrix's minimum."""
    from iad_agent.tools.zoom import nearest_distances
    from iad_agent.vision.features import FeatureExtractor

    grids = FeatureExtractor()(real_images[:2])
    q, refs = grids[0].reshape(-1, grids.shape[-1]), grids[1].reshape(-1, grids.shape[-1])
    full = (q**2).sum(1)[:, None] - 2 * q @ refs.T + (refs**2).sum(1)[None]
    np.testing.assert_allclose(nearest_distances(q, refs), np.sqrt(np.maximum(full.min(axis=1), 0)), rtol=1e-4, atol=1e-3)


def _coreset_reference(features, n, seed=0, proj_dim=32):
    """The first greedy coreset (fresh temporaries per selected point), kept as the reference."""
    import math

    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(features, dtype=np.float32)
    proj = rng.standard_normal((x.shape[1], proj_dim)).astype(np.float32) / np.float32(math.sqrt(proj_dim))
    x = np.ascontiguousarray(x @ proj)
    sq = (x * x).sum(1)
    selected = np.empty(n, dtype=np.int64)
    nxt = int(rng.integers(x.shape[0]))
    dist = np.full(x.shape[0], np.inf, dtype=np.float32)
    for i in range(n):
        selected[i] = nxt
        np.minimum(dist, sq - 2 * (x @ x[nxt]) + sq[nxt], out=dist)
        nxt = int(dist.argmax())
    return np.sort(selected)


def _covering_radius(features, selected, seed=0, proj_dim=32):
    """Largest distance (float64, in the coreset's projection) from a point to its nearest selected point."""
    import math

    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(features, dtype=np.float32)
    proj = rng.standard_normal((x.shape[1], proj_dim)).astype(np.float32) / np.float32(math.sqrt(proj_dim))
    x = (x @ proj).astype(np.float64)
    c = x[selected]
    d = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None]
    return float(np.sqrt(np.maximum(d.min(axis=1), 0)).max())


def test_greedy_coreset_selects_the_same_patches(real_images):
    """The transposed, in-place coreset loop picks the patches the first implementation picked,
    up to float rounding: its dot products sum in another order, so a near-tie (two patches as
    far from the set to ~1e-7) may go the other way; the coverage is the same."""
    from iad_agent.vision.features import FeatureExtractor
    from iad_agent.vision.normal_bank import greedy_coreset

    grids = FeatureExtractor()(real_images)
    flat = np.concatenate([g.reshape(-1, g.shape[-1]) for g in grids])
    for seed in (0, 1):
        got, ref = greedy_coreset(flat, 500, seed=seed), _coreset_reference(flat, 500, seed=seed)
        assert len(np.intersect1d(got, ref)) >= 0.99 * len(ref)
        assert _covering_radius(flat, got, seed) == pytest.approx(_covering_radius(flat, ref, seed), rel=2e-2)


def _assert_coreset_of(memory, origin, candidates, candidate_origin, reference_keep):
    """``memory`` holds rows of ``candidates`` (exactly, with their origin), nearly the reference coreset's."""
    where: dict[bytes, list[int]] = {}
    for i, row in enumerate(candidates):
        where.setdefault(row.tobytes(), []).append(i)
    matches = [where[row.tobytes()] for row in memory]  # a KeyError: a row that is no candidate
    assert all(o in candidate_origin[m] for o, m in zip(origin, matches))  # float16 may make two patches equal
    keep = set(reference_keep.tolist())
    assert sum(any(i in keep for i in m) for m in matches) >= 0.99 * len(keep)


def test_bank_memory_is_built_without_a_float32_copy_of_all_patches(real_images):
    """Coreset over float16 grid blocks (and incremental adds) = the coreset over their float32
    concatenation (up to a near-tie going the other way: see test_greedy_coreset_selects_the_same_patches)."""
    from iad_agent.vision.features import FeatureExtractor
    from iad_agent.vision.normal_bank import NormalBank

    grids = list(FeatureExtractor()(real_images))
    bank = NormalBank(max_patches=1500)
    bank.add(grids[:2], ["a", "b"])
    flat = np.concatenate([g.astype(np.float16).astype(np.float32).reshape(-1, g.shape[-1]) for g in grids[:2]])
    origin = np.concatenate([np.full(g.shape[0] * g.shape[1], i) for i, g in enumerate(grids[:2])])
    _assert_coreset_of(bank.memory, bank.origin, flat, origin, _coreset_reference(flat, 1500))
    assert bank.memory.dtype == np.float32 and bank.memory.flags["C_CONTIGUOUS"] and len(bank.memory) == 1500
    memory, origin = bank.memory, bank.origin
    bank.add(grids[2:], ["c"])  # incremental: the current memory plus the new grid
    third = grids[2].astype(np.float16).astype(np.float32).reshape(-1, grids[2].shape[-1])
    candidates = np.concatenate([memory, third])
    _assert_coreset_of(bank.memory, bank.origin, candidates, np.concatenate([origin, np.full(len(third), 2)]),
                       _coreset_reference(candidates, 1500))
    small = NormalBank()  # under the bound: every patch, float32
    small.add(grids[:1], ["a"])
    np.testing.assert_array_equal(small.memory, flat[: len(small.memory)])


def test_greedy_coreset_holds_one_projected_copy(real_images):
    """The coreset's working memory is one transposed 32-dim projection of all patches (plus one
    block's temporaries), not the projection's blocks, their concatenation and its transpose at once
    (with 200 good images that was 400 MB at registration's memory peak)."""
    import tracemalloc

    from iad_agent.vision.features import FeatureExtractor
    from iad_agent.vision.normal_bank import greedy_coreset

    grid = FeatureExtractor()(real_images[:1])[0].astype(np.float16)
    blocks = [grid.reshape(-1, grid.shape[-1])] * 40  # 40 images' patches, as float16 row blocks
    m = sum(len(b) for b in blocks)
    tracemalloc.start()
    try:
        greedy_coreset(blocks, 50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    projected = m * 32 * 4
    assert peak < 1.5 * projected, (peak, projected)


def test_registration_frees_decoded_images_before_the_coreset(data_root, monkeypatch):
    """Once the features are extracted, only the cache's last 16 decoded good images stay alive: through
    the coreset (registration's memory peak when they were kept) and learning."""
    import gc
    import weakref

    import iad_agent.product as product_module
    import iad_agent.registration as registration
    import iad_agent.vision.learn as learn_module
    import iad_agent.vision.normal_bank as normal_bank

    class Stop(Exception):
        pass

    made: list[weakref.ref] = []
    load_image = registration.load_image

    def recording_load_image(*args, **kwargs):
        image = load_image(*args, **kwargs)
        made.append(weakref.ref(image))
        return image

    seen = {}
    coreset = normal_bank.greedy_coreset

    def counting_coreset(*args, **kwargs):
        gc.collect()
        seen["alive_at_coreset"] = sum(r() is not None for r in made)
        return coreset(*args, **kwargs)

    def counting_learn(bank, *args, **kwargs):
        gc.collect()
        seen["alive"] = sum(r() is not None for r in made)
        seen["grid_dtypes"] = {g.dtype for g in bank.grids}
        raise Stop

    monkeypatch.setattr(registration, "load_image", recording_load_image)  # decoded again for the features
    monkeypatch.setattr(product_module, "load_image", recording_load_image)  # checked (product.iter_checked)
    monkeypatch.setattr(learn_module, "learn", counting_learn)
    monkeypatch.setattr(normal_bank, "greedy_coreset", counting_coreset)
    normals = sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:20]
    with pytest.raises(Stop):
        registration.register("hazelnut", normals)
    assert len(made) == 20
    assert seen["alive"] <= 16 and seen["alive_at_coreset"] <= 16, seen
    assert seen["grid_dtypes"] == {np.dtype(np.float16)}


def test_registration_decodes_past_its_budget_again_instead_of_holding_every_photo(data_root, monkeypatch):
    """Past ``KEEP_DECODED_BYTES`` a good image is decoded again when its turn to be extracted comes: the
    product is the same, and only the budget's images and one batch are decoded at a time (200 photos of
    4000x3000 would otherwise hold 7 GB)."""
    import gc
    import weakref

    import iad_agent.registration as registration
    from iad_agent.vision.features import FeatureExtractor

    normals = sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:12]  # more than 2 + a batch of 8
    whole = registration.register("hazelnut", normals).product
    made: list[weakref.ref] = []
    again: list[str] = []
    load_image, iter_checked = registration.load_image, registration.iter_checked

    def recording_load_image(path, *args, **kwargs):  # registration's: an image decoded again for its features
        image = load_image(path, *args, **kwargs)
        made.append(weakref.ref(image))
        again.append(str(path))
        return image

    def recording_iter_checked(*args, **kwargs):  # each image's check
        for path, image in iter_checked(*args, **kwargs):
            made.append(weakref.ref(image))
            yield path, image

    alive: list[int] = []
    call = FeatureExtractor.__call__

    def counting_call(self, images, *args, **kwargs):
        gc.collect()
        alive.append(sum(r() is not None for r in made))
        return call(self, images, *args, **kwargs)

    first = load_image(normals[0])
    monkeypatch.setattr(registration, "KEEP_DECODED_BYTES", 2 * first.width * first.height * 3)  # two images
    monkeypatch.setattr(registration, "load_image", recording_load_image)
    monkeypatch.setattr(registration, "iter_checked", recording_iter_checked)
    monkeypatch.setattr(FeatureExtractor, "__call__", counting_call)
    bounded = registration.register("hazelnut", normals).product
    assert len(made) == 12 + 10 and again == [str(p) for p in normals[2:]]  # checked once; past the budget, decoded again
    assert max(alive) <= 2 + bounded.extractor.batch_size < len(normals), alive
    np.testing.assert_array_equal(bounded.bank.memory, whole.bank.memory)
    assert bounded.bank.calibration == whole.bank.calibration and bounded.bank.scoring == whole.bank.scoring


def test_a_good_image_that_changes_before_its_second_decoding_is_named(data_root, tmp_path, monkeypatch):
    """An image past the budget is read again for its features; if its file broke meanwhile, registration
    stops with an error naming it (nothing is stored: registration returns, it never saves)."""
    import shutil

    import iad_agent.registration as registration
    from iad_agent.product import RegistrationError
    from iad_agent.vision.features import FeatureExtractor

    normals = []
    for p in sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:10]:
        normals.append(tmp_path / p.name)
        shutil.copy(p, normals[-1])
    call = FeatureExtractor.__call__

    def breaking_call(self, images, *args, **kwargs):
        normals[-1].write_bytes(b"not a png any more")
        return call(self, images, *args, **kwargs)

    monkeypatch.setattr(registration, "KEEP_DECODED_BYTES", 0)
    monkeypatch.setattr(FeatureExtractor, "__call__", breaking_call)
    with pytest.raises(RegistrationError, match=normals[-1].name):
        registration.register("hazelnut", normals)


def _texture_likeness_reference(bank, held_out=None):
    """The first texture_likeness (whole distance matrix and masks at once), kept as the reference."""
    grid = bank.grids[0].astype(np.float32)
    h, w, c = grid.shape
    flat = grid.reshape(-1, c)
    sub = flat[::3]
    d = np.sqrt(np.maximum((flat**2).sum(1)[:, None] - 2 * flat @ sub.T + (sub**2).sum(1)[None], 0))
    yy, xx = np.divmod(np.arange(h * w), w)
    near = (np.abs(yy[:, None] - yy[None, ::3]) <= 2) & (np.abs(xx[:, None] - xx[None, ::3]) <= 2)
    d[near] = np.inf
    within = float(np.quantile(d.min(axis=1), 0.9))
    across_map = bank.patch_distances(grid, exclude=0) if len(bank) > 1 else bank.patch_distances(held_out)
    return within / max(float(np.quantile(across_map, 0.9)), 1e-8)


def test_texture_likeness_in_row_chunks_is_unchanged(real_images):
    """texture_likeness computed in row chunks (bounded memory) equals the whole-matrix computation."""
    from iad_agent.product import texture_likeness
    from iad_agent.vision.features import FeatureConfig, FeatureExtractor
    from iad_agent.vision.normal_bank import NormalBank

    extractor = FeatureExtractor(FeatureConfig(resolution=320))  # 40x40 = 1600 patches: more than one chunk
    grids = list(extractor(real_images[:2]))
    bank = NormalBank(extractor.config)
    bank.add(grids, ["a", "b"])
    assert bank.grids[0].shape[0] * bank.grids[0].shape[1] > 1024
    assert texture_likeness(bank) == pytest.approx(_texture_likeness_reference(bank), rel=1e-6)


@pytest.mark.parametrize("k", [2, 32])
def test_leave_out_distances_from_one_search_equal_separate_searches(real_images, k):
    """Leave-one-out and leave-two-out maps from one k-nearest search = a search without those images
    (k = 2 forces the fallback search for patches whose neighbours are all left out)."""
    from iad_agent.vision.features import FeatureExtractor
    from iad_agent.vision.normal_bank import NormalBank

    grids = list(FeatureExtractor()(real_images[:2])) + list(FeatureExtractor()([real_images[0].rotate(90)]))
    bank = NormalBank(max_patches=2000)
    bank.add(grids, ["a", "b", "c"])
    for i in range(3):
        query = bank.grids[i].astype(np.float32)
        one, two = bank.leave_out_distances(query, [[i], [i, (i + 1) % 3]], k=k)
        np.testing.assert_allclose(one, bank.patch_distances(query, exclude=i), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(two, bank.patch_distances(query, exclude=[i, (i + 1) % 3]), rtol=1e-5, atol=1e-4)


def test_many_images_run_the_backbone_on_torch():
    """A batch of many images imports torch (its convolutions use every allowed thread); the
    packaged backbone's "auto" engine then takes it (a cold single inspection stays on numpy:
    test_cold_inspection_imports_neither_torch_nor_scipy)."""
    import sys

    from iad_agent.cli.batch import MANY_IMAGES, engine_for
    from iad_agent.vision.features import EfficientNetLite

    engine_for(MANY_IMAGES)
    assert "torch" in sys.modules
    assert EfficientNetLite("efficientnet-lite0", (8, 16)).numpy_layers is None
    assert EfficientNetLite("efficientnet-lite0", (8, 16), engine="numpy").numpy_layers is not None


def test_numpy_backbone_spreads_a_batch_over_threads_with_the_same_features(real_images, monkeypatch):
    """With two threads allowed (OMP_NUM_THREADS, set by `iad --threads` or its idle-core default)
    the numpy backbone runs a batch's images in two threads: the features do not change."""
    import concurrent.futures

    from iad_agent.vision import features as features_module
    from iad_agent.vision.features import EfficientNetLite, FeatureConfig, FeatureExtractor

    config = FeatureConfig()
    extractor = FeatureExtractor(config, backbone=EfficientNetLite(config.backbone, config.strides, engine="numpy"))
    batch = [real_images[0], real_images[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT),
             real_images[0].transpose(Image.Transpose.ROTATE_90)]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = extractor(batch)
    pools = []
    real_pool = concurrent.futures.ThreadPoolExecutor

    def counting_pool(*args, **kwargs):
        pools.append(args or kwargs)
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", counting_pool)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert features_module._threads() == 2
    two = extractor(batch)
    assert pools, "two threads allowed: the batch is spread over a thread pool"
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_numpy_backbone_spreads_images_of_different_sizes_over_threads(real_images, monkeypatch):
    """A zoom's crop and its reference crops differ in size: with two threads allowed they still
    run side by side (not one size group at a time), with each image's own features."""
    from iad_agent.vision.features import EfficientNetLite, FeatureConfig, FeatureExtractor

    config = FeatureConfig()
    extractor = FeatureExtractor(config, backbone=EfficientNetLite(config.backbone, config.strides, engine="numpy"))
    crops = [real_images[0].crop((0, 0, 300, 200)), real_images[1].crop((50, 50, 400, 450)), real_images[2]]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    alone = [extractor([c])[0] for c in crops]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    together = extractor(crops)
    assert isinstance(together, list) and len(together) == 3
    for a, b in zip(alone, together):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_zooms_run_together_give_each_zoom_alone(hazelnut_product, data_root):
    """Registration runs its calibration zooms in one extractor call: the same readings as one call each."""
    from iad_agent.tools.zoom import zoom_evidence, zoom_evidence_many
    from iad_agent.types import Box

    query = Image.open(data_root / "mvtec_ad/hazelnut/test/crack/000.png").convert("RGB")
    jobs = [(query, Box(0.3, 0.3, 0.6, 0.6), [0, 1]), (query, Box(0.0, 0.5, 0.25, 0.9), [2]),
            (hazelnut_product.reference_image(3), Box(0.4, 0.1, 0.9, 0.3), [0, 4])]
    together = zoom_evidence_many(hazelnut_product, jobs)
    for job, got in zip(jobs, together):
        alone = zoom_evidence(hazelnut_product, *job)
        assert got["map"].shape == alone["map"].shape
        assert got["score"] == pytest.approx(alone["score"], rel=1e-5)
    assert zoom_evidence_many(hazelnut_product, []) == []
