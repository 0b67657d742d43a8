"""Run benchmark groups: register each group's product, inspect its test images with every policy.

A *group* is one ``(dataset, category, shots, seed)``: its k good references are drawn with
the seed, ONE product is registered from them (threshold set from those good images alone,
never from the test split), and every policy inspects every test image against it. The
query's features, global look and heat map are computed once per image and shared by the
policies; each policy's latency is that shared part plus its own agent loop, so the figures
stay per-policy end-to-end times.

Groups run one after the other, or in spawned worker processes (``workers > 1``); only the
parent process writes ``records.jsonl``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from iad_agent.eval.plan import SHOTS_ZERO, EvalConfig, Group
from iad_agent.eval.records import (
    RECORDS_FILE,
    PolicyRun,
    append_record,
    downsample_map,
    downsample_size,
    group_record,
    image_row,
    save_examples,
)
from iad_agent.episode import PreparedQuery
from iad_agent.inspector import Inspector
from iad_agent.policies import policy_label, resolve_policy
from iad_agent.product import Product
from iad_agent.tools.cache import ToolCache, cached_tools
from iad_agent.vision.features import feature_memo

log = logging.getLogger(__name__)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ``clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``VmHWM``; ``ru_maxrss`` where unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_group(group: Group, config: EvalConfig, out_dir: Path,
              on_image: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate the group's policies and append their records to ``out_dir/records.jsonl``."""
    records = evaluate_group(group, config, out_dir, on_image)
    for record in records:
        append_record(Path(out_dir) / RECORDS_FILE, record)
    return records


def evaluate_group(group: Group, config: EvalConfig, out_dir: Path,
                   on_image: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate the group's policies: one record per policy (example tiles go to ``out_dir/examples``).

    Each test image is prepared once (features, global look, heat map) and every policy's
    inspector starts from that prepared query; tool calls repeated across policies are
    answered from a shared cache and charged their original cost, so each policy's latency
    is what it would be alone.

    Args:
        on_image: called with the number of inspections just finished (progress bars).
    """
    from iad_agent.tools.priors import domain_priors

    if group.shots == SHOTS_ZERO:
        from iad_agent.eval.zeroshot import evaluate_zero_shot_group

        return evaluate_zero_shot_group(group, config, out_dir, on_image)
    start = time.perf_counter()
    reset_peak_rss()
    priors = domain_priors(group.category)
    cache = ToolCache()
    runs = []
    for label in group.policies:
        resolved = resolve_policy(_name_for(label, config), config.disable_tools, config.policy_options, registering=True)
        runs.append(PolicyRun(label, resolved.policy, cached_tools(resolved.tools, cache), resolved.disabled,
                              registration=resolved.registration))
    # one product per registration setting (the default, and e.g. embedded-no-brightness's)
    keys = list(dict.fromkeys(run.registration for run in runs))
    products: dict[tuple, Product] = {}
    build_ms: dict[tuple, list[float]] = {key: [] for key in keys}

    # Products that differ only after the network (embedded-no-clip's uncapped patch vectors) run
    # the backbone once per image between them; with one product nothing is kept.
    memo_context = feature_memo() if len(keys) > 1 else contextlib.nullcontext()
    with memo_context as memo:
        def replayed() -> tuple[float, float]:  # what the memo's hits saved so far, charged back below
            return memo.replayed() if memo is not None else (0.0, 0.0)

        def build(references: list) -> None:
            built: dict[tuple, tuple[Product, float]] = {}
            for key in sorted(keys, key=len):  # the default product first
                same = key
                if ("brightness", False) in key and () in built and built[()][0].bank.config.brightness is None:
                    same = tuple(kv for kv in key if kv != ("brightness", False))  # not matched anyway: the same product
                if same not in built:
                    t0, saved = time.perf_counter(), replayed()[0]
                    product = Product.build(group.category, references, config.features, fpr=config.fpr, priors=priors,
                                            allow_mixed_sizes=True, **dict(same))
                    built[same] = product, (time.perf_counter() - t0) * 1000 + replayed()[0] - saved
                products[key] = built[same][0]
                build_ms[key].append(built[same][1])

        if group.protocol != "given":
            build(group.references)
        masks: list[np.ndarray | None] = []
        pixel_ok: list[bool] = []
        for sample in group.test:
            if group.protocol == "given":
                build(list(sample.references))
            for run in runs:
                if run.inspector is None or run.inspector.product is not products[run.registration]:
                    run.inspector = Inspector(products[run.registration], run.policy, run.tools, max_steps=config.max_steps)
            prepared: dict[int, PreparedQuery] = {}  # by product: each product's features of the image, once
            for run in runs:
                if id(run.inspector.product) not in prepared:
                    saved = replayed()
                    query = prepared[id(run.inspector.product)] = run.inspector.prepare(sample.image_path)
                    query.ms += replayed()[0] - saved[0]
                    query.cpu_ms += replayed()[1] - saved[1]
            first = next(iter(prepared.values()))
            size = downsample_size(first.image.width, first.image.height)
            gt = sample.ground_truth_mask(size=size)
            masks.append(gt)
            pixel_ok.append(gt is not None and (sample.mask_path is not None or not sample.is_anomalous))
            shared_maps: dict[int, np.ndarray] = {}  # policies answering from the same look share its map
            cache.new_query()
            for run in runs:
                cache.new_run()
                query = prepared[id(run.inspector.product)]
                t0, c0, saved = time.perf_counter(), time.process_time(), replayed()
                result = run.inspector.inspect(query, sample)
                ms = query.ms + (time.perf_counter() - t0) * 1000 + cache.replayed_ms + replayed()[0] - saved[0]
                cpu_ms = query.cpu_ms + (time.process_time() - c0) * 1000 + cache.replayed_cpu_ms + replayed()[1] - saved[1]
                map_key = id(result.heatmap)
                if map_key not in shared_maps:
                    shared_maps[map_key] = downsample_map(result.heatmap, size).astype(np.float16)
                run.maps.append(shared_maps[map_key])
                run.rows.append(image_row(group, run.label, sample, result, ms, cpu_ms, gt))
                if on_image:
                    on_image(1)
    peak = peak_rss_mb()
    wall = time.perf_counter() - start
    records = []
    pixel_cache: dict[bytes, tuple] = {}
    for run in runs:
        record = group_record(group, run, masks, pixel_ok, pixel_cache, build_ms[run.registration],
                              products.get(run.registration), peak, wall)
        if group.examples:
            record["examples"] = save_examples(group, run, masks, Path(out_dir))
        records.append(record)
    return records


def _name_for(label: str, config: EvalConfig) -> str:
    """The policy name a label came from (undo the ``--disable-tool`` suffixes)."""
    for name in config.policies:
        if policy_label(name, config.disable_tools) == label:
            return name
    return label


def set_threads(threads: int) -> None:
    """Threads of torch, faiss (OpenMP) and numpy/scipy (OpenBLAS) in this process.

    On a busy machine, more threads than free cores make every parallel region wait for the
    slowest thread (we measured one 256 px feature extraction at 40 ms with one thread and
    over 1 s with two while other processes ran), so the harness sets this explicitly. The
    BLAS pools matter too: the tools' matrix products would otherwise use every core.
    """
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, threads))
    faiss.omp_set_num_threads(max(1, threads))
    threadpool_limits(limits=max(1, threads))


_PROGRESS_QUEUE = None


def _worker_init(threads: int, queue) -> None:  # noqa: ANN001 - multiprocessing queue
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = queue
    set_threads(threads)


def _worker_evaluate(group: Group, config: EvalConfig, out_dir: Path) -> list[dict[str, Any]]:
    return evaluate_group(group, config, out_dir, on_image=_PROGRESS_QUEUE.put if _PROGRESS_QUEUE else None)


#: A product's registration from one good image costs about as much as this many inspections
#: (DeepPCB, 640 px: 3.2 s against ~50 ms for one policy's inspection).
REGISTRATION_UNITS = 60


def estimated_cost(group: Group) -> int:
    """A group's expected compute, in single-policy inspections, for ordering the workers' queue.

    ``shots=given`` registers a product per test image (DeepPCB: each image against its own
    template), which dwarfs the inspections: counted as such, that group starts first instead of
    last, and the other worker is not left idle while it finishes.
    """
    cost = len(group.test) * len(group.policies) + 4 * len(group.references)
    if group.protocol == "given":
        cost += REGISTRATION_UNITS * len(group.test)
    return cost


def run_groups(groups: list[Group], config: EvalConfig, out_dir: Path, workers: int = 1, threads: int | None = None,
               on_image: Callable[[int], None] | None = None,
               on_group: Callable[[Group, int], None] | None = None) -> int:
    """Run groups, appending each finished group's records to ``records.jsonl`` as it finishes.

    Args:
        workers: processes evaluating groups in parallel (spawned; each registers its own
            products). Records are written by this process only.
        threads: torch / faiss threads per process (default ``cores // workers``).
        on_image: progress: number of inspections just finished.
        on_group: called with ``(group, number of groups finished)`` when a group finishes.

    Returns:
        The number of records written.
    """
    out_dir = Path(out_dir)
    threads = threads or max(1, (os.cpu_count() or 1) // max(workers, 1))
    written = 0
    if workers <= 1:
        set_threads(threads)
        for i, group in enumerate(groups, 1):
            written += len(run_group(group, config, out_dir, on_image))
            if on_group:
                on_group(group, i)
        return written
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    progress = ctx.Queue()
    # Largest groups first, so that no worker is left with a big one at the end.
    order = sorted(groups, key=lambda g: -estimated_cost(g))
    finished = 0
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(threads, progress)) as pool:
        pending = {pool.submit(_worker_evaluate, g, config, out_dir): g for g in order}
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(progress, on_image, queue_mod)
            for future in done:
                group = pending.pop(future)
                for record in future.result():
                    append_record(out_dir / RECORDS_FILE, record)
                    written += 1
                finished += 1
                if on_group:
                    on_group(group, finished)
        _drain(progress, on_image, queue_mod)
    return written


def _drain(progress, on_image, queue_mod) -> None:  # noqa: ANN001
    while True:
        try:
            n = progress.get_nowait()
        except (queue_mod.Empty, OSError, ValueError):
            return
        if on_image:
            on_image(n)
