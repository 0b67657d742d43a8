"""The three trajectory styles: which tools a teacher calls, turn by turn.

- ``perceptive`` (AgentIAD, PZ only): global look → zoom on the region of interest → answer.
- ``comparative`` (AgentIAD, PZ + CR): global look → zoom → nearest good reference and its
  aligned region → compare → answer.
- ``indus-cot`` (IndusAgent's Indus-CoT): global look + normalcy priors + high-resolution local
  patch → high-frequency enhancement when the defect is fine-grained → answer.
"""

from __future__ import annotations

from iad_agent.tools import ComparativeRetriever, HighFrequencyEnhancer, PerceptiveZoomer, PriorRetriever

ZOOM = PerceptiveZoomer.name
COMPARE = ComparativeRetriever.name
HIGHFREQ = HighFrequencyEnhancer.name
PRIORS = PriorRetriever.name

STYLES = ("perceptive", "comparative", "indus-cot")


def plan(style: str, fine_grained: bool) -> list[list[str]]:
    """Tool names per turn before the answer turn.

    >>> plan("comparative", fine_grained=False)
    [['perceptive_zoomer'], ['comparative_retriever']]
    >>> plan("indus-cot", fine_grained=True)
    [['prior_retriever', 'perceptive_zoomer'], ['high_frequency_enhancer']]
    """
    if style == "perceptive":
        return [[ZOOM]]
    if style == "comparative":
        return [[ZOOM], [COMPARE]]
    if style == "indus-cot":
        return [[PRIORS, ZOOM], [HIGHFREQ]] if fine_grained else [[PRIORS, ZOOM]]
    raise ValueError(f"unknown trajectory style {style!r}; styles are {', '.join(STYLES)}")


def parse_style_weights(spec: str) -> dict[str, float]:
    """``"comparative"`` or ``"perceptive:1,comparative:2"`` → normalised weights.

    >>> parse_style_weights("perceptive:1,comparative:3")
    {'perceptive': 0.25, 'comparative': 0.75}
    >>> parse_style_weights("all")
    {'perceptive': 0.3333333333333333, 'comparative': 0.3333333333333333, 'indus-cot': 0.3333333333333333}
    """
    spec = spec.strip()
    items = list(STYLES) if spec in ("", "all") else [s.strip() for s in spec.split(",") if s.strip()]
    weights: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition(":")
        name = name.strip()
        if name not in STYLES:
            raise ValueError(f"unknown trajectory style {name!r}; styles are {', '.join(STYLES)}")
        try:
            w = float(value) if value else 1.0
        except ValueError as exc:
            raise ValueError(f"style weight must be a number, got {item!r}") from exc
        if w < 0:
            raise ValueError(f"style weight must be non-negative, got {item!r}")
        weights[name] = weights.get(name, 0.0) + w
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"style weights must not all be zero: {spec!r}")
    return {k: v / total for k, v in weights.items() if v > 0}
