"""Dump, per k-shot group, everything a threshold rule could use and what it must predict.

    python experiments/calib.py --out /work/detect3-results/calib/dump.jsonl [--cats grid,elpv] [--shots 1,4,all]

For each (category, shots, seed) of the ``iad eval`` protocol (plus ELPV, the unseen check set)
the package registers a product from the cached reference grids (``vision.learn.learn``: the
scoring weight, the held-out good scores) and scores

* the test images (good and defective): what a threshold rule is judged on, and
* the *other* images of the reference pool (train/good only): good parts the references have
  not seen, the material from which any prior of a threshold rule may be estimated.

Feature grids of files are cached under ``$IAD_LAB_CACHE`` (default
``/work/detect3-results/cache``) per feature configuration. Held-out maps are saved beside the
jsonl (``maps/<group>.npz``) for patch-level rules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from iad_agent.imageio import load_image  # noqa: E402
from iad_agent.vision.features import FeatureConfig, FeatureExtractor  # noqa: E402
from iad_agent.vision.normal_bank import NormalBank, image_score  # noqa: E402
from iad_agent.vision.similarity import self_similarity_map  # noqa: E402

CACHE = Path(os.environ.get("IAD_LAB_CACHE", "/work/detect3-results/cache"))
ELPV = Path("/work/extra/elpv_pkg/elpv_dataset/data")
_extractors: dict = {}


def extractor(config: FeatureConfig) -> FeatureExtractor:
    if config not in _extractors:
        _extractors[config] = FeatureExtractor(config)
    return _extractors[config]


def config_key(config: FeatureConfig) -> str:
    return hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def grid_of(path: Path, config: FeatureConfig) -> np.ndarray:
    """The package's features of an image file, cached on disk (float16)."""
    h = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]
    f = CACHE / config_key(config) / f"{h}.npy"
    if f.exists():
        return np.load(f).astype(np.float32)
    g = extractor(config)([load_image(path)])[0]
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f"{f.stem}.{os.getpid()}.tmp.npy")  # two scripts may cache the same image at once
    np.save(tmp, g.astype(np.float16))
    os.replace(tmp, f)
    return g.astype(np.float16).astype(np.float32)


_self_cache: dict = {}


def self_map_of(path: Path, config: FeatureConfig, raw: bool = False) -> np.ndarray:
    """The self-similarity map of an image file: on its smoothed grid, or (``raw``, what a product whose
    ``Scoring.self_raw`` is set reads) on the grid before the smoothing."""
    import dataclasses

    if raw:
        config = dataclasses.replace(config, smooth=1, clip_length=0.0)  # as FeatureExtractor.with_raw: never capped
    key = (str(path), config)
    if key not in _self_cache:
        _self_cache[key] = self_similarity_map(grid_of(path, config))
    return _self_cache[key]


def smoothed_self() -> None:
    """Register as the package did before its self term read the unsmoothed grid (``learn.SELF_RAW``
    off, in this process): the scripts whose figures in ``experiments/README.md`` were measured
    before that change, and which read self maps with :func:`self_map_of` on the smoothed grid, call
    this first, so that they reproduce those figures."""
    from iad_agent.vision import learn as learn_module

    learn_module.SELF_RAW = False


def categories(names: list[str] | None, elpv: bool, max_bad: int) -> list[tuple[str, list[Path], list]]:
    """``(name, reference pool, test samples)`` of every category of the shared data (+ ELPV)."""
    from iad_agent.datasets import list_categories, load_dataset
    from iad_agent.eval.plan import available_datasets, evenly_spaced, split_dataset

    out = []
    for dataset, root in available_datasets():
        if dataset == "deeppcb":
            continue
        for cat in list_categories(dataset, root):
            if names and cat not in names:
                continue
            split = split_dataset(load_dataset(dataset, root, cat))
            good = [s for s in split.test if not s.is_anomalous]
            bad = evenly_spaced([s for s in split.test if s.is_anomalous], max_bad)
            out.append((cat, split.pool, good + bad))
    if elpv and (not names or "elpv" in names):
        out.append(elpv_category())
    return out


def elpv_category(n_pool: int = 50, n_good: int = 100, n_bad: int = 100):
    from iad_agent.types import Sample

    rows = [line.split() for line in (ELPV / "labels.csv").read_text().splitlines() if line.strip()]
    good = [ELPV / r[0] for r in rows if float(r[1]) == 0.0]
    bad = [ELPV / r[0] for r in rows if float(r[1]) >= 0.67]
    idx = lambda n, k: np.unique(np.linspace(0, n - 1, k).round().astype(int))  # noqa: E731
    gsel = [good[i] for i in idx(len(good), n_pool + n_good)]
    pool = gsel[::2][:n_pool]
    testg = [g for g in gsel if g not in pool][:n_good]
    testb = [bad[i] for i in idx(len(bad), n_bad)]
    test = [Sample(p, "elpv", 0) for p in testg] + [Sample(p, "elpv", 1) for p in testb]
    return "elpv", pool, test


def product_config(refs: list[Path]) -> FeatureConfig:
    """The feature configuration registration would choose for these references."""
    import dataclasses

    from iad_agent.imageio import image_size

    config = FeatureConfig()
    sizes = [image_size(p) for p in refs]
    if len(set(sizes)) > 1:
        config = dataclasses.replace(config, reference_side=int(np.median([min(s) for s in sizes])))
    return config


def package_config(refs: list[Path], images: list | None = None) -> FeatureConfig:
    """:func:`product_config` with registration's brightness rule (``vision.brightness.brightness_target``):
    the configuration the package itself gives a product of these references today."""
    import dataclasses

    from iad_agent.imageio import load_image
    from iad_agent.vision.brightness import brightness_target

    images = images if images is not None else [load_image(p) for p in refs]
    return dataclasses.replace(product_config(refs), brightness=brightness_target(images))


def capped_config(refs: list[Path]) -> FeatureConfig:
    """:func:`package_config` with registration's patch-length cap (``features.clip_length_of`` of the
    references' grids): the whole configuration a product of these references gets today."""
    import dataclasses

    from iad_agent.vision.features import clip_length_of

    config = package_config(refs)
    return dataclasses.replace(config, clip_length=clip_length_of([grid_of(p, config) for p in refs[:16]]))


def print_look_rows(cats: list[str], shots: list[str], **tag) -> None:  # noqa: ANN003 - the row's labels
    """One JSON line per k-shot group (ELPV if ``elpv`` is in ``cats``): ``tag``, the group, and
    :func:`look_row` of a product registered as the package does (:func:`capped_config`)."""
    for cat, k, seed, refs, test, y in groups(cats, "elpv" in cats, 100, shots):
        config = capped_config(refs)
        _self_cache.clear()
        print(json.dumps(dict(**tag, cat=cat, shots=str(k), seed=seed, **look_row(refs, test, y, config))), flush=True)


def groups(cats: list[str] | None, elpv: bool, max_bad: int, shots: list[str]):  # noqa: ANN201 - iterator
    """The k-shot groups of the ``iad eval`` protocol: ``(category, k, seed, references, test samples,
    test labels)``, seeds 0–2 (one draw for ``all``)."""
    from iad_agent.eval.plan import draw_references, parse_shots

    for cat, pool, test in categories(cats, elpv, max_bad):
        y = np.array([int(s.label) for s in test])
        for k in parse_shots(shots):
            for seed in range(1 if k == "all" else 3):
                yield cat, k, seed, draw_references(pool, k, seed, cat), test, y


def plain_bank(refs: list[Path], config: FeatureConfig) -> NormalBank:
    """A bank of the references' cached grids, nothing learned (plain nearest neighbour)."""
    bank = NormalBank(config)
    bank.add([grid_of(p, config) for p in refs], [str(p) for p in refs])
    return bank


def aurocs(scores: dict[str, list[float]], y: np.ndarray) -> dict[str, float]:
    """Test image AUROC of each variant's scores (``y``: 1 = defective)."""
    from iad_agent.vision.scoring import _auroc

    return {name: round(_auroc(np.array(v)[y == 0], np.array(v)[y == 1]), 4) for name, v in scores.items()}


def emit(out, row: dict) -> None:  # noqa: ANN001 - an open text file or None
    """Print one result row (JSON) and append it to ``out``, flushed: a stopped run keeps what it did."""
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def means_table(by: dict, names: list[str], per_row=None) -> None:  # noqa: ANN001 - per_row: d -> str | None
    """Print a markdown table: the mean of each ``names`` entry per ``(shots, category)`` of ``by``
    (``{(shots, cat): {name: [values over seeds]}}``), then the dev mean per shot count (ELPV, the
    unseen check set, left out). ``per_row(d)`` may add a line under a category's row."""
    print("| shots | category | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for (shots, cat), d in sorted(by.items()):
        print(f"| {shots} | {cat} | " + " | ".join(f"{np.mean(d[n]):.3f}" for n in names) + " |")
        extra = per_row(d) if per_row else None
        if extra:
            print(extra)
    for shots in sorted({s for s, _ in by}):
        dev = [d for (s, c), d in by.items() if s == shots and c != "elpv"]
        print(f"| {shots} | **dev mean** | " + " | ".join(f"{np.mean([np.mean(d[n]) for d in dev]):.3f}" for n in names) + " |")


def test_means(path: str) -> None:
    """:func:`means_table` of a dump whose rows hold ``cat``, ``shots`` and a ``test`` dict of AUROCs per variant."""
    from collections import defaultdict

    rows = [json.loads(line) for line in open(path)]
    by: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for n, v in r["test"].items():
            by[(r["shots"], r["cat"])][n].append(v)
    means_table(by, list(rows[0]["test"]))


def dump_summary_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command line the dump-then-summarise scripts share: ``dump --out F [--cats a,b] [--shots 1,4]
    [--max-bad N]`` and ``summary PATH``. Returns the parser and the ``dump`` sub-parser (for a script's own
    options); ``a.cats`` comes back as a list or None."""
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--out", required=True)
    d.add_argument("--cats", default="", type=lambda v: v.split(",") if v else None)
    d.add_argument("--shots", default="1,4", type=lambda v: v.split(","))
    d.add_argument("--max-bad", type=int, default=60)
    sub.add_parser("summary").add_argument("path")
    return ap, d


def score(bank: NormalBank, grid: np.ndarray, smap: np.ndarray | None) -> tuple[float, float]:
    knn = bank.patch_distances(grid)
    fused = bank.scoring.fuse(knn, smap if bank.scoring.uses_self else None)
    return image_score(fused), image_score(knn)


def learned_bank(refs: list[Path], config: FeatureConfig | None = None, fpr: float = 0.05,
                 material: dict | None = None):  # noqa: ANN201 - (NormalBank, Calibration)
    """A bank of the references' cached grids with what registration learns from them (``vision.learn.learn``)."""
    from iad_agent.vision.learn import learn

    config = config or product_config(refs)
    bank = NormalBank(config)
    bank.add([grid_of(p, config) for p in refs], [str(p) for p in refs])
    images: dict[int, object] = {}

    def image_of(i: int):
        if i not in images:
            images[i] = load_image(refs[i])
        return images[i]

    bank.scoring, cal = learn(bank, extractor(config), image_of, fpr, material=material)
    return bank, cal


def look_row(refs: list[Path], test: list, y: np.ndarray, config: FeatureConfig | None = None, score=None) -> dict:  # noqa: ANN001
    """The global look of a product registered from ``refs`` as the package does it (its configuration, unless
    ``config`` is given, and ``learn``): the chosen self weight, and the test images' AUROC, false-alarm and
    miss rates at the calibrated threshold. ``score``: the image score (default ``image_score``)."""
    from iad_agent.vision.scoring import _auroc

    score = score or image_score
    config = config or package_config(refs)
    material: dict = {}
    bank, cal = learned_bank(refs, config, material=material)
    maps = fused_maps(bank, material, test)[2]
    v = np.array([score(m) for m in maps])
    return dict(w=bank.scoring.self_weight, raw=bank.scoring.self_raw, auroc=round(_auroc(v[y == 0], v[y == 1]), 4),
                far=round(float((v[y == 0] >= cal.threshold).mean()), 3), miss=round(float((v[y == 1] < cal.threshold).mean()), 3))


def fused_maps(bank: NormalBank, material: dict, test: list):  # noqa: ANN201
    """Fused maps under the bank's scoring: the held-out good and synthetic items (with their defect flags)
    and the test images (with their labels)."""
    s, config = bank.scoring, bank.config
    held = [s.fuse(k, m if s.uses_self else None) for k, m in zip(material["knn"], material["self"])]
    maps = [s.fuse(bank.patch_distances(grid_of(smp.image_path, config)),
                   self_map_of(smp.image_path, config, s.self_raw) if s.uses_self else None) for smp in test]
    return held, np.array(material["defect"]), maps, np.array([int(smp.label) for smp in test])


def split_scores(bank: NormalBank, ref: Path, config: FeatureConfig) -> list[float]:
    """The package's split scores (``vision.learn.split_scores``) of a reference's cached grid: its left, right,
    top and bottom halves, each against a bank of the opposite half, the self term read on the whole image."""
    from iad_agent.vision.learn import split_scores as package_split_scores

    s = bank.scoring
    return package_split_scores(bank, grid_of(ref, config), self_map_of(ref, config, s.self_raw) if s.uses_self else None, s)


def mirror_scores(bank: NormalBank, ref: Path, config: FeatureConfig) -> list[float]:
    """One good image against its own mirror images: the image scored (the bank's scoring, its own self map)
    against a bank of the left-right mirrored image's patches, then of the top-bottom mirrored one's."""
    from PIL import ImageOps

    img = load_image(ref)
    s = bank.scoring
    g = grid_of(ref, config)
    smap = self_map_of(ref, config, s.self_raw) if s.uses_self else None
    out = []
    for flipped in (ImageOps.mirror(img), ImageOps.flip(img)):
        other = NormalBank(config)
        other.add([extractor(config)([flipped])[0]], ["mirror"])
        out.append(image_score(s.fuse(other.patch_distances(g), smap)))
    return out


def run_group(cat: str, k, seed: int, refs: list[Path], pool: list[Path], test: list, fpr: float, max_pool: int,
              maps_dir: Path, package: bool = False) -> dict:
    from iad_agent.eval.plan import evenly_spaced

    t0 = time.perf_counter()
    mat: dict = {}
    bank, cal = learned_bank(refs, config=package_config(refs) if package else None, fpr=fpr, material=mat)
    config = bank.config
    learn_s = time.perf_counter() - t0
    others = evenly_spaced([p for p in pool if p not in set(refs)], max_pool)
    row = {"cat": cat, "shots": k, "seed": seed, "k": len(refs), "w": bank.scoring.self_weight,
           "knn_level": bank.scoring.knn_level, "self_level": bank.scoring.self_level,
           "syn": bank.scoring.synthetic_auroc, "method": cal.method, "held": cal.global_scores,
           "held_knn": cal.knn_scores, "factor": cal.bank_size_factor, "knn_factor": cal.knn_bank_size_factor,
           "patch_threshold": cal.patch_threshold, "learn_s": round(learn_s, 2),
           "syn_scores": [image_score(bank.scoring.fuse(k, m if bank.scoring.uses_self else None))
                          for k, m, d in zip(mat["knn"], mat["self"], mat["defect"]) if d]}
    if len(refs) == 1:  # the one good image cut in two: each half scored against a bank of the other half
        row["split"] = split_scores(bank, refs[0], config)
        if os.environ.get("MIRROR"):
            row["mirror"] = mirror_scores(bank, refs[0], config)
    elif os.environ.get("SPLIT_ALL"):  # every reference cut so (mean of its four halves), for rules at more shots
        row["split_refs"] = [float(np.mean(split_scores(bank, r, config))) for r in refs[:8]]
    for name, items in (("test", [(s.image_path, s.label) for s in test]), ("pool", [(p, 0) for p in others])):
        fused, plain, labels = [], [], []
        for path, label in items:
            g = grid_of(path, config)
            f, p = score(bank, g, self_map_of(path, config, bank.scoring.self_raw) if bank.scoring.uses_self else None)
            fused.append(f)
            plain.append(p)
            labels.append(int(label))
        row[name] = fused
        row[name + "_knn"] = plain
        row[name + "_y"] = labels
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cats", default="")
    ap.add_argument("--no-elpv", action="store_true")
    ap.add_argument("--shots", default="1,4,all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fpr", type=float, default=0.05)
    ap.add_argument("--max-bad", type=int, default=100)
    ap.add_argument("--max-pool", type=int, default=30)
    ap.add_argument("--out", required=True)
    ap.add_argument("--package", action="store_true", help="the package's configuration (brightness rule included)")
    a = ap.parse_args()
    from iad_agent.eval.plan import draw_references, parse_shots
    from iad_agent.eval.runner import set_threads

    set_threads(1)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["cat"], str(r["shots"]), r["seed"]))
    shots = parse_shots(a.shots.split(","))
    for cat, pool, test in categories(a.cats.split(",") if a.cats else None, not a.no_elpv, a.max_bad):
        seen = set()
        for k in shots:
            for seed in range(a.seeds):
                refs = draw_references(pool, k, seed, cat)
                if (k, tuple(refs)) in seen or (cat, str(k), seed) in done:
                    continue
                seen.add((k, tuple(refs)))
                t0 = time.perf_counter()
                row = run_group(cat, k, seed, refs, pool, test, a.fpr, a.max_pool, out.parent / "maps", a.package)
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                y = np.array(row["test_y"])
                t = np.array(row["test"])
                print(f"{cat:13s} k={k!s:3s} s={seed} w={row['w']} held={np.round(row['held'], 3)} "
                      f"good med={np.median(t[y == 0]):.3f} bad med={np.median(t[y == 1]):.3f} "
                      f"pool med={np.median(row['pool']) if row['pool'] else float('nan'):.3f} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
