"""Scale-out on Ray: the same inspection over a Ray Data dataset with an actor pool.

``iad batch DIR --product P --engine ray --out results.parquet [--address ADDR]``: the image
paths become a Ray Data dataset; :meth:`ray.data.Dataset.map_batches` sends batches of them
to a pool of :class:`InspectBatch` actors, each holding one loaded product and policy
(loaded once per actor, not per image), which inspect them through
:func:`iad_agent.api.inspect_many` — the path ``iad inspect`` takes, so the answers are the
same. Rows stream back to the driver, which writes them to the results files as they come
(resumable, like the local engine).

On a cluster (``--address auto`` on a node of it, or ``ray://HEAD:10001``) every node must
read the workspace and the images at the same absolute paths (a shared file system), and
have iad-agent installed; each actor uses one CPU. Needs ``pip install 'iad-agent[scale]'``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from iad_agent.extras import require
from iad_agent.scale.folder import ResultFile, Tally, outcome_to_row, split_done


class InspectBatch:
    """A Ray actor: inspects batches of images of one product with one loaded policy.

    Args:
        product: name of a registered product.
        workspace: absolute path of the workspace (the same on every node).
        policy: a policy name (``embedded``, ``knn``, ...).
        max_steps: hard budget of policy turns.
        heatmap_dir: write each heat map here (absolute path), or ``None``.
        full: also return each image's whole JSON object (for a JSONL output).
    """

    def __init__(self, product: str, workspace: str, policy: str, max_steps: int, heatmap_dir: str | None,
                 full: bool) -> None:
        from iad_agent import api

        self.resolved = api.resolve_policy(policy)
        self.product = api.load_product(product, workspace)
        self.max_steps = max_steps
        self.heatmap_dir = Path(heatmap_dir) if heatmap_dir else None
        self.full = full

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        from iad_agent import api

        keys, paths = [str(k) for k in batch["image"]], [str(p) for p in batch["path"]]
        rows, fulls = [], []
        outcomes = api.inspect_many(paths, self.product, self.resolved, max_steps=self.max_steps)
        for key, outcome in zip(keys, outcomes):
            row, full = outcome_to_row(outcome, self.heatmap_dir)
            row["image"] = full["image"] = key  # the image as the user named it, as the local engine writes it
            if "trace" in full:
                full["trace"]["query"] = key
            rows.append(json.dumps(row))
            fulls.append(json.dumps(full) if self.full else "")
        return {"row": rows, "full": fulls}


def run_ray(images: Sequence[str | Path], product: str, outputs: Sequence[ResultFile], *, workspace: str | Path | None = None,
            policy: str = "embedded", address: str | None = None, actors: int | None = None, batch_size: int = 8,
            max_steps: int = 6, heatmap_dir: Path | None = None,
            progress: Callable[[dict[str, Any], dict[str, Any] | None], None] | None = None) -> Tally:
    """Inspect ``images`` over Ray and write each outcome to every output.

    Uses the Ray session of this process if there is one; otherwise connects to ``address``
    (an existing cluster) or starts a local Ray with one CPU per core, and shuts down what it
    started. Images the outputs already hold (a resumed run) are not inspected again.

    Args:
        actors: size of the actor pool (default: the CPUs Ray has).
        batch_size: images per ``map_batches`` call.
        progress: called with each new row and (with a JSONL output) its full JSON object.
    """
    require("scale", "ray", "pyarrow")
    import ray

    from iad_agent.product import Workspace

    tally, todo = split_done(images, outputs)
    if not todo:
        return tally
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 num_cpus=None if address else os.cpu_count())
    ctx = ray.data.DataContext.get_current()
    quiet = {"enable_progress_bars": False, "print_on_execution_start": False}  # the caller shows progress
    before = {name: getattr(ctx, name) for name in quiet}
    loggers = {name: logging.getLogger(name) for name in ("ray.data", "ray")}
    levels = {name: lg.level for name, lg in loggers.items()}
    try:
        for name, value in quiet.items():
            setattr(ctx, name, value)
        for lg in loggers.values():
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        pool = actors or max(1, int(ray.available_resources().get("CPU", 1)))
        if heatmap_dir is not None:
            heatmap_dir.mkdir(parents=True, exist_ok=True)
        ds = ray.data.from_items([{"image": str(p), "path": str(Path(p).absolute())} for p in todo],
                                 override_num_blocks=max(1, min(len(todo), pool * 4)))
        ds = ds.map_batches(InspectBatch, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=1,
                            batch_format="numpy",
                            fn_constructor_kwargs={"product": product, "workspace": str(Workspace(workspace).root.absolute()),
                                                   "policy": policy, "max_steps": max_steps,
                                                   "heatmap_dir": str(heatmap_dir.absolute()) if heatmap_dir else None,
                                                   "full": any(out.kind == "jsonl" for out in outputs)})
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for row_json, full_json in zip(batch["row"], batch["full"]):
                row = json.loads(row_json)
                full = json.loads(full_json) if full_json else None
                for out in outputs:
                    if row["image"] not in out.done:
                        out.write(row, full)
                tally.add(row)
                if progress is not None:
                    progress(row, full)
    finally:
        for name, value in before.items():
            setattr(ctx, name, value)
        for name, lg in loggers.items():
            lg.setLevel(levels[name])
        if started:
            ray.shutdown()
    return tally
