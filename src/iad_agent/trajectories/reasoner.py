"""Optional teacher VLM that writes the reasoning text of a trajectory (as AgentIAD did with GPT-4o).

The trajectory's tool calls and observations stay exactly as the teacher policy produced them;
a vision-language model behind an OpenAI-compatible endpoint (vLLM, SGLang, Ollama, OpenAI)
sees the images and the facts (category, normalcy priors, each turn's tool results, the
ground-truth label, defect type and location) and returns one thought per turn, a one-sentence
reason and its own verdict. The text is used only when that verdict agrees with the ground
truth and the reply is well formed; otherwise the template text is kept.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from iad_agent.imageio import data_url
from iad_agent.trajectories.templates import location
from iad_agent.types import Sample, Trajectory

log = logging.getLogger(__name__)

INSTRUCTIONS = """You write the step-by-step reasoning of an industrial visual inspection agent.
The agent inspected the part shown in the first image over several turns, calling tools; you get
the facts of every turn (what was called and what it returned) and the ground truth.
Write, for each turn, the agent's thought *before* its action in that turn: what it sees in the
images so far and why it takes the next action (the last turn gives the verdict). Refer to visible
evidence, in plain first-person sentences, 1-3 sentences per turn, no markup or tags.
Reply with one JSON object only:
{"anomaly_present": true|false, "defect_type": "<type>" or null, "thoughts": ["...", ...], "reason": "<one sentence>"}
with exactly one thought per turn."""


def facts(traj: Trajectory, sample: Sample, priors: dict[str, str]) -> dict[str, Any]:
    """What the teacher VLM is told about one trajectory."""
    truth = sample.ground_truth_box()
    turns = []
    for i, step in enumerate(traj.steps):
        turns.append({
            "turn": i + 1,
            "action": [{"tool": c.name, "arguments": c.arguments} for c in step.tool_calls] or "final answer",
            "results": [o.text for o in step.observations],
        })
    return {
        "product": sample.category,
        "normalcy_priors": {k: v for k, v in priors.items() if k in ("good", "normal", sample.defect_type)},
        "turns": turns,
        "ground_truth": {
            "anomaly_present": sample.is_anomalous,
            "defect_type": sample.defect_type,
            "box": truth.to_list(3) if truth else None,
            "location": location(truth) if truth else None,
        },
    }


def _norm(text: str | None) -> str:
    return re.sub(r"[\s_-]+", " ", (text or "").strip().lower())


class VLMReasoner:
    """Rewrites a trajectory's thoughts with a teacher VLM; see the module docstring.

    Args:
        model: model name on the server.
        base_url: the OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8000/v1``.
        api_key: the server's key (``EMPTY`` for local servers).
        client: an OpenAI-style client to use instead (anything with ``chat.completions.create``).
        temperature: sampling temperature of the teacher.
        max_images: at most this many images of the trajectory are shown (the query first).
    """

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, client: Any = None,
                 temperature: float = 0.2, max_images: int = 6, timeout: float = 120.0) -> None:
        if client is None:
            from openai import OpenAI

            client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout)
        self.client = client
        self.model = model
        self.temperature = temperature
        self.max_images = max_images

    def rewrite(self, traj: Trajectory, sample: Sample, priors: dict[str, str] | None = None) -> bool:
        """Replace the thoughts and the answer's reason; ``False`` (nothing changed) when rejected."""
        from iad_agent.tools.priors import domain_priors

        priors = domain_priors(sample.category) if priors is None else priors
        images = [p["image"] for m in traj.to_messages() if m["role"] == "user" for p in m["content"] if p["type"] == "image"]
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(im, max_side=768)}} for im in images[: self.max_images]]
        content.append({"type": "text", "text": json.dumps(facts(traj, sample, priors), ensure_ascii=False, indent=1)})
        try:
            reply = self.client.chat.completions.create(
                model=self.model, temperature=self.temperature,
                messages=[{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": content}])
            text = reply.choices[0].message.content or ""
        except Exception as exc:  # a teacher outage must not stop the build: keep the template text
            log.warning("teacher VLM failed on %s: %s", sample.image_path, exc)
            return False
        parsed = self.check(text, traj, sample)
        if parsed is None:
            return False
        for step, thought in zip(traj.steps, parsed["thoughts"]):
            step.thought = thought.strip()
        if traj.answer is not None and parsed.get("reason"):
            traj.answer.reason = parsed["reason"].strip()
        return True

    @staticmethod
    def check(text: str, traj: Trajectory, sample: Sample) -> dict[str, Any] | None:
        """The teacher's reply as a dict if it is well formed and agrees with the ground truth."""
        match = re.search(r"\{.*\}", text, flags=re.S)
        try:
            parsed = json.loads(match.group(0)) if match else None
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            log.info("teacher reply rejected (no JSON object): %.200s", text)
            return None
        if parsed.get("anomaly_present") is not sample.is_anomalous:
            log.info("teacher reply rejected: verdict %r disagrees with the ground truth", parsed.get("anomaly_present"))
            return None
        if sample.is_anomalous and sample.defect_type and _norm(parsed.get("defect_type")) != _norm(sample.defect_type):
            log.info("teacher reply rejected: defect type %r, ground truth %r", parsed.get("defect_type"), sample.defect_type)
            return None
        thoughts = parsed.get("thoughts")
        if (not isinstance(thoughts, list) or len(thoughts) != len(traj.steps)
                or not all(isinstance(t, str) and t.strip() and "<" not in t for t in thoughts)):
            log.info("teacher reply rejected: needs %d plain-text thoughts", len(traj.steps))
            return None
        if not isinstance(parsed.get("reason", ""), str) or "<" in parsed.get("reason", ""):
            log.info("teacher reply rejected: the reason must be plain text")
            return None
        return parsed
