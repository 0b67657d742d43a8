"""Leave-category-out comparison of the learned gate with the hand-set band (issue 13, item 4).

Not part of the package. Two steps:

    python experiments/gate_lco.py collect --shots 4 --cache /work/gate3-results
    python experiments/gate_lco.py table --shots 4 --cache /work/gate3-results --out /work/gate3-results/gate_lco.md

``collect`` runs :func:`iad_agent.training.gate.collect` on the six shared-data categories
(mvtec hazelnut / transistor / grid / bottle, loco juice_bottle, magnetic_tile; seed 0, at most
60 labelled images per category) and pickles the outcomes (every gate action run once per image
through the real inspector and tools). ``table`` runs :func:`leave_category_out` for each gate
variant on those outcomes and writes a Markdown table. Every setting a variant needs is chosen
inside the training categories (nested leave-one-out) — never on the held-out category.
``table`` also lists, per category, how many images allow a tool and on how many some action
changes the verdict (the only images a gate can learn from). ``bands`` (analysis only: it reads
the held-out labels) finds the hand-set band narrowed on those labels that calls least at the band's
balanced accuracy — what a gate could reach, not something to choose. ``drop-only`` (post hoc)
probes a gate that can only drop the band's calls.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

CATEGORIES = [("mvtec", "mvtec_ad", "hazelnut"), ("mvtec", "mvtec_ad", "transistor"), ("mvtec", "mvtec_ad", "grid"),
              ("mvtec", "mvtec_ad", "bottle"), ("loco", "mvtec_loco", "juice_bottle"),
              ("magnetic_tile", "magnetic_tile", "magnetic_tile")]
#: Synthetic material per category (set once, before any measurement): unregistered good pool images
#: and synthetic defects made from them.
SYNTHETIC_GOOD, SYNTHETIC_DEFECTS = 10, 20


def _cache(args: argparse.Namespace, synthetic: bool = False) -> Path:
    return Path(args.cache) / f"outcomes_shots{args.shots}_seed{args.seed}{'_synthetic' if synthetic else ''}.pkl"


def collect_cmd(args: argparse.Namespace) -> None:
    from iad_agent.datasets import data_root
    from iad_agent.eval.plan import parse_shots
    from iad_agent.training.gate import GateTrainConfig, collect

    root = data_root()
    config = GateTrainConfig(shots=parse_shots([args.shots])[0], seed=args.seed, max_test_per_category=args.max_per_category,
                             synthetic_good=SYNTHETIC_GOOD if args.synthetic else 0,
                             synthetic_defects=SYNTHETIC_DEFECTS if args.synthetic else 0)
    t0, c0 = time.time(), time.process_time()
    cats = [(d, str(root / folder), c) for d, folder, c in CATEGORIES]
    outcomes = collect(cats, config, progress=lambda d, t, c: print(f"\r{d}/{t} {c}   ", end="", file=sys.stderr),
                       labelled=not args.synthetic)
    print(f"\n{len(outcomes)} outcomes, {time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU", file=sys.stderr)
    path = _cache(args, args.synthetic)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(outcomes))
    tmp.replace(path)
    print(path)


#: Every variant compared, declared before any was measured on the held-out categories.
EXTRA = ("bias", "log_ratio", "abs_log_ratio", "near_boundary", "hot_area", "texture", "aligned", "in_band", "tool_reach")
VARIANTS = {
    "A three-way, labelled (the issue's setting)": ({}, "labelled"),
    "B two-way, labelled": ({"two_way": True}, "labelled"),
    "C two-way + band prior + reach, labelled": ({"two_way": True, "features": EXTRA, "band_prior": True}, "labelled"),
    "D three-way, labelled + synthetic": ({}, "both"),
    "E two-way, labelled + synthetic": ({"two_way": True}, "both"),
    "F two-way + band prior + reach, labelled + synthetic": ({"two_way": True, "features": EXTRA, "band_prior": True}, "both"),
    "G two-way + band prior + reach, synthetic only": ({"two_way": True, "features": EXTRA, "band_prior": True}, "synthetic"),
}
#: Declared after the first tables (A-G) were seen: group-std scaling of the advantage makes a useless
#: call (reward -0.04) weigh as much as a catch (+1); Dr. GRPO (Liu et al. 2025) leaves it out.
#: Comparing these with A-G is therefore post hoc.
LATE_VARIANTS = {
    "H three-way, labelled, no std scaling": ({"scale_rewards": False}, "labelled"),
    "I two-way, labelled, no std scaling": ({"two_way": True, "scale_rewards": False}, "labelled"),
    "J two-way + band prior + reach, labelled, no std scaling": (
        {"two_way": True, "features": EXTRA, "band_prior": True, "scale_rewards": False}, "labelled"),
    "K two-way + band prior + reach, labelled + synthetic, no std scaling": (
        {"two_way": True, "features": EXTRA, "band_prior": True, "scale_rewards": False}, "both"),
}


def nested(labelled: list, synthetic: list, seed: int) -> dict:
    """Leave-category-out where the variant itself is chosen per outer fold by an inner leave-one-out over the
    five training categories only (highest inner mean reward, then fewer tool calls); the held-out category's
    labels are never seen. Its synthetic material (good images only) is available to the variants that use it."""
    from iad_agent.training.gate import GateTrainConfig, compare, leave_category_out, train

    cats = sorted({o.category for o in labelled})
    per, chosen = {}, {}
    for held in cats:
        inner_l = [o for o in labelled if o.category != held]
        best = None
        for name, (settings, material) in VARIANTS.items():
            if material != "labelled" and not synthetic:
                continue
            config = replace(GateTrainConfig(seed=seed), **settings)
            inner = inner_l + ([o for o in synthetic if o.category != held] if material != "labelled" else [])
            m = leave_category_out(inner, config, labelled=material != "synthetic")["mean"]["learned"]
            key = (round(m["mean_reward"], 4), -m["tool_calls_per_image"])
            if best is None or key > best[0]:
                best = (key, name, config, material)
        _, name, config, material = best
        train_set = inner_l if material != "synthetic" else []
        train_set = train_set + (synthetic if material != "labelled" else [])
        gate = train(train_set, config)
        per[held] = compare(gate, [o for o in labelled if o.category == held], config.weights)
        chosen[held] = name
        print(f"nested: {held} <- {name}", file=sys.stderr)
    mean = {side: {k: float(np.mean([r[side][k] for r in per.values() if r[side][k] is not None]))
                   for k in ("balanced_accuracy", "tool_calls_per_image", "gate_calls_per_image", "mean_reward")}
            for side in ("learned", "hand_set")}
    return {"categories": per, "mean": mean, "chosen": chosen}


def more_draws(args: argparse.Namespace, seeds: list[int]) -> str:
    """Post hoc: the training categories' labelled rollouts under other reference draws (seeds) added to
    training; evaluation stays on the held-out category's seed-``args.seed`` images (its other draws unused)."""
    from iad_agent.training.gate import GateTrainConfig, compare, train

    labelled = _load(_cache(args))
    extra = [o for s in seeds for o in _load(_cache(argparse.Namespace(**{**vars(args), "seed": s})))]
    lines = [f"shots {args.shots}: training adds the reference draws of seeds {seeds} ({len(extra)} rollouts)", "",
             "| gate | balanced accuracy | tool calls / image | zoom + compare / image |", "|---|---|---|---|"]
    cats = sorted({o.category for o in labelled})
    for k, (name, (settings, material)) in enumerate({**VARIANTS, **LATE_VARIANTS}.items()):
        if material != "labelled" or (args.only and name.split()[0] not in args.only.split(",")):
            continue
        config = replace(GateTrainConfig(seed=args.seed), **settings)
        per = []
        for held in cats:
            gate = train([o for o in labelled + extra if o.category != held], config)
            per.append(compare(gate, [o for o in labelled if o.category == held], config.weights))
        mean = {side: {key: float(np.mean([r[side][key] for r in per])) for key in
                       ("balanced_accuracy", "tool_calls_per_image", "gate_calls_per_image")} for side in ("learned", "hand_set")}
        if not any(line.startswith("| hand") for line in lines):
            h = mean["hand_set"]
            lines.append(f"| hand-set band | {h['balanced_accuracy']:.3f} | {h['tool_calls_per_image']:.2f} | {h['gate_calls_per_image']:.2f} |")
        m = mean["learned"]
        lines.append(f"| {name} + draws {seeds} | {m['balanced_accuracy']:.3f} | {m['tool_calls_per_image']:.2f} "
                     f"({m['tool_calls_per_image'] / mean['hand_set']['tool_calls_per_image'] - 1:+.0%}) | {m['gate_calls_per_image']:.2f} |")
        print(name, file=sys.stderr)
    return "\n".join(lines) + "\n"


def _load(path: Path) -> list:
    outcomes = pickle.loads(path.read_bytes())
    for o in outcomes:  # caches written before the evidence dict had band_low / band_high
        if "band" in o.info:
            o.info["band_low"], o.info["band_high"] = o.info.pop("band")
    return outcomes


def table_cmd(args: argparse.Namespace) -> None:
    from iad_agent.training.gate import GateTrainConfig, leave_category_out

    if args.train_seeds:
        text = more_draws(args, [int(s) for s in args.train_seeds.split(",")])
        sys.stdout.write(text)
        if args.out:
            Path(args.out).write_text(text)
        return

    labelled = _load(_cache(args))
    synthetic = _load(_cache(args, True)) if _cache(args, True).exists() else []
    rows, raw = [], {}
    t0 = time.process_time()
    variants = {**VARIANTS, **LATE_VARIANTS} if args.late else VARIANTS
    if args.only:
        variants = {k: v for k, v in variants.items() if k.split()[0] in args.only.split(",")}
    for name, (settings, material) in variants.items():
        if material != "labelled" and not synthetic:
            continue
        config = replace(GateTrainConfig(seed=args.seed), **settings)
        outcomes = labelled + (synthetic if material != "labelled" else [])
        res = leave_category_out(outcomes, config, labelled=material != "synthetic")
        raw[name] = res
        rows.append((name, res["mean"]))
        print(f"{name}: {time.process_time() - t0:.0f} s CPU", file=sys.stderr)
    if args.nested:
        res = nested(labelled, synthetic, args.seed)
        name = "N nested choice of variant (inner leave-one-out, mean reward)"
        raw[name] = res
        rows.append((name, res["mean"]))
    hand = rows[0][1]["hand_set"]
    lines = [f"shots {args.shots}, seed {args.seed}, {len(labelled)} labelled images, {len(synthetic)} synthetic-material images", "",
             "| gate | balanced accuracy (mean of categories) | tool calls / image | zoom + compare calls / image | mean reward |",
             "|---|---|---|---|---|",
             f"| hand-set band [0.75, 1.5] | {hand['balanced_accuracy']:.3f} | {hand['tool_calls_per_image']:.2f} | "
             f"{hand['gate_calls_per_image']:.2f} | {hand['mean_reward']:.2f} |"]
    for name, mean in rows:
        m = mean["learned"]
        rel = lambda k: m[k] / hand[k] - 1 if hand[k] else 0.0  # noqa: E731
        lines.append(f"| {name} | {m['balanced_accuracy']:.3f} | {m['tool_calls_per_image']:.2f} ({rel('tool_calls_per_image'):+.0%}) | "
                     f"{m['gate_calls_per_image']:.2f} ({rel('gate_calls_per_image'):+.0%}) | {m['mean_reward']:.2f} |")
    lines += ["", "Per held-out category (balanced accuracy / tool calls per image), hand-set then each variant:", ""]
    cats = list(next(iter(raw.values()))["categories"])
    lines.append("| gate | " + " | ".join(cats) + " |")
    lines.append("|---" * (len(cats) + 1) + "|")
    first = next(iter(raw.values()))["categories"]
    lines.append("| hand-set | " + " | ".join(f"{first[c]['hand_set']['balanced_accuracy']:.3f} / {first[c]['hand_set']['tool_calls_per_image']:.2f}"
                                             for c in cats) + " |")
    for name, res in raw.items():
        lines.append(f"| {name.split()[0]} | " + " | ".join(
            f"{res['categories'][c]['learned']['balanced_accuracy']:.3f} / {res['categories'][c]['learned']['tool_calls_per_image']:.2f}"
            for c in cats) + " |")
    lines += ["", "What the gates can learn from (labelled images; synthetic material in brackets):", "",
              "| category | images | allow a tool | some action changes the verdict |", "|---|---|---|---|"]
    for c in cats:
        ev = [evidence([o for o in part if o.category == c]) for part in (labelled, synthetic)]
        lines.append(f"| {c} | {ev[0][0]} ({ev[1][0]}) | {ev[0][1]} ({ev[1][1]}) | {ev[0][2]} ({ev[1][2]}) |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1, default=float))


def evidence(outcomes: list) -> tuple[int, int, int]:
    """Images, images where some tool action is allowed, images where the actions' verdicts differ."""
    return (len(outcomes), sum(bool(o.mask[1:].any()) for o in outcomes),
            sum(len(set(o.verdicts)) > 1 for o in outcomes))


def drop_only_cmd(args: argparse.Namespace) -> None:
    """Post hoc probe of a gate that can only drop the band's calls: on each held-out category, look (as the
    hand-set gate looks) where the band looks AND the variant trained on the other categories looks; with
    ``--train-seeds``, those categories' rollouts under other reference draws are added to training."""
    from iad_agent.training.gate import GateTrainConfig, _balanced, greedy_actions, train

    labelled = _load(_cache(args))
    seeds = [int(s) for s in args.train_seeds.split(",") if s]
    extra = [o for s in seeds for o in _load(_cache(argparse.Namespace(**{**vars(args), "seed": s})))]
    cats = sorted({o.category for o in labelled})
    lines = [f"shots {args.shots}, seed {args.seed}, training adds draws {seeds or 'none'}: band AND variant (post hoc)", "",
             "| gate | balanced accuracy | tool calls / image |", "|---|---|---|"]
    for name, (settings, material) in {**VARIANTS, **LATE_VARIANTS}.items():
        if material != "labelled" or (args.only and name.split()[0] not in args.only.split(",")):
            continue
        config = replace(GateTrainConfig(seed=args.seed), **settings)
        accs, calls, hand_calls = [], [], []
        for held in cats:
            gate = train([o for o in labelled + extra if o.category != held], config)
            test = [o for o in labelled if o.category == held]
            picks = [len(o.verdicts) - 1 if a > 0 and any(t != "prior_retriever" for t in o.info["hand_tools"]) else 0
                     for o, a in zip(test, greedy_actions(gate, test))]
            accs.append(_balanced([o.verdicts[a] for o, a in zip(test, picks)], [o.label for o in test]))
            calls.append(float(np.mean([o.calls[a] for o, a in zip(test, picks)])))
            hand_calls.append(float(np.mean([o.calls[-1] for o in test])))
        lines.append(f"| band AND {name} | {np.mean(accs):.3f} | {np.mean(calls):.2f} ({np.mean(calls) / np.mean(hand_calls) - 1:+.0%}) |")
        print(name, file=sys.stderr)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text)


def bands_cmd(args: argparse.Namespace) -> None:
    """Analysis only (reads the held-out labels): the hand-set band [0.75, 1.5] narrowed to [lo, hi] (steps of
    0.01), each image inside it run as the hand-set gate ran it, each outside answered at once; the band with
    fewest calls at the hand-set band's balanced accuracy, and the narrowest symmetric one [1/t, t] that keeps it."""
    from iad_agent.training.gate import _balanced

    labelled = _load(_cache(args))
    cats = sorted({o.category for o in labelled})

    def run(lo: float, hi: float) -> tuple[float, float]:
        accs, calls = [], []
        for c in cats:
            held = [o for o in labelled if o.category == c]
            picks = [len(o.verdicts) - 1 if lo <= o.info["ratio"] <= hi else 0 for o in held]
            accs.append(_balanced([o.verdicts[a] for o, a in zip(held, picks)], [o.label for o in held]))
            calls.append(float(np.mean([o.calls[a] for o, a in zip(held, picks)])))
        return float(np.mean(accs)), float(np.mean(calls))

    hand = run(0.75, 1.5)
    grid = [round(x, 2) for x in np.arange(0.75, 1.505, 0.01)]
    best = min(((run(lo, hi)[1], lo, hi) for lo in grid for hi in grid if lo <= hi and run(lo, hi)[0] >= hand[0] - 1e-9))
    sym = min(((run(1 / t, t)[1], t) for t in grid if t >= 1 and run(1 / t, t)[0] >= hand[0] - 1e-9))
    text = (f"shots {args.shots}, seed {args.seed} (test labels read: analysis only)\n"
            f"hand-set band [0.75, 1.5]: balanced accuracy {hand[0]:.3f}, {hand[1]:.2f} calls / image\n"
            f"fewest calls at that accuracy: [{best[1]:.2f}, {best[2]:.2f}], {best[0]:.2f} calls ({best[0] / hand[1] - 1:+.0%})\n"
            f"narrowest symmetric band keeping it: [1/{sym[1]:.2f}, {sym[1]:.2f}], {sym[0]:.2f} calls ({sym[0] / hand[1] - 1:+.0%})\n")
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text)


def elpv_cmd(args: argparse.Namespace) -> None:
    """The unseen check set: ELPV (``experiments/lab.py: elpv_category``), each variant trained on all six
    shared-data categories (their synthetic material too, where the variant uses it) and compared with the
    hand-set band on ELPV's labelled images (at most ``--max-per-category``, both labels alike)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from lab import elpv_category

    from iad_agent.eval.plan import draw_references, parse_shots
    from iad_agent.product import Product
    from iad_agent.training.gate import GateTrainConfig, compare, outcome, train

    path = Path(args.cache) / f"outcomes_elpv_shots{args.shots}_seed{args.seed}.pkl"
    if not path.exists():
        cat = elpv_category()
        config = GateTrainConfig(shots=parse_shots([args.shots])[0], seed=args.seed)
        refs = draw_references(cat.pool, config.shots, config.seed, "elpv")
        product = Product.build("elpv", refs, allow_mixed_sizes=True)
        half = args.max_per_category // 2
        test = [s for s in cat.test if s.label == 0][:half] + [s for s in cat.test if s.label == 1][:half]
        outcomes = []
        for i, sample in enumerate(test):
            print(f"\r{i}/{len(test)} elpv", end="", file=sys.stderr)
            outcomes.append(outcome(product, sample, config))
        path.write_bytes(pickle.dumps(outcomes))
    held = _load(path)
    labelled = _load(_cache(args))
    synthetic = _load(_cache(args, True)) if _cache(args, True).exists() else []
    lines = [f"ELPV (unseen), shots {args.shots}, seed {args.seed}, {len(held)} images", "",
             "| gate | balanced accuracy | tool calls / image | zoom + compare calls / image |", "|---|---|---|---|"]
    for k, (name, (settings, material)) in enumerate(VARIANTS.items()):
        config = replace(GateTrainConfig(seed=args.seed), **settings)
        train_set = (labelled if material != "synthetic" else []) + (synthetic if material != "labelled" else [])
        res = compare(train(train_set, config), held, config.weights)
        if k == 0:
            h = res["hand_set"]
            lines.append(f"| hand-set band | {h['balanced_accuracy']:.3f} | {h['tool_calls_per_image']:.2f} | {h['gate_calls_per_image']:.2f} |")
        m = res["learned"]
        lines.append(f"| {name} | {m['balanced_accuracy']:.3f} | {m['tool_calls_per_image']:.2f} | {m['gate_calls_per_image']:.2f} |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["collect", "table", "elpv", "bands", "drop-only"])
    ap.add_argument("--shots", default="4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-per-category", type=int, default=60)
    ap.add_argument("--cache", default="/work/gate3-results")
    ap.add_argument("--out", default=None)
    ap.add_argument("--train-seeds", default="", help="table (post hoc): add these reference draws' rollouts to training")
    ap.add_argument("--late", action="store_true", help="table: add the variants declared after the first tables")
    ap.add_argument("--only", default="", help="table: only these variant letters, comma-separated (e.g. A,H)")
    ap.add_argument("--nested", action="store_true", help="table: add the nested-leave-one-out choice of variant")
    ap.add_argument("--synthetic", action="store_true", help="collect: only the synthetic material (good pool images + defects)")
    args = ap.parse_args()
    {"collect": collect_cmd, "table": table_cmd, "elpv": elpv_cmd, "bands": bands_cmd, "drop-only": drop_only_cmd}[args.step](args)


if __name__ == "__main__":
    main()
