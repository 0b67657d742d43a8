"""Policies: the embedded CPU policy (default), the plain kNN baseline, VLM backends, and a scripted policy for tests."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from iad_agent.policies.base import Policy, ScriptedPolicy
from iad_agent.policies.embedded import EmbeddedPolicy

__all__ = ["EmbeddedPolicy", "Policy", "ScriptedPolicy", "make_policy"]

log = logging.getLogger(__name__)


def make_policy(name: str, **options: Any) -> Policy:
    """Build a policy by name: ``embedded`` or ``knn`` (options ignored), ``openai`` or ``hf``.

    ``embedded+<tool>`` (e.g. ``embedded+highfreq``) is the embedded policy with a tool whose
    weight is 0 in the product's gate given weight ``EmbeddedPolicy.TRIAL_WEIGHT``, so the
    benchmark can keep measuring a tool the gate no longer calls.

    Options that are ``None`` are dropped (the backend's default applies), and so are options
    the chosen backend does not take (e.g. ``adapter`` for ``openai``), so one set of CLI
    flags can serve every policy. ``openai`` takes ``base_url``, ``model``, ``api_key_env``,
    ``timeout``, ``max_retries``, ``max_image_side``, ``concurrency``, ``temperature``,
    ``max_new_tokens``, ``native_tools``; ``hf`` takes ``model``, ``adapter``, ``dtype``,
    ``device``, ``temperature``, ``max_new_tokens``, ``max_image_side``. The result's
    ``concurrency`` attribute (1 where absent) is how many episodes may run at once.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if name == "embedded":
        return EmbeddedPolicy(without=tuple(options.get("without", ())))
    if name.startswith("embedded+"):  # embedded+highfreq: a tool the gate has switched off, back on
        from iad_agent.tools import TOOL_ALIASES, default_tools

        known = default_tools()
        wanted = [TOOL_ALIASES.get(t, t) for t in name.split("+")[1:]]
        unknown = [t for t in wanted if t not in known]
        if unknown:
            raise ValueError(f"unknown tool {', '.join(unknown)} in policy {name!r}; tools: {', '.join(sorted(known))}")
        return EmbeddedPolicy(weights={t: EmbeddedPolicy.TRIAL_WEIGHT for t in wanted}, without=tuple(options.get("without", ())))
    if name == "knn":
        from iad_agent.policies.knn import KnnPolicy

        return KnnPolicy()
    if name == "openai":
        from iad_agent.policies.openai import OpenAIPolicy

        return OpenAIPolicy(**_accepted(OpenAIPolicy, options, name))
    if name == "hf":
        from iad_agent.policies.hf import HFPolicy

        if "model" not in options:
            raise ValueError("the hf policy needs --model (a local folder of weights, e.g. Qwen2.5-VL-3B-Instruct)")
        return HFPolicy(**_accepted(HFPolicy, options, name))
    raise ValueError(f"unknown policy {name!r}; choose embedded, knn, openai or hf")


def _accepted(cls: type, options: dict[str, Any], name: str) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    unused = sorted(set(options) - set(params))
    if unused:
        log.debug("policy %s ignores options %s", name, ", ".join(unused))
    return {k: v for k, v in options.items() if k in params}
