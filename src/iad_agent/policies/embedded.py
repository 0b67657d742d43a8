"""The embedded CPU policy: evidence-driven and gated, like IndusAgent's gated RL objective.

It takes the global look (normal-bank heat map), and calls a tool only when that is expected
to change or firm up the decision: the score lies in the uncertainty band around the
threshold (optionally also: any texture below the band, ``zoom_textures``). It never calls a
tool whose fusion weight is 0, nor the position-based tools when the query and the good images
differ in shape. Each tool's reading is an *evidence ratio* (its measurement over its normal
limit calibrated on good images); the verdict fuses them with the global ratio by a weighted
geometric mean, so 1.0 is the decision boundary throughout. All knobs are in the product's
``GateParams``; the tools' normal limits are the product's ``ToolLimits``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from iad_agent.defect_types import DefectNaming, describe_evidence, name_from_descriptions, name_from_examples, text_index_of
from iad_agent.product import anomaly_signature, same_shape
from iad_agent.tools import (
    ComparativeRetriever,
    ComparisonReading,
    Evidence,
    HighFrequencyEnhancer,
    HighFrequencyReading,
    PerceptiveZoomer,
    PriorMatches,
    PriorRetriever,
)
from iad_agent.types import Box, FinalAnswer, Step, ToolCall

if TYPE_CHECKING:
    from iad_agent.episode import Episode
    from iad_agent.tools.base import Tool

ZOOM, COMPARE, HIGHFREQ, PRIORS = PerceptiveZoomer.name, ComparativeRetriever.name, HighFrequencyEnhancer.name, PriorRetriever.name
#: The tool weights set by hand before they were learned at registration (``vision/tool_weights.py``):
#: what products stored without learned weights use, and the ``embedded-fixed-weights`` ablation.
HAND_SET_WEIGHTS = {ZOOM: 1.0, COMPARE: 0.5}
#: Parts of the policy that are not tools but can be left out for an ablation (``embedded-no-selfsim``).
COMPONENTS = ("selfsim",)


def fuse(global_ratio: float, evidence: list[tuple[float, float]]) -> float:
    """Weighted geometric mean of the global ratio (weight 1) and ``(ratio, weight)`` evidence.

    >>> round(fuse(0.9, [(2.0, 1.0)]), 4)
    1.3416
    """
    num = math.log(max(global_ratio, 1e-6))
    den = 1.0
    for ratio, weight in evidence:
        num += weight * math.log(min(max(ratio, 0.05), 20.0))
        den += weight
    return math.exp(num / den)


def squash(value: float, low: float, high: float) -> float:
    """Map a positive ratio monotonically into ``(low, high)``, keeping 1.0 fixed (the decision).

    The gate sends only images whose global ratio lies in the uncertainty band to the tools, so
    the fused ratio is kept inside the band: tools re-order the uncertain images among
    themselves but never leap over an image whose global evidence was already clear.
    ``low <= 0`` or ``high = inf`` leave that side open.

    >>> round(squash(1.0, 0.75, 1.5), 6), squash(50.0, 0.75, 1.5) < 1.5, squash(0.01, 0.75, 1.5) > 0.75
    (1.0, True, True)
    """
    x = math.log(max(value, 1e-12))
    if x >= 0 and math.isfinite(high):
        h = math.log(high)
        x = h * math.tanh(x / h)
    elif x < 0 and low > 0:
        lo = math.log(low)
        x = lo * math.tanh(x / lo)
    return math.exp(x)


def describe(episode: Episode) -> str:
    """The visual evidence in words, to match against defect descriptions (priors).

    Said with :func:`iad_agent.defect_types.describe_evidence`'s fixed vocabulary, which the
    product embeds at registration, so matching it needs no language model.
    """
    look = episode.look
    detail, shape = None, False
    for step in episode.trajectory.steps:
        for obs in step.observations:
            reading = obs.reading if obs.ok else None
            if isinstance(reading, HighFrequencyReading):
                detail = "sharp" if reading.energy > reading.reference_energy else "smooth"
            if isinstance(reading, ComparisonReading) and reading.evidence is not None and reading.evidence > 1:
                shape = True
    return describe_evidence(look.hot_box.center, look.hot_area, detail, shape)


# ------------------------------------------------------------------ wording (what a quality engineer reads)
def percent(ratio: float) -> str:
    """A score ratio as a share of the threshold.

    >>> percent(1.2345), percent(0.5)
    ('123%', '50%')
    """
    return f"{ratio:.0%}"


def _times(ratio: float) -> str:
    return f"{ratio:.2f}×"


def tool_sentence(name: str, reading: Evidence, product) -> str:  # noqa: ANN001 - a Product
    """One tool's evidence in words, the tool named: how unusual compared with good parts."""
    r = reading.evidence
    if name == ZOOM:
        return (f"Perceptive zoomer: zoomed in, the region differs from the same region of the nearest good part "
                f"{_times(r)} as much as good parts do")
    if name == COMPARE:
        ref = ""
        refs = getattr(reading, "references", None)
        if refs:
            from pathlib import Path

            ref = f" ({Path(product.bank.paths[refs[0]]).name})" if 0 <= refs[0] < len(product.bank.paths) else ""
        return (f"Comparative retriever: position by position, the region differs from the nearest good part{ref} "
                f"{_times(r)} as much as good parts do")
    if name == HIGHFREQ:
        return f"High-frequency enhancer: the region's fine detail differs from a good part's {_times(r)} as much as good parts' does"
    return f"{name.replace('_', ' ').capitalize()}: {_times(r)} its normal level"


def reason_text(anomalous: bool, fused: float, global_ratio: float, readings: list[tuple[str, Evidence]], product,  # noqa: ANN001
                naming: DefectNaming | None) -> str:
    """The reason line: the verdict, the overall evidence as a share of the threshold, then each source in words."""
    verdict = "anomalous" if anomalous else "normal"
    side = "above" if anomalous else "at or below"
    parts = [f"The part is {verdict}: the evidence stands at {percent(fused)} of the threshold ({side} 100%)."]
    whole = f"Whole image: the anomaly score is {percent(global_ratio)} of the threshold"
    parts.append(whole + ("; the tools' findings below are weighed in." if readings else "."))
    for name, reading in readings:
        parts.append(tool_sentence(name, reading, product) + ".")
    if naming is not None and naming.source is not None:
        parts.append(naming.sentence())
    return " ".join(parts)


class EmbeddedPolicy:
    """Gated evidence policy; see the module docstring."""

    name = "embedded"

    #: Weight given to a tool named in ``embedded+<tool>`` whose product weight is 0 (the
    #: high-frequency enhancer's weight before the ablation set it to 0).
    TRIAL_WEIGHT = 0.25

    def __init__(self, always_look: bool = False, weights: dict[str, float] | None = None, gate=None,  # noqa: ANN001
                 without: tuple[str, ...] = ()) -> None:
        """
        Args:
            always_look: call the tools on every image, not only on uncertain ones.
            weights: per-tool fusion weights overriding the product's ``gate.json`` (the
                benchmark's ``embedded+highfreq`` uses this to keep measuring a switched-off tool).
            gate: a learned gate (:class:`~iad_agent.policies.gate.LearnedGate`) replacing the
                hand-set band; by default the one installed in the product folder, if any.
            without: components left out, for ablations: ``"selfsim"`` = the global look is
                plain nearest neighbour even where the product's scoring mixes in self-similarity.
        """
        unknown = set(without) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown component(s) {sorted(unknown)}; components: {', '.join(COMPONENTS)}")
        self.gate = gate
        self._installed: dict = {}
        self.always_look = always_look
        self.weights = dict(weights or {})
        self.without = tuple(without)
        if self.weights:
            self.name = "embedded+" + "+".join(sorted(self.weights))
        if self.without:
            self.name += "".join(f"-no-{c}" for c in self.without)

    @property
    def plain_look(self) -> bool:
        """Whether this policy answers from the plain nearest-neighbour look (heat map included)."""
        return "selfsim" in self.without

    def _look(self, episode: Episode):  # noqa: ANN202 - GlobalLook
        return episode.look.plain if self.plain_look else episode.look

    def _weights(self, episode: Episode) -> dict[str, float]:
        gate = episode.product.gate
        return {ZOOM: gate.w_zoom, COMPARE: gate.w_compare, HIGHFREQ: gate.w_highfreq, **self.weights}

    def act(self, episode: Episode, tools: dict[str, Tool]) -> Step:
        from iad_agent.policies.gate import gated_step, installed_gate

        learned = self.gate or installed_gate(episode.product, self._installed)
        if learned is not None:  # a gate trained by RL (iad train gate) replaces the hand-set band
            return gated_step(self, episode, tools, learned)
        gate = episode.product.gate
        look = self._look(episode)
        steps = episode.trajectory.steps
        r = look.ratio
        box = look.hot_box
        if not steps:
            reasons = []
            if gate.band_low <= r <= gate.band_high:
                reasons.append(f"the score ({percent(r)} of the threshold) lies in the uncertain range "
                               f"{percent(gate.band_low)}–{percent(gate.band_high)}")
            if gate.texture and gate.zoom_textures and r < gate.band_high:
                reasons.append("the product is a texture, where fine breaks hide at low resolution")
            if 0 < look.hot_area < gate.small_area and gate.band_low <= r <= gate.band_high:
                reasons.append(f"the hot spot is small ({look.hot_area:.1%} of the image)")
            if self.always_look:
                reasons.append("the policy is set to always look closer")
            thought = (f"Global look at {episode.product.name}: anomaly score {look.score:.4g}, {percent(r)} of the "
                       f"threshold {look.threshold:.4g}; hottest region {box.to_list(2)}.")
            if not reasons:
                return self._finish(episode, tools, thought + " The evidence is clear; no tool is needed.")
            if not self._positional(episode):
                return self._finish(episode, tools, thought + (
                    " Closer inspection would compare regions with the same place on good parts, but the good images "
                    "(or this query) do not share one shape, so that comparison is not meaningful here."))
            calls = [ToolCall(ZOOM, {"box": box.to_list()})] if ZOOM in tools and self._weights(episode)[ZOOM] > 0 else self._followups(episode, tools, box)
            if not calls:
                return self._finish(episode, tools, thought + " Closer inspection is warranted but no tool is available.")
            return Step(thought=thought + " Looking closer because " + "; ".join(reasons) + ".", tool_calls=calls)
        used = {c.name for c in episode.trajectory.tool_calls}
        if len(steps) == 1 and ZOOM in used:
            calls = self._followups(episode, tools, box)
            if calls:
                zoom_text = self._evidence_text(episode)
                return Step(thought=f"{zoom_text} Checking the same region against a good part"
                            + (" and its fine detail." if len(calls) > 1 or calls[0].name == HIGHFREQ else "."), tool_calls=calls)
        return self._finish(episode, tools, self._evidence_text(episode))

    def _finish(self, episode: Episode, tools: dict[str, Tool], thought: str) -> Step:
        """Answer, unless the defect type must first be looked up in the priors."""
        used = {c.name for c in episode.trajectory.tool_calls}
        product = episode.product
        if (PRIORS in tools and PRIORS not in used and product.gate.type_from_priors and not product.defects.types
                and len(product.defect_types) > 1 and self._fused(episode) > 1.0):
            return Step(thought=(thought + " The part looks anomalous and no labelled defect examples exist, so I match "
                                 "what I saw against the product's defect descriptions.").strip(),
                        tool_calls=[ToolCall(PRIORS, {"query": describe(episode)})])
        return self._answer(episode, tools, thought)

    # ------------------------------------------------------------------ helpers
    def _followups(self, episode: Episode, tools: dict[str, Tool], box: Box) -> list[ToolCall]:
        """Compare with the aligned good region (aligned products) and check fine detail (fine defects).

        A tool whose evidence has no weight in the fusion is not called (it could not change
        the verdict): by default that is the high-frequency enhancer, which the benchmark's
        ablation showed to cost accuracy (``docs/benchmarks.md``).
        """
        gate = episode.product.gate
        weights = self._weights(episode)
        calls = []
        if COMPARE in tools and gate.aligned_informative and weights[COMPARE] > 0:
            calls.append(ToolCall(COMPARE, {"box": box.to_list()}))
        if HIGHFREQ in tools and weights[HIGHFREQ] > 0 and (gate.texture or self._look(episode).hot_area < gate.small_area):
            calls.append(ToolCall(HIGHFREQ, {"box": box.to_list()}))
        return calls

    @staticmethod
    def _positional(episode: Episode) -> bool:
        """Whether "the same region of a good part" is the same place on the part (shapes match)."""
        product = episode.product
        if product.gate.mixed_geometry:
            return False
        return product.image_size is None or same_shape(episode.query.size, product.image_size)

    def _observations(self, episode: Episode):
        for step in episode.trajectory.steps:
            for call, obs in zip(step.tool_calls, step.observations):
                if obs.ok:
                    yield call, obs

    def _readings(self, episode: Episode) -> list[tuple[str, Evidence]]:
        """The tools' evidence readings so far, in call order."""
        return [(call.name, obs.reading) for call, obs in self._observations(episode)
                if isinstance(obs.reading, Evidence) and obs.reading.evidence is not None]

    def _evidence_text(self, episode: Episode) -> str:
        parts = [tool_sentence(name, reading, episode.product) for name, reading in self._readings(episode)]
        return ("So far: " + "; ".join(parts) + ".") if parts else ""

    def _evidence(self, episode: Episode) -> list[tuple[float, float]]:
        weights = self._weights(episode)
        best: dict[str, float] = {}  # several readings of one tool (a scan): the strongest counts
        for call, obs in self._observations(episode):
            if call.name in weights and isinstance(obs.reading, Evidence) and obs.reading.evidence is not None:
                best[call.name] = max(best.get(call.name, 0.0), float(obs.reading.evidence))
        return [(value, weights[name]) for name, value in best.items()]

    def _fused(self, episode: Episode) -> float:
        return fuse(self._look(episode).ratio, self._evidence(episode))

    def _answer(self, episode: Episode, tools: dict[str, Tool], thought: str) -> Step:
        look = self._look(episode)
        evidence = self._evidence(episode)
        fused = fuse(look.ratio, evidence)
        if evidence:  # keep the tools' re-ordering inside the band the gate opened
            gate = episode.product.gate
            fused = squash(fused, gate.band_low if look.ratio >= gate.band_low else 0.0,
                           gate.band_high if look.ratio <= gate.band_high else math.inf)
        anomalous = fused > 1.0
        box = look.answer_box  # near the region the tools re-scored; the benchmark found their tighter boxes miss more
        confidence = round(0.5 + 0.5 * math.tanh(2.0 * abs(math.log(max(fused, 1e-6)))), 4)
        naming = self._name_defect(episode) if anomalous else None
        reason = reason_text(anomalous, fused, look.ratio, self._readings(episode), episode.product, naming)
        answer = FinalAnswer(anomaly_present=anomalous, box=box if anomalous else None,
                             defect_type=naming.defect_type if naming else None, confidence=confidence, reason=reason,
                             score=fused * look.threshold, threshold=look.threshold,
                             defect_candidates=naming.candidates if naming else [],
                             defect_source=naming.source if naming else None)
        return Step(thought=thought.strip(), answer=answer)

    def _name_defect(self, episode: Episode) -> DefectNaming | None:
        """The defect type: from labelled examples when the product has them, else from the descriptions
        the prior retriever matched (if it was asked), each against its calibrated limit."""
        named = name_from_examples(episode.product, anomaly_signature(episode.grid, episode.look.patch_map))
        if named is not None:
            return named
        for _, obs in self._observations(episode):
            if isinstance(obs.reading, PriorMatches) and obs.reading.matches and obs.reading.matches[0][1] is not None:
                index = text_index_of(episode.product)
                return name_from_descriptions(obs.reading.matches, index.min_similarity if index is not None else None)
        return None
