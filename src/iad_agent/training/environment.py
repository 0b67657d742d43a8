"""The rollout environment of ``iad train grpo``: TRL's ``environment_factory`` around our own tools.

TRL's ``GRPOTrainer`` creates one environment per rollout, calls ``reset(**row)`` with the
dataset row, exposes the environment's public methods as the model's tools and calls them with
the arguments of each parsed ``<tool_call>``. Each method here runs the project's tool of that
name through :func:`~iad_agent.tools.base.execute` on an :class:`~iad_agent.episode.Episode`
built by the :class:`~iad_agent.inspector.Inspector` exactly as at inference (the product
registered from the row's ``bank``, the query from ``source_image``), and returns the result
as content blocks: the tool's text, then its images downsized as the VLM policies downsize
them (``max_image_side``). The chat template renders them as our observation turn
(:mod:`iad_agent.training.templates`); the tool-result tokens are masked out of the loss by TRL.

The environment keeps every :class:`~iad_agent.types.ToolResult` (``results``) and the global
look (``evidence``), which the reward functions read (TRL passes ``environments=``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from iad_agent.types import ToolCall, ToolResult


class ProductCache:
    """Products registered from ``(category, bank)`` once and shared by every environment."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._products: OrderedDict[tuple, Any] = OrderedDict()

    def get(self, category: str, bank: list[str]) -> Any:
        from iad_agent.product import Product
        from iad_agent.tools.priors import domain_priors

        key = (category, tuple(bank))
        if key not in self._products:
            if not bank:
                raise ValueError(f"row of category {category!r} has no bank images to register the product from")
            self._products[key] = Product.build(category, list(bank), priors=domain_priors(category), allow_mixed_sizes=True)
            while len(self._products) > self.size:
                self._products.popitem(last=False)
        self._products.move_to_end(key)
        return self._products[key]


class InspectionEnvironment:
    """One rollout's episode; its public methods are the model's tools (docstrings become their schemas).

    Args:
        products: the shared product cache.
        tools: the tools the system prompt lists (others answer with an error, as at inference).
        max_image_side: longer side of returned images (the VLM policies' ``max_image_side``).
        text_mode: return text only (text-only models).
    """

    def __init__(self, products: ProductCache, tools: dict[str, Any], max_image_side: int | None = 768,
                 text_mode: bool = False) -> None:
        self.products, self.tools = products, tools
        self.max_image_side, self.text_mode = max_image_side, text_mode
        self.episode: Any = None
        self.results: list[ToolResult] = []
        self.calls: list[ToolCall] = []
        self.evidence: dict[str, Any] = {}

    def reset(self, source_image: str, bank: list[str], category: str, **_: Any) -> str | None:
        from iad_agent.inspector import Inspector

        product = self.products.get(category, bank)
        self.episode, _ = Inspector(product, tools=self.tools).episode(source_image)
        look = self.episode.look
        self.evidence = {"ratio": look.ratio, "score": look.score, "threshold": look.threshold,
                         "hot_box": look.hot_box.to_list(), "hot_area": look.hot_area}
        self.results, self.calls = [], []
        return None

    def _run(self, name: str, arguments: dict[str, Any]) -> list[dict[str, Any]]:
        from iad_agent.policies.vlm import fit_image
        from iad_agent.tools.base import execute

        call = ToolCall(name, {k: v for k, v in arguments.items() if v is not None})
        result = execute(call, self.tools, self.episode)
        self.calls.append(call)
        self.results.append(result)
        content: list[dict[str, Any]] = [{"type": "text", "text": result.text}]
        if not self.text_mode:
            content += [{"type": "image", "image": fit_image(im.convert("RGB"), self.max_image_side)} for im in result.images]
        return content

    def perceptive_zoomer(self, box: list[float]) -> list[dict[str, Any]]:
        """Zoom into a region of the query image and re-score it at higher resolution.

        Args:
            box: normalized box [x1, y1, x2, y2] with coordinates in 0..1 of the query image
        """
        return self._run("perceptive_zoomer", {"box": box})

    def comparative_retriever(self, box: list[float] | None = None, k: int | None = None) -> list[dict[str, Any]]:
        """Retrieve the most similar known-good image and compare a region position by position.

        Args:
            box: normalized box [x1, y1, x2, y2] with coordinates in 0..1 of the query image
            k: how many good images (default 1)
        """
        return self._run("comparative_retriever", {"box": box, "k": k})

    def high_frequency_enhancer(self, box: list[float] | None = None) -> list[dict[str, Any]]:
        """Enhance fine detail (scratches, cracks, texture breaks) of the query image or a region.

        Args:
            box: normalized box [x1, y1, x2, y2] with coordinates in 0..1 of the query image
        """
        return self._run("high_frequency_enhancer", {"box": box})

    def prior_retriever(self, defect_type: str | None = None, query: str | None = None) -> list[dict[str, Any]]:
        """What a good part and each known defect type of this product look like (normalcy priors).

        Args:
            defect_type: a defect type to describe
            query: a free-text description to match against the defect descriptions
        """
        return self._run("prior_retriever", {"defect_type": defect_type, "query": query})

    def anomaly_map(self, box: list[float] | None = None) -> list[dict[str, Any]]:
        """Nearest-neighbour anomaly evidence from the registered good parts: heat map, score and threshold.

        Args:
            box: normalized box [x1, y1, x2, y2] with coordinates in 0..1 of the query image
        """
        return self._run("anomaly_map", {"box": box})
