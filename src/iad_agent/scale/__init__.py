"""Inspecting many images: folder batches on this machine and scale-out over Ray.

* :mod:`iad_agent.scale.folder` — find the images of a folder or glob, turn each outcome
  into a result row, and write CSV / JSONL / Parquet results that survive an interruption
  (``--resume``). Base install; used by ``iad inspect DIR`` and ``iad batch --engine local``.
* :mod:`iad_agent.scale.ray_engine` — the same inspection over a Ray Data dataset with an
  actor pool (``iad batch --engine ray``); needs ``pip install 'iad-agent[scale]'``.

Both inspect through :mod:`iad_agent.api`, so their answers are the same as ``iad inspect``'s.
"""
