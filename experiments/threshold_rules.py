"""Other threshold rules from the same held-out good images (issue 11 item 4; scratch).

Reads a ``calib.py --package`` dump (each group's held-out good scores, synthetic defect scores,
test scores and the scores of *other* good images of the pool, none of them references) and asks
how far each rule's threshold lies from where it should be: the pool's 95th percentile (the
promise is a 5 % false-alarm rate on good parts). A rule is ``c · f(held-out scores)``, with one
constant ``c`` for every product: the median over groups of ``pool q95 / f``, fitted either on all
groups or leave-one-category-out (LOCO: ``c`` from the other categories only). Test labels are read
only to report balanced accuracy, never to fit anything.

    python experiments/calib.py --package --shots 4,1 --out /work/thr/dump.jsonl
    python experiments/threshold_rules.py rules --dump /work/thr/dump.jsonl --shots 4
    python experiments/threshold_rules.py spread --dump /work/thr/dump.jsonl --shots 4   # also --shots all (dump_all)
    python experiments/threshold_rules.py one --dump /work/thr/dump.jsonl            # one shot: synthetic level
    python experiments/threshold_rules.py shift --dump /work/thr/dump.jsonl          # one shot: views shift
    python experiments/threshold_rules.py split --dump /work/split/dump.jsonl        # one shot: the image cut in two
    PYTHONPATH=src python experiments/threshold_rules.py views --out /work/thr/views4.jsonl
    python experiments/threshold_rules.py rules --dump /work/thr/dump.jsonl --shots 4 --views /work/thr/views4.jsonl

``views``: at 4 shots, 8 augmented views of each reference scored against the bank without it —
32 held-out scores instead of 4 (``vision.learn.augmented_views``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

Z = NormalDist().inv_cdf(0.95)


def current(r: dict) -> float:
    """The package's rule before these measurements (the dump's groups were registered under it): normal fit
    (std floored at 5 % of the mean) × bank-size factor; at one shot moved up by 1.18, capped at the synthetic
    defects' median. The rules adopted since: ``spread`` (2–7 good images) and ``one`` (one good image)."""
    return shifted(r, normal_fit(r) * r["factor"], 1.18)


def normal_fit(r: dict) -> float:
    s = np.array(r["held"])
    return float(s.mean() + Z * max(s.std(ddof=1), 0.05 * s.mean()))


def shifted(r: dict, base: float, shift: float, cap: bool = True) -> float:
    if r["method"] == "leave-one-out":
        return base
    return min(base * shift, max(base, float(np.median(r["syn_scores"])))) if cap else base * shift


def metrics(r: dict, t: float) -> np.ndarray:
    y, s = np.array(r["test_y"]), np.array(r["test"])
    flagged = s >= t
    far, miss = flagged[y == 0].mean(), (~flagged[y == 1]).mean()
    pool = np.array(r["pool"])
    return np.array([far, miss, 1 - (far + miss) / 2, (pool >= t).mean() if pool.size else np.nan])


def report(rows: list[dict], name: str, thr) -> None:  # noqa: ANN001 - row -> threshold
    cats = sorted({r["cat"] for r in rows})
    per = {c: np.mean([metrics(r, thr(r)) for r in rows if r["cat"] == c], 0) for c in cats}
    dev = np.mean([per[c] for c in cats if c != "elpv"], 0)
    e = per.get("elpv", np.full(4, np.nan))
    print(f"{name:26s} dev bal. acc. {dev[2]:.3f} FAR {dev[0]:.3f} miss {dev[1]:.3f} pool FAR {dev[3]:.3f} | "
          f"ELPV {e[2]:.3f} FAR {e[0]:.3f} | " + " ".join(f"{c[:4]} {per[c][2]:.2f}/{per[c][0]:.2f}" for c in cats))


def rules_cmd(a: argparse.Namespace) -> None:
    rows = [r for r in map(json.loads, open(a.dump)) if str(r["shots"]) == a.shots]
    views = {}
    if a.views:
        views = {(r["cat"], r["seed"]): r["views"] for r in map(json.loads, open(a.views))}
    f = {"mean": lambda r: np.mean(r["held"]), "median": lambda r: np.median(r["held"]),
         "min": lambda r: np.min(r["held"]), "max": lambda r: np.max(r["held"]),
         "second lowest": lambda r: np.sort(r["held"])[1],
         "mean x factor": lambda r: np.mean(r["held"]) * r["factor"],
         "gm(min, mean)": lambda r: np.sqrt(np.min(r["held"]) * np.mean(r["held"])),
         "synthetic median": lambda r: np.median(r["syn_scores"])}
    f["gm(mean, synthetic median)"] = lambda r: np.sqrt(np.mean(r["held"]) * np.median(r["syn_scores"]))
    if all("split_refs" in r for r in rows):  # SPLIT_ALL=1 calib.py: each reference cut in two
        f["split (refs' mean)"] = lambda r: np.mean(r["split_refs"])
        f["gm(mean, split)"] = lambda r: np.sqrt(np.mean(r["held"]) * np.mean(r["split_refs"]))
        f["gm(mean, split, synthetic median)"] = lambda r: np.cbrt(
            np.mean(r["held"]) * np.mean(r["split_refs"]) * np.median(r["syn_scores"]))
    if views:
        rows = [r for r in rows if (r["cat"], r["seed"]) in views]
        f["views median"] = lambda r: np.median(views[(r["cat"], r["seed"])])
        f["gm(mean, views median)"] = lambda r: np.sqrt(np.mean(r["held"]) * np.median(views[(r["cat"], r["seed"])]))
    target = {id(r): float(np.quantile(r["pool"], 0.95)) for r in rows}
    print(f"shots {a.shots}, {len(rows)} groups; log-std = spread over groups of log(pool q95 / rule) (smaller: one c fits all)")
    lr = np.array([np.log(target[id(r)] / current(r)) for r in rows])
    print(f"{'current rule':26s} ratio median {np.exp(np.median(lr)):.3f} log-std {lr.std():.3f}")
    for name, fn in f.items():
        lr = np.array([np.log(target[id(r)] / fn(r)) for r in rows])
        print(f"{name:26s} c = {np.exp(np.median(lr)):.3f} log-std {lr.std():.3f}")
    report(rows, "current rule", current)
    for name, fn in f.items():
        c_all = float(np.median([target[id(o)] / fn(o) for o in rows]))
        report(rows, f"{name} (c all)", lambda r, fn=fn, c=c_all: c * fn(r))
        report(rows, f"{name} (c LOCO)", lambda r, fn=fn: float(np.median(
            [target[id(o)] / fn(o) for o in rows if o["cat"] != r["cat"]])) * fn(r))


def spread_cmd(a: argparse.Namespace) -> None:
    """The package's rule (mean · (1 + z · spread), no bank-size factor) for several spreads, beside the old one."""
    rows = [r for r in map(json.loads, open(a.dump)) if str(r["shots"]) == a.shots]
    report(rows, "normal fit x factor (old)", lambda r: normal_fit(r) * r["factor"])
    for cv in (0.03, 0.04, 0.05, 0.06, 0.07):
        report(rows, f"mean (1 + z {cv})", lambda r, cv=cv: float(np.mean(r["held"])) * (1 + Z * cv))
        report(rows, f"mean (1 + z {cv}) x factor", lambda r, cv=cv: float(np.mean(r["held"])) * (1 + Z * cv) * r["factor"])


def shrunk(r: dict, nu0: float, cv0: float = 0.05, floor: bool = False, t: bool = False) -> float:
    """``mean · (1 + z · cv)`` where ``cv²`` pools the prior spread ``cv0`` (``nu0`` pseudo-scores) with the
    held-out scores' own relative spread (``n − 1`` degrees of freedom), as a conjugate normal prior on the
    variance would; ``floor``: never below ``cv0``; ``t``: Student's t predictive quantile instead of z."""
    s = np.array(r["held"], dtype=np.float64)
    n, m = s.size, float(s.mean())
    cv_obs = float(s.std(ddof=1)) / m if n > 1 else 0.0
    cv = float(np.sqrt((nu0 * cv0**2 + (n - 1) * cv_obs**2) / (nu0 + n - 1)))
    if floor:
        cv = max(cv, cv0)
    q = Z
    if t:
        from scipy.stats import t as student
        q = float(student.ppf(0.95, nu0 + n - 1)) * np.sqrt(1 + 1 / n)
    return m * (1 + q * cv)


def shrink_cmd(a: argparse.Namespace) -> None:
    """The held-out scores' own spread pooled with the prior spread (2–7 good images), beside the package's rule."""
    rows = [r for r in map(json.loads, open(a.dump)) if str(r["shots"]) == a.shots]
    target = {id(r): float(np.quantile(r["pool"], 0.95)) for r in rows}

    def fit(fn) -> str:  # noqa: ANN001
        lr = np.array([np.log(target[id(r)] / fn(r)) for r in rows])
        return f"ratio median {np.exp(np.median(lr)):.3f} log-std {lr.std():.3f}"

    pkg = lambda r: float(np.mean(r["held"])) * (1 + Z * 0.05)  # noqa: E731
    print(f"{'package: mean (1 + z 0.05)':32s} {fit(pkg)}")
    report(rows, "package: mean (1 + z 0.05)", pkg)
    for nu0 in (1, 3, 6, 12):
        for floor in (False, True):
            fn = lambda r, nu0=nu0, floor=floor: shrunk(r, nu0, floor=floor)  # noqa: E731
            name = f"pooled nu0={nu0}{' floor' if floor else ''}"
            print(f"{name:32s} {fit(fn)}")
            report(rows, name, fn)
    for r in rows:
        s = np.array(r["held"])
        print(f"  {r['cat'][:12]:12s} s={r['seed']} cv_obs {s.std(ddof=1) / s.mean():.3f} pool q95/mean "
              f"{target[id(r)] / s.mean():.3f}")


def shift_cmd(a: argparse.Namespace) -> None:
    rows = [r for r in map(json.loads, open(a.dump)) if str(r["shots"]) == "1"]
    report(rows, "current (1.18, capped)", current)
    for sh in (1.0, 1.1, 1.25, 1.3, 1.4):
        report(rows, f"shift {sh} capped", lambda r, sh=sh: shifted(r, normal_fit(r), sh))
        report(rows, f"shift {sh} not capped", lambda r, sh=sh: shifted(r, normal_fit(r), sh, cap=False))


def one_cmd(a: argparse.Namespace) -> None:
    """One good image: the synthetic defects' median (and other statistics) as the threshold's level."""
    rows = [r for r in map(json.loads, open(a.dump)) if str(r["shots"]) == "1"]
    syn = lambda r: float(np.median(r["syn_scores"]))  # noqa: E731
    f = {"synthetic median": syn, "synthetic mean": lambda r: float(np.mean(r["syn_scores"])),
         "synthetic lower quartile": lambda r: float(np.quantile(r["syn_scores"], 0.25)),
         "gm(package's rule, synthetic median)": lambda r: float(np.sqrt(current(r) * syn(r)))}
    target = {id(r): float(np.quantile(r["pool"], 0.95)) for r in rows}
    lr = np.array([np.log(target[id(r)] / current(r)) for r in rows])
    print(f"{'views fit x 1.18, capped':38s} ratio median {np.exp(np.median(lr)):.3f} log-std {lr.std():.3f}")
    report(rows, "views fit x 1.18, capped", current)
    for name, fn in f.items():
        lr = np.array([np.log(target[id(r)] / fn(r)) for r in rows])
        locos = {c: float(np.median([target[id(o)] / fn(o) for o in rows if o["cat"] != c])) for c in {r["cat"] for r in rows}}
        c_all = float(np.exp(np.median(lr)))
        print(f"{name:38s} c = {c_all:.3f} (left-one-category-out {min(locos.values()):.3f}-{max(locos.values()):.3f}) "
              f"log-std {lr.std():.3f}")
        report(rows, f"{name} (c all)", lambda r, fn=fn, c=c_all: c * fn(r))
        report(rows, f"{name} (c LOCO)", lambda r, fn=fn, locos=locos: locos[r["cat"]] * fn(r))


def split_cmd(a: argparse.Namespace) -> None:
    """One good image: the image cut in two (each half against a bank of the other half) as the threshold's level,
    alone or beside the synthetic defects' median (``calib.split_scores``)."""
    rows = [r for r in map(json.loads, open(a.dump)) if str(r["shots"]) == "1" and "split" in r]
    syn = lambda r: float(np.median(r["syn_scores"]))  # noqa: E731
    target = {id(r): float(np.quantile(r["pool"], 0.95)) for r in rows}

    def fitted(fn):  # noqa: ANN001, ANN202 - row -> level; (c, LOCO c per category, log-std)
        lr = np.array([np.log(target[id(r)] / fn(r)) for r in rows])
        locos = {c: float(np.median([target[id(o)] / fn(o) for o in rows if o["cat"] != c])) for c in {r["cat"] for r in rows}}
        return float(np.exp(np.median(lr))), locos, float(lr.std())

    f = {"synthetic median": syn, "split mean": lambda r: float(np.mean(r["split"])),
         "split max": lambda r: float(np.max(r["split"])), "split median": lambda r: float(np.median(r["split"])),
         "split long axis mean": lambda r: float(np.mean(r["split"][:2])),
         "gm(split mean, synthetic median)": lambda r: float(np.sqrt(np.mean(r["split"]) * syn(r)))}
    if all("mirror" in r for r in rows):  # MIRROR=1 calib.py: the image against its mirror images
        f["mirror mean"] = lambda r: float(np.mean(r["mirror"]))
        f["mirror min"] = lambda r: float(np.min(r["mirror"]))
        f["gm(mirror mean, synthetic median)"] = lambda r: float(np.sqrt(np.mean(r["mirror"]) * syn(r)))
        f["gm(mirror min, synthetic median)"] = lambda r: float(np.sqrt(np.min(r["mirror"]) * syn(r)))
        f["gm(split mean, mirror mean)"] = lambda r: float(np.sqrt(np.mean(r["split"]) * np.mean(r["mirror"])))
        f["gm(split, mirror, synthetic median)"] = lambda r: float(np.cbrt(np.mean(r["split"]) * np.mean(r["mirror"]) * syn(r)))
    fits = {}
    for name, fn in f.items():
        c, locos, ls = fits[name] = fitted(fn)
        print(f"{name:34s} c = {c:.3f} (LOCO {min(locos.values()):.3f}-{max(locos.values()):.3f}) log-std {ls:.3f}")
    for r in rows:
        print(f"  {r['cat'][:10]:10s} s{r['seed']} pool q95 {target[id(r)]:.3f} syn med {syn(r):.3f} "
              f"split {np.round(r['split'], 3)}" + (f" mirror {np.round(r['mirror'], 3)}" if "mirror" in r else ""))
    for name, fn in f.items():
        c, locos, _ = fits[name]
        report(rows, f"{name} (c all)", lambda r, fn=fn, c=c: c * fn(r))
        report(rows, f"{name} (c LOCO)", lambda r, fn=fn, locos=locos: locos[r["cat"]] * fn(r))
    cs, cp = fits["synthetic median"][0], fits["split mean"][0]
    report(rows, "min(split mean, synthetic)", lambda r: min(cs * syn(r), cp * float(np.mean(r["split"]))))


def views_cmd(a: argparse.Namespace) -> None:
    import calib
    from iad_agent.eval.runner import set_threads
    from iad_agent.imageio import load_image
    from iad_agent.vision.learn import augmented_views
    from iad_agent.vision.normal_bank import image_score
    from iad_agent.vision.similarity import self_similarity_map

    set_threads(1)
    out = Path(a.out)
    done = {(r["cat"], r["seed"]) for r in map(json.loads, open(out))} if out.exists() else set()
    with out.open("a") as fh:
        for cat, _, seed, refs, _, _ in calib.groups(None, True, 100, ["4"]):
            if (cat, seed) in done:
                continue
            config = calib.package_config(refs)
            bank, cal = calib.learned_bank(refs, config=config)
            per = []
            for i, p in enumerate(refs):
                scores = []
                for g in calib.extractor(config)(augmented_views(load_image(p), n=8, seed=i)):
                    g = np.asarray(g, np.float32)
                    fused = bank.scoring.fuse(bank.patch_distances(g, exclude=i),
                                              self_similarity_map(g) if bank.scoring.uses_self else None)
                    scores.append(image_score(fused))
                per.append(scores)
            calib.emit(fh, {"cat": cat, "seed": seed, "views": per, "held": cal.global_scores})


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rules")
    r.add_argument("--dump", required=True)
    r.add_argument("--shots", default="4")
    r.add_argument("--views", default="")
    p = sub.add_parser("spread")
    p.add_argument("--dump", required=True)
    p.add_argument("--shots", default="4")
    o = sub.add_parser("one")
    o.add_argument("--dump", required=True)
    s = sub.add_parser("shift")
    s.add_argument("--dump", required=True)
    sp = sub.add_parser("split")
    sp.add_argument("--dump", required=True)
    sh = sub.add_parser("shrink")
    sh.add_argument("--dump", required=True)
    sh.add_argument("--shots", default="4")
    v = sub.add_parser("views")
    v.add_argument("--out", required=True)
    a = ap.parse_args()
    {"rules": rules_cmd, "spread": spread_cmd, "one": one_cmd, "shift": shift_cmd, "split": split_cmd,
     "views": views_cmd, "shrink": shrink_cmd}[a.cmd](a)


if __name__ == "__main__":
    main()
