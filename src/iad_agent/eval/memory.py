"""Peak memory and latency of one product with many registered normals (the "bounded memory" check).

No category of the shared data has 200 good images, so this registers the first ``n`` normal
images found across all datasets under the data root (mixed products and sizes: the memory of
a normal bank depends on the number of images and the coreset bound, not on what they show),
then inspects ``queries`` test images with the embedded policy::

    python -m iad_agent.eval.memory --normals 200 --queries 20 > results/memory.json

Peak memory is the process's ``VmHWM`` (reset before registration), so it includes Python,
torch, the backbone and the product.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def measure(n_normals: int = 200, n_queries: int = 20, policy: str = "embedded") -> dict:
    """Register ``n_normals`` good images as one product and inspect ``n_queries`` test images.

    Raises:
        ValueError: fewer than ``n_normals`` normal images under the data root.
    """
    from iad_agent.datasets import load_dataset
    from iad_agent.eval.plan import available_datasets, split_dataset
    from iad_agent.eval.runner import peak_rss_mb, reset_peak_rss, set_threads
    from iad_agent.inspector import Inspector
    from iad_agent.policies import resolve_policy
    from iad_agent.product import Product

    set_threads(1)
    normals, queries = [], []
    for dataset, root in available_datasets():
        samples = load_dataset(dataset, root)
        by_category: dict[str, list] = {}
        for s in samples:
            by_category.setdefault(s.category, []).append(s)
        for cat_samples in by_category.values():
            split = split_dataset(cat_samples, max_normals=10_000)
            normals += split.pool
            queries += [s.image_path for s in split.test]
    if len(normals) < n_normals:
        raise ValueError(f"only {len(normals)} normal images found, fewer than --normals {n_normals}")
    normals = normals[:n_normals]
    step = max(1, len(queries) // max(n_queries, 1))
    queries = queries[::step][:n_queries]
    reset_peak_rss()
    t0 = time.perf_counter()
    product = Product.build("memory-check", normals, allow_mixed_sizes=True)
    build_s = time.perf_counter() - t0
    after_build = peak_rss_mb()
    resolved = resolve_policy(policy)
    inspector = Inspector(product, resolved.policy, resolved.tools)
    ms = []
    for path in queries:
        t = time.perf_counter()
        inspector.inspect(path)
        ms.append((time.perf_counter() - t) * 1000)
    ms.sort()
    return {
        "normals": len(product.bank),
        "bank_patches": int(product.bank.memory.shape[0]),
        "queries": len(queries),
        "policy": policy,
        "build_s": round(build_s, 1),
        "peak_rss_mb_after_build": round(after_build, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "ms_per_image_p50": round(ms[len(ms) // 2], 1) if ms else None,
        "cores": os.cpu_count(),
        "threads": 1,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m iad_agent.eval.memory " + " ".join(sys.argv[1:]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--normals", type=int, default=200)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--policy", default="embedded")
    args = parser.parse_args(argv)
    try:
        result = measure(args.normals, args.queries, args.policy)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
