"""High-level inspection: one image + a product → answer, heat map, box, trace.

``Inspector.inspect`` prepares the query (features, global look, heat map), builds the
episode, runs the one agent loop with the chosen policy and tools, and packages the result
for the API (CLI, service), the evaluation harness and trajectory building. A query prepared
once with :meth:`Inspector.prepare` can be inspected by several inspectors of the same
product (the benchmark's policies side by side) without extracting anything again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from iad_agent import prompts
from iad_agent.agent.loop import DEFAULT_MAX_STEPS, run_episode
from iad_agent.episode import Episode, PreparedQuery
from iad_agent.imageio import load_image
from iad_agent.policies.base import Policy
from iad_agent.product import Product
from iad_agent.tools import Tool, default_tools
from iad_agent.types import Sample, Trajectory


@dataclass
class InspectionResult:
    """What ``iad inspect`` reports (see the README for the JSON schema)."""

    episode: Episode
    heatmap: np.ndarray
    warnings: list[str] = field(default_factory=list)
    heatmap_path: Path | None = None

    @property
    def trajectory(self) -> Trajectory:
        return self.episode.trajectory

    def to_dict(self) -> dict[str, Any]:
        traj = self.trajectory
        ans = traj.answer
        look = self.episode.look
        return {
            "image": str(traj.query_path) if traj.query_path else None,
            "product": traj.product,
            "policy": traj.evidence.get("policy"),
            "anomaly_present": ans.anomaly_present if ans else None,
            "score": round(float(ans.score if ans and ans.score is not None else look.score), 6),
            "threshold": round(float(ans.threshold if ans and ans.threshold is not None else look.threshold), 6),
            "box": ans.box.to_list() if ans and ans.box else None,
            "defect_type": ans.defect_type if ans else None,
            "defect_candidates": ans.defect_candidates if ans else [],
            "confidence": ans.confidence if ans else None,
            "reason": ans.reason if ans else "",
            "tool_calls": [c.to_dict() for c in traj.tool_calls],
            "heatmap": str(self.heatmap_path) if self.heatmap_path else None,
            "elapsed_ms": round(traj.elapsed_ms, 1),
            "stop_reason": traj.stop_reason,
            "warnings": self.warnings,
            "trace": traj.to_dict(),
        }


class Inspector:
    """Inspects images of one registered product with a policy and a set of tools."""

    def __init__(self, product: Product, policy: Policy | None = None, tools: dict[str, Tool] | None = None,
                 max_steps: int = DEFAULT_MAX_STEPS, references_in_prompt: int = 0) -> None:
        from iad_agent.policies.embedded import EmbeddedPolicy

        self.product = product
        self.policy = policy or EmbeddedPolicy()
        self.tools = default_tools() if tools is None else tools
        self.max_steps = max_steps
        self.references_in_prompt = references_in_prompt

    def prepare(self, image: str | Path | Image.Image) -> PreparedQuery:
        """Load the query and compute its features, global look and heat map (timed, shareable).

        Raises:
            ImageError: the file cannot be read or is unusable; the message names it.
        """
        start, cpu = time.perf_counter(), time.process_time()
        path = None
        if isinstance(image, Image.Image):
            query = image.convert("RGB")
        else:
            path = Path(image)
            query = load_image(path, self.product.max_side)
        warnings: list[str] = []
        ref_size = self.product.image_size
        if ref_size and query.size != tuple(ref_size):
            warnings.append(f"{path or 'query'}: image is {query.width}x{query.height}, the product's good images are "
                            f"{ref_size[0]}x{ref_size[1]}; compared after resizing")
        prepared = PreparedQuery(self.product, query, path, warnings)
        prepared.ms, prepared.cpu_ms = (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000
        return prepared.compute()

    def episode(self, image: str | Path | Image.Image | PreparedQuery, sample: Sample | None = None) -> tuple[Episode, list[str]]:
        """Start an episode (prompts written, the global look in the evidence) without running it.

        Args:
            image: a file, a PIL image, or a query prepared by :meth:`prepare` for this product.
            sample: the ground truth when the image comes from a dataset.

        Returns:
            The episode and the query's warnings.
        """
        prepared = image if isinstance(image, PreparedQuery) else self.prepare(image)
        if prepared.product is not self.product:
            raise ValueError(f"query prepared for product {prepared.product.name!r}, not {self.product.name!r}")
        specs = [t.spec() for t in self.tools.values()]
        traj = Trajectory(
            query_image=prepared.image,
            product=self.product.name,
            task=prompts.task_prompt(self.product.name),
            system_prompt=prompts.system_prompt(self.product.name, self.product.defect_types, specs, self.max_steps,
                                                self.references_in_prompt),
            query_path=prepared.path,
            sample=sample,
        )
        episode = Episode(self.product, prepared.image, traj, notes=list(prepared.warnings), prepared=prepared)
        if self.references_in_prompt:
            hits = self.product.bank.nearest(episode.grid, self.references_in_prompt)
            traj.references = [self.product.reference_image(i) for i, _ in hits]
        look = episode.look
        traj.evidence.update({"policy": getattr(self.policy, "name", type(self.policy).__name__), "score": look.score,
                              "threshold": look.threshold, "ratio": look.ratio, "hot_box": look.hot_box.to_list(),
                              "hot_area": look.hot_area})
        return episode, list(prepared.warnings)

    def inspect(self, image: str | Path | Image.Image | PreparedQuery, sample: Sample | None = None) -> InspectionResult:
        """Inspect one image (or a prepared query): run the agent loop to an answer or the step budget.

        ``trajectory.elapsed_ms`` counts what this call did: with a prepared query, the
        preparation's own time (``prepared.ms``) is not included.

        Raises:
            ImageError: the file cannot be read or is unusable; the message names it.
        """
        start = time.perf_counter()
        episode, warnings = self.episode(image, sample)
        setup_ms = (time.perf_counter() - start) * 1000
        run_episode(self.policy, self.tools, episode, self.max_steps)
        episode.trajectory.elapsed_ms += setup_ms
        return InspectionResult(episode, episode.heatmap(), warnings)
