"""The inspection tools: each a small class with a name, a description, a JSON schema and ``run``."""

from iad_agent.tools.anomaly_map import AnomalyMap
from iad_agent.tools.base import Tool, execute
from iad_agent.tools.highfreq import HighFrequencyEnhancer
from iad_agent.tools.priors import PriorRetriever
from iad_agent.tools.retriever import ComparativeRetriever
from iad_agent.tools.zoom import PerceptiveZoomer

__all__ = ["TOOL_ALIASES", "AnomalyMap", "ComparativeRetriever", "HighFrequencyEnhancer", "PerceptiveZoomer", "PriorRetriever", "Tool",
           "default_tools", "execute"]

#: Short tool names, usable in policy names (``embedded-no-zoom``, ``embedded+highfreq``) and ``--disable-tool``.
TOOL_ALIASES = {
    "zoom": "perceptive_zoomer",
    "retriever": "comparative_retriever",
    "highfreq": "high_frequency_enhancer",
    "priors": "prior_retriever",
}


def default_tools(disable: tuple[str, ...] = (), anomaly_map: bool = False) -> dict[str, Tool]:
    """The four tools of the papers (plus the optional ``anomaly_map``), minus ``disable``."""
    tools: list[Tool] = [PerceptiveZoomer(), ComparativeRetriever(), HighFrequencyEnhancer(), PriorRetriever()]
    if anomaly_map:
        tools.append(AnomalyMap())
    known = {t.name for t in tools} | {"anomaly_map"}
    for name in disable:
        if name not in known:
            raise ValueError(f"unknown tool {name!r}; tools are {', '.join(sorted(known))}")
    return {t.name: t for t in tools if t.name not in disable}
