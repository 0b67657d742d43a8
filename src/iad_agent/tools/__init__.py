"""The inspection tools: each a small class with a name, a description, a JSON schema and ``run``.

Importing them loads neither torch nor faiss: the tools reach the feature extractor and the
normal bank through the episode's product, and import what they compute with when they run.
"""

from iad_agent.tools.anomaly_map import AnomalyMap, AnomalyMapReading
from iad_agent.tools.base import Evidence, Reading, Tool, ToolLimits, evidence_ratio, execute
from iad_agent.tools.highfreq import HighFrequencyEnhancer, HighFrequencyReading
from iad_agent.tools.priors import PriorMatches, PriorRetriever
from iad_agent.tools.retriever import ComparativeRetriever, ComparisonReading
from iad_agent.tools.zoom import PerceptiveZoomer, ZoomReading

__all__ = ["TOOL_ALIASES", "AnomalyMap", "AnomalyMapReading", "ComparativeRetriever", "ComparisonReading", "Evidence",
           "HighFrequencyEnhancer", "HighFrequencyReading", "PerceptiveZoomer", "PriorMatches", "PriorRetriever", "Reading",
           "Tool", "ToolLimits", "ZoomReading", "default_tools", "evidence_ratio", "execute"]

#: Short tool names, usable in policy names (``embedded-no-zoom``, ``embedded+highfreq``) and ``--disable-tool``.
TOOL_ALIASES = {
    "zoom": PerceptiveZoomer.name,
    "retriever": ComparativeRetriever.name,
    "highfreq": HighFrequencyEnhancer.name,
    "priors": PriorRetriever.name,
}


def default_tools(disable: tuple[str, ...] = (), anomaly_map: bool = False) -> dict[str, Tool]:
    """The four tools of the papers (plus the optional ``anomaly_map``), minus ``disable``."""
    tools: list[Tool] = [PerceptiveZoomer(), ComparativeRetriever(), HighFrequencyEnhancer(), PriorRetriever()]
    if anomaly_map:
        tools.append(AnomalyMap())
    known = {t.name for t in tools} | {AnomalyMap.name}
    for name in disable:
        if name not in known:
            raise ValueError(f"unknown tool {name!r}; tools are {', '.join(sorted(known))}")
    return {t.name: t for t in tools if t.name not in disable}
