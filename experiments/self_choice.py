"""How the self-similarity weight is chosen: AUROC on 16 synthetic defects, or a smoother criterion?

The weight ``w`` of ``(1 − w)·knn + w·self`` is chosen at registration by the synthetic defects'
AUROC against the held-out good images (``vision.scoring.choose_scoring``): at 4 shots that is
4 good scores × 16 defects, so candidates often tie at 1.0 or differ by one pair, and the choice
flips between seeds of one product (grid seed 1: 0.5 where 0.75–1 suit it). Here, per k-shot group
of the ``iad eval`` protocol (6 dev categories + ELPV), the maps are computed once and every
candidate weight's test AUROC is written beside what each choice rule sees:

* ``auroc16`` — today's rule (AUROC, a larger weight must win by 0.02; one shot: ties to larger);
* ``auroc32`` — the same on 32 synthetic defects;
* ``gap`` — the separation in spread units: mean log score of the defects minus that of the good
  images, over their pooled standard deviation (never saturates);
* ``auroc+gap`` — AUROC first, the gap among candidates within the margin of the best.

    PYTHONPATH=src:experiments python experiments/self_choice.py dump --out /work/selfw/selfw.jsonl
    PYTHONPATH=src:experiments python experiments/self_choice.py summary /work/selfw/selfw.jsonl
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

import calib

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
MARGIN = 0.02


def scores(knn, self_, kl, sl, w):
    from iad_agent.vision.normal_bank import image_score

    return np.array([image_score((1 - w) * k / kl + (w * m / sl if w > 0 else 0)) for k, m in zip(knn, self_)])


def gap(neg: np.ndarray, pos: np.ndarray) -> float:
    ln, lp = np.log(np.maximum(neg, 1e-9)), np.log(np.maximum(pos, 1e-9))
    pooled = np.sqrt((ln.var(ddof=1) * (len(ln) - 1) + lp.var(ddof=1) * (len(lp) - 1)) / max(1, len(ln) + len(lp) - 2))
    return float((lp.mean() - ln.mean()) / max(pooled, 1e-9))


def choose(au: dict, gp: dict, rule: str, one_shot: bool, margin: float = MARGIN) -> float:
    ws = list(au)
    if rule.startswith("auroc") and rule != "auroc+gap":
        best_w, best = ws[0], -1.0
        for w in ws:
            if au[w] > best + (margin if float(w) > 0 and not one_shot else 0) or (one_shot and au[w] == best):
                best_w, best = w, au[w]
        return best_w
    if rule == "gap":
        return max(ws, key=lambda w: (gp[w], float(w) if one_shot else -float(w)))
    if rule == "auroc+gap":
        top = max(au.values())
        return max([w for w in ws if au[w] >= top - MARGIN], key=lambda w: gp[w])
    raise ValueError(rule)


def dump(out_path: str, cats, shots, max_bad: int, max_held_out: int = 8) -> None:
    from iad_agent.eval.runner import set_threads
    from iad_agent.vision.learn import learn
    from iad_agent.vision.scoring import _auroc

    set_threads(1)
    calib.smoothed_self()  # its figures in experiments/README.md predate learn.SELF_RAW
    with open(out_path, "a") as out:
        for cat, k, seed, refs, test, y in calib.groups(cats, True, max_bad, shots):
            config = calib.package_config(refs)
            mat: dict = {}
            bank = calib.NormalBank(config)
            bank.add([calib.grid_of(p, config) for p in refs], [str(p) for p in refs])
            bank.scoring, _ = learn(bank, calib.extractor(config), lambda i: calib.load_image(refs[i]), 0.05,
                                    n_synthetic=32, max_held_out=max_held_out, material=mat)
            d = np.array(mat["defect"])
            knn, self_ = mat["knn"], mat["self"]
            s = bank.scoring
            kl, sl = s.knn_level, s.self_level
            tk = [bank.patch_distances(calib.grid_of(smp.image_path, config)) for smp in test]
            ts = [calib.self_map_of(smp.image_path, config) for smp in test]
            row = dict(cat=cat, shots=str(k), seed=seed, w32=s.self_weight, test={}, au16={}, au32={},
                       gap16={}, gap32={})
            syn_idx = np.flatnonzero(d)
            from iad_agent.vision.normal_bank import image_score
            pmax = np.array([image_score(np.maximum(a / kl, b / sl)) for a, b in zip(tk, ts)])
            imax = np.array([max(image_score(a) / kl, image_score(b) / sl) for a, b in zip(tk, ts)])
            row["extra"] = {"pmax": round(_auroc(pmax[y == 0], pmax[y == 1]), 4),
                            "imax": round(_auroc(imax[y == 0], imax[y == 1]), 4)}
            hp = np.array([image_score(np.maximum(a / kl, b / sl)) for a, b in zip(knn, self_)])
            row["extra_syn"] = {"pmax": round(_auroc(hp[~d][:], hp[syn_idx[:16]]), 4)}
            for w in WEIGHTS:
                key = str(w)
                t = scores(tk, ts, kl, sl, w)
                row["test"][key] = round(_auroc(t[y == 0], t[y == 1]), 4)
                h = scores(knn, self_, kl, sl, w)
                neg, pos = h[~d], h[d]
                pos16 = h[syn_idx[:16]]
                row["au16"][key] = round(_auroc(neg, pos16), 4)
                row["au32"][key] = round(_auroc(neg, pos), 4)
                row["gap16"][key] = round(gap(neg, pos16), 4)
                row["gap32"][key] = round(gap(neg, pos), 4)
            calib.emit(out, row)


RULES = {"auroc16": ("au16", "gap16", "auroc"), "auroc32": ("au32", "gap32", "auroc"),
         "gap16": ("au16", "gap16", "gap"), "gap32": ("au32", "gap32", "gap"),
         "auroc+gap16": ("au16", "gap16", "auroc+gap"), "auroc+gap32": ("au32", "gap32", "auroc+gap"),
         "auroc16_m0": ("au16", "gap16", "auroc", 0.0), "auroc32_m0": ("au32", "gap32", "auroc", 0.0),
         "auroc16_m01": ("au16", "gap16", "auroc", 0.01), "auroc32_m01": ("au32", "gap32", "auroc", 0.01)}


def summary(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        one = r["shots"] == "1"
        for name, (a, g, rule, *m) in RULES.items():
            w = choose(r[a], r[g], rule, one, *m)
            by[(r["shots"], r["cat"])][name].append(r["test"][w])
            by[(r["shots"], r["cat"])][name + "_w"].append(float(w))
        by[(r["shots"], r["cat"])]["oracle"].append(max(r["test"].values()))
        for n, v in r.get("extra", {}).items():
            by[(r["shots"], r["cat"])][n].append(v)
        for w in WEIGHTS:
            by[(r["shots"], r["cat"])][f"w={w}"].append(r["test"][str(w)])
    names = list(RULES) + [f"w={w}" for w in WEIGHTS] + ["oracle"] + (["pmax", "imax"] if "extra" in rows[0] else [])
    calib.means_table(by, names, per_row=lambda d: "|  | (weights) | " + " | ".join(
        " ".join(f"{x:g}" for x in d[n + "_w"]) if n in RULES else "" for n in names) + " |")


def main() -> None:
    ap, d = calib.dump_summary_parser()
    d.add_argument("--max-held-out", type=int, default=8)
    a = ap.parse_args()
    if a.cmd == "dump":
        dump(a.out, a.cats, a.shots, a.max_bad, a.max_held_out)
    else:
        summary(a.path)


if __name__ == "__main__":
    main()
