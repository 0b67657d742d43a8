"""The inspection tools: each a small class with a name, a description, a JSON schema and ``run``.

Importing them loads neither torch nor faiss: the tools reach the feature extractor and the
normal bank through the episode's product, and import what they compute with when they run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from iad_agent.tools.base import Evidence, Reading, Tool, ToolLimits, evidence_ratio, execute

if TYPE_CHECKING:
    from iad_agent.tools.anomaly_map import AnomalyMap, AnomalyMapReading
    from iad_agent.tools.highfreq import HighFrequencyEnhancer, HighFrequencyReading
    from iad_agent.tools.priors import PriorMatches, PriorRetriever
    from iad_agent.tools.retriever import ComparativeRetriever, ComparisonReading
    from iad_agent.tools.zoom import PerceptiveZoomer, ZoomReading

__all__ = ["TOOL_ALIASES", "AnomalyMap", "AnomalyMapReading", "ComparativeRetriever", "ComparisonReading", "Evidence",
           "HighFrequencyEnhancer", "HighFrequencyReading", "PerceptiveZoomer", "PriorMatches", "PriorRetriever", "Reading",
           "Tool", "ToolLimits", "ZoomReading", "default_tools", "evidence_ratio", "execute"]

#: Where each tool class lives; imported on first use (``from iad_agent.tools import PerceptiveZoomer``), so
#: that what needs only ``ToolLimits`` (listing products) does not import scipy and the tools' dependencies.
_LAZY = {"AnomalyMap": "anomaly_map", "AnomalyMapReading": "anomaly_map", "HighFrequencyEnhancer": "highfreq",
         "HighFrequencyReading": "highfreq", "PriorMatches": "priors", "PriorRetriever": "priors",
         "ComparativeRetriever": "retriever", "ComparisonReading": "retriever", "PerceptiveZoomer": "zoom",
         "ZoomReading": "zoom"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"iad_agent.tools.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    if name == "TOOL_ALIASES":
        return tool_aliases()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tool_aliases() -> dict[str, str]:
    """Short tool names, usable in policy names (``embedded-no-zoom``, ``embedded+highfreq``) and ``--disable-tool``."""
    from iad_agent.tools.highfreq import HighFrequencyEnhancer
    from iad_agent.tools.priors import PriorRetriever
    from iad_agent.tools.retriever import ComparativeRetriever
    from iad_agent.tools.zoom import PerceptiveZoomer

    return {"zoom": PerceptiveZoomer.name, "retriever": ComparativeRetriever.name, "highfreq": HighFrequencyEnhancer.name,
            "priors": PriorRetriever.name}


def default_tools(disable: tuple[str, ...] = (), anomaly_map: bool = False) -> dict[str, Tool]:
    """The four tools of the papers (plus the optional ``anomaly_map``), minus ``disable``."""
    from iad_agent.tools.anomaly_map import AnomalyMap
    from iad_agent.tools.highfreq import HighFrequencyEnhancer
    from iad_agent.tools.priors import PriorRetriever
    from iad_agent.tools.retriever import ComparativeRetriever
    from iad_agent.tools.zoom import PerceptiveZoomer

    tools: list[Tool] = [PerceptiveZoomer(), ComparativeRetriever(), HighFrequencyEnhancer(), PriorRetriever()]
    if anomaly_map:
        tools.append(AnomalyMap())
    known = {t.name for t in tools} | {AnomalyMap.name}
    for name in disable:
        if name not in known:
            raise ValueError(f"unknown tool {name!r}; tools are {', '.join(sorted(known))}")
    return {t.name: t for t in tools if t.name not in disable}
