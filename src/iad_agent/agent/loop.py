"""The one agent loop (verl / DeepEyes style state machine with a hard step budget).

Used by ``iad inspect``, evaluation, trajectory building and RL rollouts alike: ask the policy
for a step, run its tool calls, record observations and timings, stop at an answer or when
the budget is spent (then the answer is an explicit "no answer").
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from iad_agent.tools.base import execute
from iad_agent.types import FinalAnswer, Step

if TYPE_CHECKING:
    from iad_agent.inspector import Episode
    from iad_agent.policies.base import Policy
    from iad_agent.tools.base import Tool

log = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 6


def run_episode(policy: Policy, tools: dict[str, Tool], episode: Episode, max_steps: int = DEFAULT_MAX_STEPS) -> Episode:
    """Drive ``policy`` on ``episode`` until it answers or ``max_steps`` turns are used.

    A policy exception is recorded as the episode's error and ends it without an answer;
    tool failures never raise (they are observations).
    """
    if max_steps < 1:
        raise ValueError("max_steps must be at least 1")
    traj = episode.trajectory
    start = time.perf_counter()
    while len(traj.steps) < max_steps:
        t0 = time.perf_counter()
        try:
            step = policy.act(episode, tools)
        except Exception as exc:  # a policy failure (server down, bad weights) ends the episode
            log.warning("policy %s failed: %s", getattr(policy, "name", policy), exc)
            traj.steps.append(Step(thought="", parse_errors=[f"policy error: {exc}"]))
            traj.answer = FinalAnswer.no_answer(f"policy error: {exc}")
            traj.stop_reason = "error"
            break
        step.policy_ms = step.policy_ms or (time.perf_counter() - t0) * 1000
        traj.steps.append(step)
        if step.answer is not None:
            traj.answer = step.answer
            traj.stop_reason = "answer"
            break
        for call in step.tool_calls:
            t1 = time.perf_counter()
            step.observations.append(execute(call, tools, episode))
            step.tool_ms.append((time.perf_counter() - t1) * 1000)
    else:
        traj.answer = FinalAnswer.no_answer(f"step budget of {max_steps} turns exhausted without an answer")
        traj.stop_reason = "budget"
    traj.elapsed_ms += (time.perf_counter() - start) * 1000
    return episode
