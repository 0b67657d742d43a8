"""The plain nearest-neighbour baseline as a policy: answer from the global look, call no tool.

This is PatchCore / AnomalyDINO-style scoring on the same backbone and the same normal bank
as the agent: the image score is the mean of the top 1 % patch distances to the good
references, the verdict is ``score > threshold`` (the threshold set from good images alone),
the box is the hottest region of the heat map. Running it through the one agent loop, beside
the embedded policy, makes the benchmark measure what the agent's tool calls add.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iad_agent.types import FinalAnswer, Step

if TYPE_CHECKING:
    from iad_agent.episode import Episode
    from iad_agent.tools.base import Tool


class KnnPolicy:
    """Answers at the first turn from ``episode.look``; never calls a tool."""

    name = "knn"
    plain_look = True  # the plain nearest-neighbour look and heat map, whatever the product's scoring

    def act(self, episode: Episode, tools: dict[str, Tool]) -> Step:
        look = episode.look.plain
        anomalous = look.score > look.threshold
        verdict = "anomalous" if anomalous else "normal"
        reason = (f"Nearest-neighbour score {look.score:.4f} is {'above' if anomalous else 'at or below'} the "
                  f"threshold {look.threshold:.4f} set from good images, so the part is {verdict}.")
        answer = FinalAnswer(anomaly_present=anomalous, box=look.answer_box if anomalous else None, reason=reason,
                             score=look.score, threshold=look.threshold)
        return Step(thought=f"Global look: score {look.score:.4f}, threshold {look.threshold:.4f}.", answer=answer)
