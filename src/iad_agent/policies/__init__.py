"""Policies: the embedded CPU policy (default), the plain kNN baseline, VLM backends, and a scripted policy for tests.

:func:`resolve_policy` is the one place where a policy *name* becomes a policy object and the
tool set it gets; ``iad inspect``, ``iad eval``, the library API and the service all call it:

* ``knn``: the nearest-neighbour baseline, no tools;
* ``embedded``: the gated CPU policy with the papers' four tools;
* ``embedded+<tool>`` (e.g. ``embedded+highfreq``): a tool the gate switched off (weight 0)
  given the trial weight ``EmbeddedPolicy.TRIAL_WEIGHT`` back, so it stays measured;
* ``embedded-fixed-weights``: the embedded policy with the hand-set tool weights
  (``HAND_SET_WEIGHTS``) instead of those the product learned at registration;
* ``openai`` / ``hf``: a VLM backend (options in :class:`VLMOptions`), with the four tools plus
  the ``anomaly_map`` evidence tool;
* ``<any of these>-no-<tool>...`` (e.g. ``embedded-no-zoom``): the same without those tools;
  ``embedded-no-selfsim``: the embedded policy answering from the plain nearest-neighbour look;
  ``embedded-no-brightness``: the embedded policy on a product registered without brightness
  matching (:mod:`iad_agent.vision.brightness`) — a registration setting, so only ``iad eval``,
  which registers its products itself, runs it; ``embedded-no-clip`` likewise, on a product
  whose patch vectors' length is not capped (``FeatureConfig.clip_length``).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from iad_agent.errors import PolicyConfigError
from iad_agent.extras import require
from iad_agent.policies.base import Policy, ScriptedPolicy

if TYPE_CHECKING:
    from iad_agent.tools.base import Tool

__all__ = ["Policy", "PolicyConfigError", "ResolvedPolicy", "ScriptedPolicy", "VLMOptions", "make_policy",
           "policy_label", "resolve_policy", "split_policy_name", "tools_for"]

log = logging.getLogger(__name__)

#: The ablation of the learned tool weights: the embedded policy with the hand-set ones.
FIXED_WEIGHTS = "embedded-fixed-weights"
#: Ablations of what registration learns (``-no-<name>`` = ``Product.build(..., <name>=False)``).
REGISTRATION_COMPONENTS = ("brightness", "clip")

_ABLATION = re.compile(r"^(?P<base>.+?)(?P<rest>(?:-no-[a-z_]+)+)$")


@dataclass(frozen=True)
class VLMOptions:
    """Settings of the VLM backends (``openai``, ``hf``); ``None`` = the backend's default.

    The embedded and knn policies ignore them, so one set of command-line flags serves every
    policy. Each backend takes the fields it knows and ignores the others.

    Attributes:
        base_url: openai: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: openai: the served model name; hf: the folder of the weights.
        api_key_env: openai: environment variable holding the API key.
        timeout: openai: seconds per request.
        max_retries: openai: retries on 429 / 5xx / timeouts / malformed replies.
        native_tools: openai: native function calling instead of the text protocol.
        max_image_side: longest image side sent to the model, in pixels.
        concurrency: openai: requests in flight at once.
        adapter: hf: folder of a PEFT LoRA adapter.
        dtype: hf: ``auto``, ``float32``, ``bfloat16``, ``float16``.
        device: hf: ``cpu``, ``cuda``, ``auto``.
        temperature: sampling temperature (0 = greedy).
        max_new_tokens: tokens per model turn.
    """

    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    timeout: float | None = None
    max_retries: int | None = None
    native_tools: bool | None = None
    max_image_side: int | None = None
    concurrency: int | None = None
    adapter: str | None = None
    dtype: str | None = None
    device: str | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None

    def given(self) -> dict[str, Any]:
        """The options that are set, as keyword arguments.

        >>> VLMOptions(model="m", timeout=5.0).given()
        {'model': 'm', 'timeout': 5.0}
        """
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class ResolvedPolicy:
    """What a policy name stands for.

    Attributes:
        label: the name records and reports use (``name`` plus ``-no-<tool>`` for each tool
            disabled on top of the name).
        policy: the policy object.
        tools: the tools it may call, by name.
        disabled: full names of the tools left out.
        registration: registration settings the policy's product must be built with, as
            ``((name, value), ...)`` for ``Product.build`` (``-no-brightness``: brightness False).
    """

    label: str
    policy: Policy
    tools: dict[str, Tool]
    disabled: tuple[str, ...]
    registration: tuple[tuple[str, bool], ...] = ()


def tool_name(name: str) -> str:
    """Full tool name from a short alias (``zoom`` -> ``perceptive_zoomer``) or the full name.

    >>> tool_name("zoom"), tool_name("prior_retriever")
    ('perceptive_zoomer', 'prior_retriever')
    """
    from iad_agent.tools import TOOL_ALIASES

    return TOOL_ALIASES.get(name, name)


def split_policy_name(name: str) -> tuple[str, tuple[str, ...]]:
    """``embedded-no-zoom-no-highfreq`` -> ``("embedded", ("perceptive_zoomer", "high_frequency_enhancer"))``.

    >>> split_policy_name("embedded-no-zoom-no-highfreq")
    ('embedded', ('perceptive_zoomer', 'high_frequency_enhancer'))
    >>> split_policy_name("knn")
    ('knn', ())
    """
    m = _ABLATION.match(name)
    if not m:
        return name, ()
    return m.group("base"), tuple(tool_name(t) for t in m.group("rest").split("-no-") if t)


def policy_label(name: str, disable: Iterable[str] = ()) -> str:
    """The record label: the policy name plus ``-no-<tool>`` for each extra disabled tool.

    >>> policy_label("embedded", ["perceptive_zoomer"]), policy_label("knn", ["zoom"])
    ('embedded-no-zoom', 'knn')
    >>> policy_label("embedded-no-zoom", ["zoom"])
    'embedded-no-zoom'
    """
    from iad_agent.tools import TOOL_ALIASES

    if name == "knn":
        return name
    short = {v: k for k, v in TOOL_ALIASES.items()}
    _, disabled = split_policy_name(name)
    extra = [t for t in dict.fromkeys(tool_name(d) for d in disable) if t not in disabled]
    return name + "".join(f"-no-{short.get(t, t)}" for t in extra)


def resolve_policy(name: str, disable: Iterable[str] = (), options: VLMOptions | None = None,
                   registering: bool = False) -> ResolvedPolicy:
    """The policy object and the tool set a policy name stands for (see the module docstring).

    Args:
        name: ``knn``, ``embedded``, ``embedded+<tool>``, ``openai``, ``hf``, each optionally
            followed by ``-no-<tool>`` suffixes.
        disable: more tools (full names or aliases) to leave out of a tool-using policy.
        options: VLM backend settings (ignored by the embedded and knn policies).
        registering: the caller registers the product itself (``iad eval``), so a registration
            ablation (``-no-brightness``) can be honoured.

    Raises:
        PolicyConfigError: an unknown policy or tool name, or options the backend refuses
            (e.g. ``openai`` without a base URL).
        MissingExtra: a VLM backend without the ``vlm`` extra installed.
    """
    label = policy_label(name, disable)
    if name == "knn":
        return ResolvedPolicy(label, make_policy("knn"), {}, ())
    from iad_agent.policies.embedded import COMPONENTS

    base, disabled = split_policy_name(name)
    disabled = tuple(dict.fromkeys((*disabled, *(tool_name(d) for d in disable))))
    without = tuple(d for d in disabled if d in COMPONENTS)  # policy components (embedded-no-selfsim), not tools
    registration = tuple((d, False) for d in disabled if d in REGISTRATION_COMPONENTS)
    disabled = tuple(d for d in disabled if d not in COMPONENTS and d not in REGISTRATION_COMPONENTS)
    embedded = base in ("embedded", FIXED_WEIGHTS) or base.startswith("embedded+")
    if (without or registration) and not embedded:
        parts = ", ".join([*without, *(r for r, _ in registration)])
        raise PolicyConfigError(f"{name!r}: only the embedded policy has the component(s) {parts}")
    if registration and not registering:
        parts = ", ".join(f"-no-{r}" for r, _ in registration)
        raise PolicyConfigError(f"{name!r}: {parts} changes how the product is registered, so only `iad eval` (which "
                                "registers its products) runs it; register the product with `iad register "
                                "--keep-brightness` (or, in Python, `register(..., clip=False)`) and inspect it "
                                "with the embedded policy")
    try:
        tools = tools_for(base, disabled)
        policy = make_policy(base, **(options or VLMOptions()).given(), **({"without": without} if without else {}))
    except PolicyConfigError:
        raise
    except ValueError as exc:  # a backend refusing its options
        raise PolicyConfigError(str(exc)) from exc
    return ResolvedPolicy(label, policy, tools, disabled, registration)


def tools_for(base: str, disabled: Iterable[str] = ()) -> dict[str, Tool]:
    """The tools a policy of this base name gets: none for ``knn``; the papers' four for the
    embedded policy; those plus ``anomaly_map`` (the normal-bank evidence) for a VLM.

    Raises:
        ValueError: an unknown tool name in ``disabled``.

    >>> sorted(tools_for("embedded+highfreq", ["zoom"]))
    ['comparative_retriever', 'high_frequency_enhancer', 'prior_retriever']
    >>> "anomaly_map" in tools_for("hf"), tools_for("knn")
    (True, {})
    """
    from iad_agent.tools import default_tools

    if base == "knn":
        return {}
    embedded = base in ("embedded", FIXED_WEIGHTS) or base.startswith("embedded+")
    return default_tools(tuple(tool_name(t) for t in disabled), anomaly_map=not embedded)


def make_policy(name: str, **options: Any) -> Policy:
    """Build a policy by its base name: ``embedded``, ``embedded+<tool>``, ``knn``, ``openai`` or ``hf``.

    Prefer :func:`resolve_policy`, which also gives the tool set. Options that are ``None``
    are dropped (the backend's default applies), and so are options the chosen backend does
    not take (see :class:`VLMOptions`). The result's ``concurrency`` attribute (1 where
    absent) is how many episodes may run at once.

    Raises:
        PolicyConfigError: unknown policy or tool name, or the hf policy without a model.
        MissingExtra: a VLM backend without the ``vlm`` extra installed.
        ValueError: a backend refusing its options.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if name == "embedded":
        from iad_agent.policies.embedded import EmbeddedPolicy

        return EmbeddedPolicy(without=tuple(options.get("without", ())))
    if name == FIXED_WEIGHTS:
        from iad_agent.policies.embedded import HAND_SET_WEIGHTS, EmbeddedPolicy

        policy = EmbeddedPolicy(weights=HAND_SET_WEIGHTS, without=tuple(options.get("without", ())))
        policy.name = FIXED_WEIGHTS + "".join(f"-no-{c}" for c in policy.without)
        return policy
    if name.startswith("embedded+"):  # embedded+highfreq: a tool the gate has switched off, back on
        from iad_agent.policies.embedded import EmbeddedPolicy
        from iad_agent.tools import default_tools

        known = default_tools()
        wanted = [tool_name(t) for t in name.split("+")[1:]]
        unknown = [t for t in wanted if t not in known]
        if unknown:
            raise PolicyConfigError(f"unknown tool {', '.join(unknown)} in policy {name!r}; tools: {', '.join(sorted(known))}")
        return EmbeddedPolicy(weights={t: EmbeddedPolicy.TRIAL_WEIGHT for t in wanted}, without=tuple(options.get("without", ())))
    if name == "knn":
        from iad_agent.policies.knn import KnnPolicy

        return KnnPolicy()
    if name == "openai":
        require("vlm", "openai")
        from iad_agent.policies.openai import OpenAIPolicy

        return OpenAIPolicy(**_accepted(OpenAIPolicy, options, name))
    if name == "hf":
        if "model" not in options:
            raise PolicyConfigError("the hf policy needs --model (a local folder of weights, e.g. Qwen2.5-VL-3B-Instruct)")
        require("vlm", "transformers", "accelerate", *(["peft"] if options.get("adapter") else []))
        from iad_agent.policies.hf import HFPolicy

        return HFPolicy(**_accepted(HFPolicy, options, name))
    raise PolicyConfigError(f"unknown policy {name!r}; choose knn, embedded, embedded+<tool>, {FIXED_WEIGHTS}, openai or hf, "
                            "optionally with -no-<tool> suffixes (e.g. embedded-no-zoom)")


def _accepted(cls: type, options: dict[str, Any], name: str) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    unused = sorted(set(options) - set(params))
    if unused:
        log.debug("policy %s ignores options %s", name, ", ".join(unused))
    return {k: v for k, v in options.items() if k in params}

