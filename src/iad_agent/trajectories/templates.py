"""Reasoning text for teacher trajectories: deterministic templates with varied phrasing.

AgentIAD had GPT-4o write the ``<think>`` text of its trajectories; here the same facts
(category, normalcy priors, what the zoom / comparison / high-frequency view measured, the
defect type and where it is) fill hand-written templates, several phrasings each, picked by a
seeded ``random.Random`` so a build is reproducible. The text is always consistent with the
ground truth: when a tool reading disagrees with what is visible, the thought says so instead
of pretending the number agreed.
"""

from __future__ import annotations

import random
import re

from iad_agent.types import Box


def location(box: Box) -> str:
    """Plain words for where a box lies in the image.

    >>> location(Box(0.05, 0.05, 0.2, 0.2))
    'upper left'
    >>> location(Box(0.4, 0.4, 0.6, 0.6))
    'centre'
    """
    cx, cy = box.center
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    row = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else ""
    if not row and not col:
        return "centre"
    if not row:
        return f"{col} side"
    if not col:
        return f"{row} middle"
    return f"{row} {col}"


def size_word(box: Box) -> str:
    """``small`` / ``medium-sized`` / ``large`` by the box's share of the image.

    >>> size_word(Box(0, 0, 0.1, 0.1))
    'small'
    """
    return "small" if box.area < 0.03 else "medium-sized" if box.area < 0.15 else "large"


def defect_words(defect_type: str) -> str:
    """The defect type as a noun phrase (type names are often adjectives, e.g. ``bent``).

    >>> defect_words("metal_contamination")
    'metal contamination defect'
    """
    return defect_type.replace("_", " ").strip() + " defect"


def with_article(phrase: str) -> str:
    """The phrase with its indefinite article.

    >>> with_article("open defect")
    'an open defect'
    """
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def first_sentence(text: str, max_chars: int = 220) -> str:
    """The first sentence of a prior, without MMAD's "The defect is characterized by" framing.

    >>> first_sentence("The defect is characterized by a hole in the shell. It is round.")
    'a hole in the shell'
    """
    text = re.sub(r"\s+", " ", text).strip()
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".!? ")
    sentence = re.sub(r"^(The )?(defect|anomaly)( type)?( observed)? (is|are) characterized by ", "", sentence, flags=re.I)
    sentence = re.sub(r"^The \w+( in the images?)? (is|are) characterized by ", "", sentence, flags=re.I)
    if len(sentence) > max_chars:
        sentence = sentence[:max_chars].rsplit(" ", 1)[0] + " …"
    return sentence[:1].lower() + sentence[1:] if sentence[:2] != sentence[:2].upper() else sentence


def _defect_facts(defect_type: str | None) -> dict[str, str]:
    words = defect_words(defect_type) if defect_type else "defect"
    article = with_article(words)
    return {"defect": words, "a_defect": article, "A_defect": article[:1].upper() + article[1:]}


class Phrasing:
    """Picks among alternative phrasings with a seeded generator and fills them from facts."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, options: list[str], **facts: object) -> str:
        return self.rng.choice(options).format(**facts)

    # ----------------------------------------------------------------- global look
    def global_look(self, category: str, anomalous: bool, region: Box) -> str:
        facts = {"category": category, "where": location(region), "size": size_word(region)}
        if anomalous:
            return self.pick([
                "Global view of the {category}: overall shape and surface look regular, but the {where} area looks "
                "irregular. I zoom in there to see it at full detail.",
                "Looking at the whole {category} first. Something in the {where} region breaks the expected pattern; "
                "a closer look at that {size} area should settle it.",
                "First pass over the {category}: most of the part looks as expected, yet the {where} shows an "
                "unusual spot. Zooming in on it.",
            ], **facts)
        return self.pick([
            "Global view of the {category}: nothing stands out at this scale. The {where} area is the least "
            "typical-looking part, so I zoom in there to rule out a fine defect.",
            "The {category} looks regular overall. Fine defects can hide at low resolution, so I check the most "
            "suspicious spot, the {where} region, up close.",
            "First pass over the {category}: shape and surface appear normal. To be sure, I look closer at the "
            "{where} area, the only place that could hide something.",
        ], **facts)

    def priors_intent(self, category: str) -> str:
        return self.pick([
            "I also retrieve the normalcy priors of the {category} to know what a good part and each defect look like.",
            "To judge against expert knowledge, I fetch what a good {category} and its known defects look like.",
        ], category=category)

    # ------------------------------------------------------------------ evidence
    def zoom_seen(self, category: str, anomalous: bool, defect_type: str | None, region: Box,
                  evidence: float | None, prior: str | None) -> str:
        facts = {"category": category, "where": location(region), **_defect_facts(defect_type),
                 "ev": f"{evidence:.2f}" if evidence is not None else "n/a"}
        if anomalous:
            text = self.pick([
                "The zoomed crop shows {a_defect} in the {where} of the {category}.",
                "Up close, the {where} region clearly contains {a_defect}.",
                "At full resolution the {where} area reveals {a_defect} on the {category}.",
            ], **facts)
            if prior:
                text += " " + self.pick(["It fits the known pattern: {prior}.", "This matches the description of {a_defect}: {prior}."],
                                        prior=prior, **facts)
            if evidence is not None:
                text += " " + (self.pick([
                    "The zoom score reads {ev}× the calibrated normal limit, which agrees.",
                    "Its zoom score is {ev}× the normal limit, consistent with a defect.",
                ], **facts) if evidence > 1 else self.pick([
                    "The zoom score is only {ev}× the normal limit, but the visible damage is unambiguous.",
                    "The numeric zoom score ({ev}× the limit) understates it; what I see is a real defect.",
                ], **facts))
            return text
        text = self.pick([
            "The zoomed crop of the {where} shows the normal surface of the {category}: no break, mark or deformation.",
            "Up close, the {where} region looks like any good {category}; the texture and edges are intact.",
            "At full resolution the {where} area shows only the ordinary appearance of the {category}.",
        ], **facts)
        if evidence is not None:
            text += " " + (self.pick([
                "The zoom score, {ev}× the normal limit, agrees.",
                "Its zoom score stays at {ev}× the normal limit.",
            ], **facts) if evidence <= 1 else self.pick([
                "The zoom score is {ev}× the limit, but what stands out is natural variation, not damage.",
                "Although the zoom score reads {ev}× the limit, nothing in the crop is an actual defect; this is a false alarm.",
            ], **facts))
        return text

    def compare_intent(self) -> str:
        return self.pick([
            "To be certain, I compare the same region with the nearest known-good part.",
            "Let me retrieve the closest good reference and check the aligned region side by side.",
            "A comparison with a good part of the same product will confirm this.",
        ])

    def compare_seen(self, anomalous: bool, distance: float | None, normal_level: float | None, evidence: float | None) -> str:
        facts = {"d": f"{distance:.2f}" if distance is not None else "n/a", "t": f"{normal_level:.2f}" if normal_level is not None else "n/a"}
        if anomalous:
            text = self.pick([
                "Side by side with the good reference, the region clearly differs: the reference is intact where the query is damaged.",
                "The aligned good region shows what should be there, and the query departs from it.",
            ], **facts)
        else:
            text = self.pick([
                "Side by side with the good reference, the region looks the same.",
                "The aligned good region matches the query; the parts agree.",
            ], **facts)
        if distance is not None and normal_level is not None and evidence is not None:
            agrees = (evidence > 1) == anomalous
            text += " " + (self.pick([
                "The position-wise distance is {d} against a normal level of {t}.",
                "Measured distance {d} vs normal level {t}.",
            ], **facts) if agrees else self.pick([
                "The position-wise distance ({d} vs normal level {t}) is not decisive here; the visual comparison is.",
            ], **facts))
        return text

    def highfreq_intent(self) -> str:
        return self.pick([
            "The defect could be fine-grained, so I enhance the high-frequency detail of this region.",
            "Fine scratches and cracks show best in high-frequency detail; enhancing the region.",
        ])

    def highfreq_seen(self, anomalous: bool, defect_type: str | None, ratio: float | None) -> str:
        facts = {**_defect_facts(defect_type), "r": f"{ratio:.2f}" if ratio is not None else "n/a"}
        if anomalous:
            return self.pick([
                "The enhanced detail outlines the {defect} sharply against the regular structure (energy ratio {r}).",
                "In the high-frequency view the {defect} stands out as a distinct break in the pattern (ratio {r}).",
            ], **facts)
        return self.pick([
            "The enhanced detail shows only the regular fine structure of a good part (energy ratio {r}).",
            "High-frequency detail is uniform, with no scratch or crack (ratio {r}).",
        ], **facts)

    def priors_seen(self, category: str, good: str | None) -> str:
        if not good:
            return ""
        good = good[:1].upper() + good[1:]
        return self.pick(["Normalcy prior for a good {category}: {good}.", "What a good {category} looks like: {good}."],
                         category=category, good=good)

    # -------------------------------------------------------------------- verdict
    def conclusion(self, category: str, anomalous: bool, defect_type: str | None, region: Box) -> str:
        facts = {"category": category, "where": location(region), **_defect_facts(defect_type)}
        if anomalous:
            return self.pick([
                "The {category} is anomalous: {a_defect} in the {where}.",
                "Verdict: defective, with {a_defect} at the {where}.",
                "This part has {a_defect} in the {where}, so it is anomalous.",
            ], **facts)
        return self.pick([
            "The {category} is normal: the closer look cleared the only suspicious area.",
            "Verdict: normal. The {where} region checked up close shows no defect.",
            "No defect anywhere; the part is a good {category}.",
        ], **facts)

    def reason(self, category: str, anomalous: bool, defect_type: str | None, region: Box) -> str:
        facts = {"category": category, "where": location(region), **_defect_facts(defect_type)}
        if anomalous:
            return self.pick(["{A_defect} is visible in the {where} of the {category}.",
                              "The {where} region shows {a_defect}."], **facts)
        return self.pick(["The {category} matches its normal appearance; the closest look found no defect.",
                          "Shape and surface are those of a good {category}."], **facts)
