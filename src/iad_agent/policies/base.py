"""The policy interface: given the episode so far, return the next turn.

Every way of driving the agent — the embedded CPU policy, an OpenAI-compatible server, a
local transformers model, a scripted policy in tests — implements this one method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from iad_agent.inspector import Episode
    from iad_agent.tools.base import Tool
    from iad_agent.types import Step


@runtime_checkable
class Policy(Protocol):
    """Decides the next step of an episode.

    ``act`` returns a :class:`~iad_agent.types.Step` holding either tool calls (the loop runs
    them and fills ``observations``) or a final answer. It must not run tools itself.
    """

    name: str

    def act(self, episode: Episode, tools: dict[str, Tool]) -> Step: ...


class ScriptedPolicy:
    """Replays a fixed list of steps (tests, demonstrations, trajectory building)."""

    name = "scripted"

    def __init__(self, steps: list[Step]) -> None:
        self._steps = list(steps)

    def act(self, episode: Episode, tools: dict[str, Tool]) -> Step:
        from iad_agent.types import Step

        i = len(episode.trajectory.steps)
        if i < len(self._steps):
            s = self._steps[i]
            return Step(thought=s.thought, tool_calls=list(s.tool_calls), answer=s.answer, raw_output=s.raw_output, parse_errors=list(s.parse_errors))
        return Step(thought="(script exhausted)")
