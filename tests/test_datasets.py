"""Tests for the dataset readers: real data from shared/data plus small synthetic trees."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iad_agent.datasets import (
    READERS,
    DatasetError,
    data_root,
    list_categories,
    load_dataset,
    read_deeppcb,
    read_folder,
    read_kolektor,
    read_loco,
    read_magnetic_tile,
    read_mvtec,
    read_visa,
)
from iad_agent.types import ANOMALOUS, NORMAL


# --------------------------------------------------------------------------- helpers


def _real(sub: str) -> Path:
    try:
        root = data_root()
    except DatasetError as exc:
        pytest.skip(f"real data not available: {exc}")
    if not (root / sub).is_dir():
        pytest.skip(f"real data folder {root / sub} not present")
    return root / sub


def _img(path: Path, size: tuple[int, int] = (32, 24), value: int = 0, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def _mask(path: Path, size: tuple[int, int] = (32, 24), box: tuple[int, int, int, int] | None = (4, 4, 10, 10)) -> Path:
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    if box is not None:
        x1, y1, x2, y2 = box
        arr[y1:y2, x1:x2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _mvtec_tree(root: Path, category: str = "widget", good: str = "good", defect: str = "scratch",
                name: str = "{:03d}", ext: str = ".png", mask: str = "{}_mask.png") -> Path:
    """3 train good, 1 test good and 2 defective images with masks; names as MVTec AD's unless given."""
    cat = root / category
    for i in range(3):
        _img(cat / "train" / good / f"{name.format(i)}{ext}")
    _img(cat / "test" / good / f"{name.format(0)}{ext}")
    for i in range(2):
        _img(cat / "test" / defect / f"{name.format(i)}{ext}")
        _mask(cat / "ground_truth" / defect / mask.format(name.format(i)))
    return root


def _assert_sorted(samples) -> None:
    paths = [str(s.image_path) for s in samples]
    assert paths == sorted(paths)


# --------------------------------------------------------------------------- real data

MVTEC_EXPECTED = {
    "grid": (
        {"train": 40, "test": 78},
        {"bent": 12, "broken": 12, "glue": 11, "metal_contamination": 11, "thread": 11},
        21,
        57,
    ),
    "hazelnut": ({"train": 50, "test": 10}, {"crack": 2, "cut": 2, "hole": 2, "print": 2}, 2, 8),
    "transistor": ({"train": 50, "test": 10}, {"bent_lead": 2, "cut_lead": 2, "damaged_case": 2, "misplaced": 2}, 2, 8),
    "bottle": ({"train": 10, "test": 23}, {"broken_large": 6, "broken_small": 6, "contamination": 6}, 5, 0),
}


@pytest.mark.parametrize("category", sorted(MVTEC_EXPECTED))
def test_mvtec_real_counts(category):
    root = _real("mvtec_ad")
    splits, defects, test_good, n_masks = MVTEC_EXPECTED[category]
    samples = read_mvtec(root, category)
    _assert_sorted(samples)
    assert Counter(s.split for s in samples) == splits
    assert Counter(s.defect_type for s in samples if s.label == ANOMALOUS) == defects
    assert sum(1 for s in samples if s.split == "test" and s.label == NORMAL) == test_good
    assert sum(s.mask_path is not None for s in samples) == n_masks
    assert all(s.dataset == "mvtec" and s.category == category for s in samples)
    assert all(s.mask_path is None for s in samples if s.label == NORMAL)
    if n_masks:
        assert all(s.mask_path is not None and s.mask_path.name == f"{s.image_path.stem}_mask.png"
                   for s in samples if s.label == ANOMALOUS)
    assert [s for s in samples if s.split == "train"] == read_mvtec(root, category, "train")


def test_mvtec_real_categories_and_aliases():
    root = _real("mvtec_ad")
    assert list_categories("mvtec", root) == ["bottle", "grid", "hazelnut", "transistor"]
    everything = load_dataset("mvtec", root)
    assert len(everything) == 118 + 60 + 60 + 33
    _assert_sorted(everything)
    btad = load_dataset("btad", root, "hazelnut", "test")
    assert len(btad) == 10 and all(s.dataset == "btad" and s.split == "test" for s in btad)
    assert load_dataset("mvtec", root, "hazelnut", "validation") == []


def test_btad_release_layout_reads_ok_as_good(tmp_path):
    """BTAD as released: ``train/ok``, ``test/ok`` and ``test/ko`` with masks of the same stem
    (``.png`` or ``.bmp``) under ``ground_truth/ko``; ``ok`` is the defect-free folder."""
    _mvtec_tree(tmp_path, "03", good="ok", defect="ko", name="{:04d}", ext=".bmp", mask="{}.bmp")
    samples = load_dataset("btad", tmp_path, "03")
    assert Counter((s.split, s.label) for s in samples) == {("train", NORMAL): 3, ("test", NORMAL): 1, ("test", ANOMALOUS): 2}
    bad = [s for s in samples if s.label == ANOMALOUS]
    assert all(s.defect_type == "ko" and s.mask_path.suffix == ".bmp" and s.ground_truth_mask().any() for s in bad)
    assert all(s.mask_path is None and s.defect_type is None for s in samples if s.label == NORMAL)


def test_mvtec_ad2_public_test_set_is_the_test_split(tmp_path):
    """MVTec AD 2: ``train/good``, ``validation/good`` and ``test_public/{good,bad,ground_truth/bad}``;
    the public test set is read as ``test`` (the private ones, without labels, are left alone)."""
    cat = tmp_path / "can"
    _img(cat / "train" / "good" / "000_regular.png")
    _img(cat / "validation" / "good" / "000_regular.png")
    _img(cat / "test_public" / "good" / "000_regular.png")
    _img(cat / "test_public" / "bad" / "000_regular.png")
    _mask(cat / "test_public" / "ground_truth" / "bad" / "000_regular_mask.png")
    _img(cat / "test_private" / "000_regular.png")
    assert list_categories("mvtec", tmp_path) == ["can"]
    samples = read_mvtec(tmp_path, "can")
    assert Counter((s.split, s.label) for s in samples) == {("train", NORMAL): 1, ("validation", NORMAL): 1,
                                                            ("test", NORMAL): 1, ("test", ANOMALOUS): 1}
    (bad,) = [s for s in samples if s.label == ANOMALOUS]
    assert bad.defect_type == "bad" and bad.mask_path.name == "000_regular_mask.png" and bad.ground_truth_mask().any()
    assert read_mvtec(tmp_path, "can", "test") == [s for s in samples if s.split == "test"]


def test_mvtec3d_reads_the_colour_images_and_the_masks_beside_them(tmp_path):
    """MVTec 3D-AD: each folder keeps its colour images in ``rgb/``, its masks in ``gt/`` and its point
    clouds in ``xyz/``; the colour images are read with their masks (test/good's all-zero ones are not)."""
    cat = tmp_path / "cookie"
    for split in ("train", "validation"):
        _img(cat / split / "good" / "rgb" / "000.png")
        (cat / split / "good" / "xyz").mkdir(parents=True)
        (cat / split / "good" / "xyz" / "000.tiff").write_bytes(b"not read")
    _img(cat / "test" / "good" / "rgb" / "000.png")
    _mask(cat / "test" / "good" / "gt" / "000.png", box=None)
    for i in range(2):
        _img(cat / "test" / "crack" / "rgb" / f"{i:03d}.png")
        _mask(cat / "test" / "crack" / "gt" / f"{i:03d}.png")
    assert list_categories("mvtec3d", tmp_path) == ["cookie"]
    samples = load_dataset("mvtec3d", tmp_path, "cookie")
    assert Counter((s.split, s.label) for s in samples) == {("train", NORMAL): 1, ("validation", NORMAL): 1,
                                                            ("test", NORMAL): 1, ("test", ANOMALOUS): 2}
    assert all(s.image_path.parent.name == "rgb" and s.dataset == "mvtec3d" for s in samples)
    bad = [s for s in samples if s.label == ANOMALOUS]
    assert all(s.defect_type == "crack" and s.mask_path.parent.name == "gt" and s.ground_truth_mask().any() for s in bad)
    assert all(s.mask_path is None for s in samples if s.label == NORMAL)
    (cat / "test" / "crack" / "gt" / "001.png").unlink()
    with pytest.raises(DatasetError, match=r"001\.png: image has no mask"):
        read_mvtec(tmp_path, "cookie")


def _folder_tree(cat: Path, n_good: int = 4) -> Path:
    """A plain product folder: good images, a defect type with masks and one without."""
    for i in range(n_good):
        _img(cat / "good" / f"g{i}.png")
    for i in range(2):
        _img(cat / "scratch" / f"s{i}.png")
        _mask(cat / "ground_truth" / "scratch" / f"s{i}_mask.png")
    _img(cat / "dent" / "d0.jpg", mode="RGB")
    return cat


def test_folder_reads_a_plain_product_folder(tmp_path):
    """``--dataset folder``: ``good/`` and one folder per defect type (masks optional, under
    ``ground_truth/<type>``); the root may be the folder of categories or the category itself, and
    evaluation holds out a pool of good images as references."""
    from iad_agent.eval.plan import split_dataset

    _folder_tree(tmp_path / "widget")
    assert list_categories("folder", tmp_path) == ["widget"]
    samples = load_dataset("folder", tmp_path, "widget")
    _assert_sorted(samples)
    assert Counter((s.defect_type, s.label, s.mask_path is not None) for s in samples) == {
        (None, NORMAL, False): 4, ("scratch", ANOMALOUS, True): 2, ("dent", ANOMALOUS, False): 1}
    assert {s.split for s in samples} == {"test"} and {s.dataset for s in samples} == {"folder"}
    assert [s.image_path for s in load_dataset("folder", tmp_path / "widget")] == [s.image_path for s in samples]
    split = split_dataset(samples)
    assert split.protocol == "held-out normals" and len(split.pool) == 2
    assert not set(split.pool) & {s.image_path for s in split.test}


@pytest.mark.parametrize("change, message", [
    (lambda c: (c / "ground_truth" / "scratch" / "s1_mask.png").unlink(), r"s1\.png: image has no mask"),
    (lambda c: _mask(c / "ground_truth" / "hole" / "h0_mask.png"), r"hole: masks without a folder of images"),
    (lambda c: _img(c / "train" / "good" / "t0.png"), r"train/ folder, the MVTec AD layout: use --dataset mvtec"),
    (lambda c: shutil.rmtree(c / "good"), r"no folder of good images"),
])
def test_folder_refuses_what_it_cannot_read(tmp_path, change, message):
    cat = _folder_tree(tmp_path / "widget")
    change(cat)
    with pytest.raises(DatasetError, match=message):
        read_folder(tmp_path, "widget")


def test_mvtec_real_mask_matches_defect():
    root = _real("mvtec_ad")
    sample = next(s for s in read_mvtec(root, "hazelnut") if s.label == ANOMALOUS)
    mask = sample.ground_truth_mask()
    assert mask is not None and mask.any() and mask.shape == (256, 256)


def test_loco_real_juice_bottle():
    root = _real("mvtec_loco")
    samples = read_loco(root, "juice_bottle")
    _assert_sorted(samples)
    assert len(samples) == 29
    assert Counter(s.split for s in samples) == {"train": 10, "validation": 3, "test": 16}
    test = [s for s in samples if s.split == "test"]
    assert all(s.label == ANOMALOUS and s.defect_type == "logical_anomalies" for s in test)
    assert all(s.mask_path is not None and s.mask_path.name == s.image_path.name for s in test)
    assert all(s.dataset == "loco" for s in samples)
    assert len(load_dataset("loco", root, split="validation")) == 3


def test_magnetic_tile_real():
    root = _real("magnetic_tile")
    samples = read_magnetic_tile(root)
    _assert_sorted(samples)
    assert len(samples) == 542
    assert sum(s.label == NORMAL for s in samples) == 150
    assert Counter(s.defect_type for s in samples if s.label == ANOMALOUS) == {
        "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103,
    }
    assert all(s.mask_path is None for s in samples if s.label == NORMAL)
    assert all(s.mask_path is not None and s.mask_path.suffix == ".png" for s in samples if s.label == ANOMALOUS)
    assert {s.category for s in samples} == {"magnetic_tile"}
    assert {s.split for s in samples} == {"test"}
    assert load_dataset("magnetic_tile", root) == samples


def test_deeppcb_real():
    root = _real("deeppcb")
    samples = read_deeppcb(root)
    _assert_sorted(samples)
    assert len(samples) == 221
    assert sum(len(s.boxes) for s in samples) == 1398
    assert Counter(t for s in samples for t in s.box_types) == {
        "open": 272, "short": 215, "mousebite": 265, "spur": 209, "spurious_copper": 203, "pin_hole": 234,
    }
    assert Counter(s.split for s in samples) == {"train": 150, "test": 71}
    for s in samples:
        assert s.label == ANOMALOUS and s.category == "pcb" and s.dataset == "deeppcb"
        assert len(s.references) == 1 and s.references[0].is_file()
        assert s.references[0].name == s.image_path.name.replace("_test", "_temp")
        assert len(s.boxes) == len(s.box_types) >= 1
        assert all(0 <= v <= 1 for b in s.boxes for v in b.to_list(None))
        counts = Counter(s.box_types)
        assert counts[s.defect_type] == max(counts.values())
    assert read_deeppcb(root / "PCBData") == samples
    assert len(read_deeppcb(root, split="test")) == 71


# --------------------------------------------------------------------------- synthetic: readers


def test_mvtec_synthetic_extensions_hidden_and_plain_mask_names(tmp_path):
    root = _mvtec_tree(tmp_path)
    cat = root / "widget"
    _img(cat / "train" / "good" / "UPPER.JPG")
    _img(cat / "train" / "good" / ".hidden.png")
    (cat / "train" / "good" / "notes.txt").write_text("x")
    _img(cat / "test" / "dent" / "000.bmp")
    _mask(cat / "ground_truth" / "dent" / "000.png")  # BTAD/VisA-style name without _mask
    samples = read_mvtec(root, "widget")
    _assert_sorted(samples)
    names = [s.image_path.name for s in samples if s.split == "train"]
    assert names == ["000.png", "001.png", "002.png", "UPPER.JPG"]
    dent = next(s for s in samples if s.defect_type == "dent")
    assert dent.mask_path == cat / "ground_truth" / "dent" / "000.png"


def test_loco_synthetic_official_nested_masks(tmp_path):
    cat = tmp_path / "breakfast_box"
    _img(cat / "train" / "good" / "000.png")
    _img(cat / "test" / "good" / "000.png")
    _img(cat / "test" / "structural_anomalies" / "000.png")
    _mask(cat / "ground_truth" / "structural_anomalies" / "000" / "000.png")
    _mask(cat / "ground_truth" / "structural_anomalies" / "000" / "001.png")
    samples = read_loco(tmp_path, "breakfast_box")
    anomalous = [s for s in samples if s.label == ANOMALOUS]
    assert len(samples) == 3 and len(anomalous) == 1
    assert anomalous[0].mask_path == cat / "ground_truth" / "structural_anomalies" / "000" / "000.png"


def _visa_tree(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(2):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            _img(root / rel, mode="RGB")
            rows.append(f"{obj},{'train' if i == 0 else 'test'},normal,{rel},")
        rel, mrel = f"{obj}/Data/Images/Anomaly/000.JPG", f"{obj}/Data/Masks/Anomaly/000.png"
        _img(root / rel, mode="RGB")
        _mask(root / mrel)
        rows.append(f"{obj},test,anomaly,{rel},{mrel}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_synthetic(tmp_path):
    root = _visa_tree(tmp_path)
    assert list_categories("visa", root) == ["candle", "pcb1"]
    samples = read_visa(root, "candle")
    _assert_sorted(samples)
    assert len(samples) == 3
    assert Counter((s.split, s.label) for s in samples) == {("train", 0): 1, ("test", 0): 1, ("test", 1): 1}
    anomaly = next(s for s in samples if s.label == ANOMALOUS)
    assert anomaly.defect_type == "anomaly" and anomaly.mask_path.name == "000.png"
    assert all(s.dataset == "visa" for s in samples)
    assert len(read_visa(root, "candle", "test")) == 2
    assert len(load_dataset("visa", root)) == 6
    # VisA's own masks hold small label values, not 255: still read as the defect's pixels
    arr = np.zeros((24, 32), np.uint8)
    arr[4:10, 4:10] = 1
    Image.fromarray(arr).save(anomaly.mask_path)
    assert anomaly.ground_truth_mask().sum() == 36


def test_visa_synthetic_missing_file(tmp_path):
    root = _visa_tree(tmp_path)
    (root / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png").unlink()
    with pytest.raises(DatasetError, match=r"000\.png.*1cls\.csv:\d+"):
        read_visa(root, "pcb1")
    read_visa(root, "candle")  # the other category is unaffected


def test_visa_synthetic_bad_label(tmp_path):
    root = _visa_tree(tmp_path)
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.write_text(csv_path.read_text().replace("candle,test,anomaly", "candle,test,broken"))
    with pytest.raises(DatasetError, match=r"1cls\.csv:\d+.*label"):
        read_visa(root, "candle")


def _kolektor_tree(root: Path) -> Path:
    for kos, defect in (("kos01", False), ("kos02", True)):
        for part in range(2):
            _img(root / kos / f"Part{part}.jpg", size=(40, 100))
            box = (5, 20, 15, 60) if defect and part == 1 else None
            _mask(root / kos / f"Part{part}_label.bmp", size=(40, 100), box=box)
    return root


def test_kolektor_synthetic(tmp_path):
    root = _kolektor_tree(tmp_path)
    samples = read_kolektor(root)
    _assert_sorted(samples)
    assert len(samples) == 4
    anomalous = [s for s in samples if s.label == ANOMALOUS]
    assert [(s.image_path.parent.name, s.image_path.name) for s in anomalous] == [("kos02", "Part1.jpg")]
    assert anomalous[0].defect_type == "crack" and anomalous[0].mask_path.name == "Part1_label.bmp"
    assert all(s.mask_path is None for s in samples if s.label == NORMAL)
    assert {(s.category, s.dataset, s.split) for s in samples} == {("kolektor", "kolektor", "test")}


def test_kolektor2_layout_has_train_and_test(tmp_path):
    """KolektorSDD2: ``train/`` and ``test/`` with ``NNNNN_GT.png`` labels; the folders are the splits,
    so the benchmark draws its references from train's good images."""
    from iad_agent.eval.plan import split_dataset

    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            name = f"{10000 + i}"
            _img(tmp_path / split / f"{name}.png", size=(40, 100), mode="RGB")
            _mask(tmp_path / split / f"{name}_GT.png", size=(40, 100), box=(5, 20, 15, 60) if i == 1 else None)
    samples = read_kolektor(tmp_path)
    assert Counter((s.split, s.label) for s in samples) == {("train", NORMAL): 2, ("train", ANOMALOUS): 1,
                                                            ("test", NORMAL): 1, ("test", ANOMALOUS): 1}
    assert all(s.mask_path.name.endswith("_GT.png") for s in samples if s.label == ANOMALOUS)
    assert read_kolektor(tmp_path, split="train") == [s for s in samples if s.split == "train"]
    split = split_dataset(samples)
    assert split.protocol == "train" and len(split.pool) == 2 and len(split.test) == 2
    assert read_kolektor(_kolektor_tree(tmp_path / "v1"), split="train") == []  # KolektorSDD: no train split


def test_kolektor_missing_label(tmp_path):
    root = _kolektor_tree(tmp_path)
    (root / "kos01" / "Part1_label.bmp").unlink()
    with pytest.raises(DatasetError, match=r"kos01/Part1\.jpg"):
        read_kolektor(root)


def test_kolektor_label_size(tmp_path):
    root = _kolektor_tree(tmp_path)
    _mask(root / "kos02" / "Part0_label.bmp", size=(41, 100))
    with pytest.raises(DatasetError, match=r"Part0_label\.bmp.*Part0\.jpg"):
        read_kolektor(root)


# --------------------------------------------------------------------------- synthetic: failures


def test_image_without_mask(tmp_path):
    root = _mvtec_tree(tmp_path)
    _img(root / "widget" / "test" / "scratch" / "007.png")
    with pytest.raises(DatasetError, match=r"scratch/007\.png.*no mask"):
        read_mvtec(root, "widget")


def test_mask_without_image(tmp_path):
    root = _mvtec_tree(tmp_path)
    _mask(root / "widget" / "ground_truth" / "scratch" / "009_mask.png")
    with pytest.raises(DatasetError, match=r"009_mask\.png.*without image"):
        read_mvtec(root, "widget")


def test_mask_for_missing_defect_folder(tmp_path):
    root = _mvtec_tree(tmp_path)
    _mask(root / "widget" / "ground_truth" / "dent" / "000_mask.png")
    with pytest.raises(DatasetError, match=r"dent/000_mask\.png"):
        read_mvtec(root, "widget")


def test_mask_of_different_size(tmp_path):
    root = _mvtec_tree(tmp_path)
    _mask(root / "widget" / "ground_truth" / "scratch" / "001_mask.png", size=(30, 24))
    with pytest.raises(DatasetError, match=r"001_mask\.png.*30x24.*scratch/001\.png.*32x24"):
        read_mvtec(root, "widget")


def test_missing_category_lists_available(tmp_path):
    root = _mvtec_tree(tmp_path)
    _mvtec_tree(tmp_path, "gadget")
    with pytest.raises(DatasetError, match=r"nosuch.*available: gadget, widget"):
        read_mvtec(root, "nosuch")
    with pytest.raises(DatasetError, match=r"nosuch"):
        load_dataset("mpdd", root, "nosuch")


def test_unknown_dataset_name(tmp_path):
    valid = r"btad.*deeppcb.*kolektor.*loco.*magnetic_tile.*mpdd.*mvtec.*visa"
    with pytest.raises(DatasetError, match=rf"'mvtec2'.*{valid}"):
        load_dataset("mvtec2", tmp_path)
    with pytest.raises(DatasetError, match="valid names"):
        list_categories("nope", tmp_path)


def test_readers_mapping():
    assert set(READERS) == {
        "mvtec", "mpdd", "btad", "mvtec3d", "visa_resplit", "visa", "loco", "magnetic_tile", "deeppcb", "kolektor", "folder",
    }
    assert READERS["mpdd"] is READERS["btad"] is READERS["mvtec3d"] is READERS["visa_resplit"] is read_mvtec
    assert READERS["folder"] is read_folder


def test_magnetic_tile_image_without_mask(tmp_path):
    imgs = tmp_path / "MT_Crack" / "Imgs"
    _img(imgs / "exp1_num_1.jpg")
    _mask(imgs / "exp1_num_1.png")
    _img(imgs / "exp1_num_2.jpg")
    _img(tmp_path / "MT_Free" / "Imgs" / "exp0_num_1.jpg")  # normal images may lack masks
    with pytest.raises(DatasetError, match=r"exp1_num_2\.jpg"):
        read_magnetic_tile(tmp_path)
    _mask(imgs / "exp1_num_2.png")
    samples = read_magnetic_tile(tmp_path)
    assert [(s.label, s.defect_type) for s in samples] == [(1, "crack"), (1, "crack"), (0, None)]
    with pytest.raises(DatasetError, match="split"):
        read_magnetic_tile(tmp_path, split="train")


def _pcb_tree(root: Path, lines: str) -> Path:
    data = root / "PCBData"
    _img(data / "group1" / "1" / "100_test.jpg", size=(64, 64))
    _img(data / "group1" / "1" / "100_temp.jpg", size=(64, 64))
    ann = data / "group1" / "1_not" / "100.txt"
    ann.parent.mkdir(parents=True)
    ann.write_text(lines)
    return root


def test_deeppcb_synthetic_commas_and_majority(tmp_path):
    root = _pcb_tree(tmp_path, "0,0,32,32,4\n32 32 64 64 2\n\n10,10,20,20,2\n1 1 9 9 4\n")
    (sample,) = read_deeppcb(root)
    assert sample.box_types == ("spur", "short", "short", "spur")
    assert sample.defect_type == "short"  # tie 2 vs 2: lowest type id
    assert sample.boxes[0].to_list() == [0.0, 0.0, 0.5, 0.5]
    assert sample.split == "test"  # no split lists


def test_deeppcb_bad_annotation_line(tmp_path):
    root = _pcb_tree(tmp_path, "0 0 32 32 1\n1 2 three 4 1\n")
    with pytest.raises(DatasetError, match=r"100\.txt:2"):
        read_deeppcb(root)


def test_deeppcb_unknown_type_and_missing_template(tmp_path):
    root = _pcb_tree(tmp_path, "0 0 32 32 9\n")
    with pytest.raises(DatasetError, match=r"100\.txt:1.*type"):
        read_deeppcb(root)
    (root / "PCBData" / "group1" / "1" / "100_temp.jpg").unlink()
    with pytest.raises(DatasetError, match=r"100_test\.jpg.*template"):
        read_deeppcb(root)


# --------------------------------------------------------------------------- data_root


def test_data_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IAD_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.setenv("IAD_DATA", str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="IAD_DATA"):
        data_root()


def test_data_root_walks_up(tmp_path, monkeypatch):
    (tmp_path / "shared" / "data").mkdir(parents=True)
    work = tmp_path / "main" / "sub"
    work.mkdir(parents=True)
    monkeypatch.delenv("IAD_DATA", raising=False)
    monkeypatch.chdir(work)
    assert data_root() == tmp_path / "shared" / "data"
