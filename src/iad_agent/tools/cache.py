"""Tool results shared between policies that inspect the same image (evaluation).

A benchmark runs several policies on every test image: the agent and its ablations call the
same tools with the same arguments on the same query, and every tool is a deterministic
function of (query, product, arguments). :class:`ToolCache` keeps each distinct call's result
with the wall-clock and CPU time it took when it actually ran; :class:`CachedTool` wraps a
tool so that a repeated call is answered from the cache and its *original* cost is added to
the cache's replay counters. The harness adds those to the replaying policy's latency, so
every policy is timed as if it had run its own tools.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iad_agent.episode import Episode
    from iad_agent.tools.base import Tool
    from iad_agent.types import ToolResult


class ToolCache:
    """Results of the tool calls made on one query (call :meth:`new_query` between queries)."""

    def __init__(self) -> None:
        self.results: dict[tuple[int, str, str], tuple[ToolResult, float, float]] = {}
        self.replayed_ms = 0.0
        self.replayed_cpu_ms = 0.0
        self.hits = 0
        self.misses = 0

    def new_query(self) -> None:
        """Forget every result (the next calls are about a different image)."""
        self.results.clear()
        self.new_run()

    def new_run(self) -> None:
        """Reset the replay counters (the next calls are made by another policy)."""
        self.replayed_ms = 0.0
        self.replayed_cpu_ms = 0.0

    def call(self, tool: Tool, arguments: Any, episode: Episode) -> ToolResult:
        try:
            # the product too: an ablation registered differently (``-no-brightness``) reads other features
            key = (id(episode.product), tool.name, json.dumps(arguments, sort_keys=True))
        except (TypeError, ValueError):  # not JSON (a malformed model call): run it, never cache it
            return tool(arguments, episode)
        hit = self.results.get(key)
        if hit is not None:
            result, ms, cpu_ms = hit
            self.hits += 1
            self.replayed_ms += ms
            self.replayed_cpu_ms += cpu_ms
            return result
        t0, c0 = time.perf_counter(), time.process_time()
        result = tool(arguments, episode)
        self.results[key] = (result, (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000)
        self.misses += 1
        return result


class CachedTool:
    """A tool whose calls go through a shared :class:`ToolCache` (same name, schema and spec)."""

    def __init__(self, tool: Tool, cache: ToolCache) -> None:
        self.tool = tool
        self.cache = cache

    def __getattr__(self, name: str) -> Any:  # name, description, parameters, spec, ...
        return getattr(self.tool, name)

    def __call__(self, arguments: Any, episode: Episode) -> ToolResult:
        return self.cache.call(self.tool, arguments, episode)


def cached_tools(tools: dict[str, Tool], cache: ToolCache) -> dict[str, CachedTool]:
    """Wrap every tool of a policy's tool set around one shared cache."""
    return {name: CachedTool(tool, cache) for name, tool in tools.items()}
