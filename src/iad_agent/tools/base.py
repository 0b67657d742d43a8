"""The tool contract (smolagents style): a name, a description, a JSON schema, one call.

* A tool class states its ``name`` (a class constant that policies and trajectory styles use
  instead of repeating the string), a ``description`` and the JSON schema of its arguments,
  which is checked against the signature of ``run`` when the class is built.
* Arguments are validated against the schema before the tool runs; a bad call (unknown tool,
  wrong types, a box outside the image) comes back as an error :class:`ToolResult` that the
  policy sees as an observation. So does *any* exception a tool raises (it is logged too):
  a tool never crashes an episode.
* What a tool measured is a typed :class:`Reading` (``ToolResult.reading``; ``ToolResult.data``
  is its dict form for the JSON trace). Readings that weigh for or against an anomaly are
  :class:`Evidence`: the measurement over the tool's calibrated normal limit.
* Those limits are the product's :class:`ToolLimits` (calibrated on held-out good images at
  registration, saved with the product); :func:`evidence_ratio` never divides by a limit
  that is zero or not finite.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import jsonschema

from iad_agent.types import ToolCall, ToolResult

if TYPE_CHECKING:
    from iad_agent.episode import Episode

log = logging.getLogger(__name__)

BOX_SCHEMA = {
    "type": "array",
    "items": {"type": "number"},
    "minItems": 4,
    "maxItems": 4,
    "description": "normalized box [x1, y1, x2, y2] with coordinates in 0..1 of the query image",
}


@dataclass(frozen=True)
class Reading:
    """Typed measurements of one tool call (subclasses document their fields)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in the trace (``ToolResult.data``); fields that are ``None`` are left out."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class Evidence(Reading):
    """A reading that weighs for or against an anomaly.

    Attributes:
        evidence: the tool's measurement divided by its calibrated normal limit (1.0 = as
            unusual as the most unusual good parts allowed by the false-alarm rate); ``None``
            when the product has no usable limit for the tool.
    """

    evidence: float | None


@dataclass
class ToolLimits:
    """Each tool's normal limit, calibrated on held-out good images at registration.

    Saved with the product (``limits.json``); products registered before it existed kept
    the same keys in their ``gate.json``, which :meth:`from_dict` reads as well.

    Attributes:
        zoom_threshold: normal level of the perceptive zoomer's re-scored crop (feature distance).
        compare_threshold: normal level of the comparative retriever's position-wise region distance.
        highfreq_threshold: normal level of the high-frequency energy ratio (unit-free, >= 1).
    """

    zoom_threshold: float = 1.5
    compare_threshold: float = 1.0
    highfreq_threshold: float = 1.5

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToolLimits:
        """Read ``limits.json`` or, for an older product, its ``gate.json`` (other keys are ignored).

        >>> ToolLimits.from_dict({"zoom_threshold": 2.0, "band_low": 0.75})
        ToolLimits(zoom_threshold=2.0, compare_threshold=1.0, highfreq_threshold=1.5)
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def evidence_ratio(value: float, limit: float) -> float | None:
    """``value / limit``, or ``None`` when the limit is not a positive finite number.

    >>> evidence_ratio(3.0, 2.0), evidence_ratio(3.0, 0.0), evidence_ratio(3.0, float("nan"))
    (1.5, None, None)
    """
    if not (isinstance(limit, (int, float)) and math.isfinite(limit) and limit > 0 and math.isfinite(value)):
        return None
    return value / limit


class Tool:
    """Base class: subclasses set ``name``, ``description``, ``parameters`` and implement ``run``.

    ``run(self, episode, **arguments)`` takes exactly the schema's properties as keyword
    arguments; those the schema requires have no default, the others have one.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    parameters: ClassVar[dict[str, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for attr in ("name", "description", "parameters"):
            if not hasattr(cls, attr):
                raise TypeError(f"tool class {cls.__name__} must define {attr!r}")
        jsonschema.Draft202012Validator.check_schema(cls.parameters)
        _check_signature(cls)

    def spec(self) -> dict[str, Any]:
        """The OpenAI / Qwen function-calling description of this tool."""
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def __call__(self, arguments: Any, episode: Episode) -> ToolResult:
        if not isinstance(arguments, dict):
            return ToolResult.failure(f"{self.name}: arguments must be a JSON object, got {type(arguments).__name__}")
        errors = sorted(jsonschema.Draft202012Validator(self.parameters).iter_errors(arguments), key=str)
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "arguments"
            return ToolResult.failure(f"{self.name}: invalid {where}: {errors[0].message}")
        try:
            return self.run(episode, **arguments)
        except ValueError as exc:  # argument values the schema cannot express (e.g. empty box)
            return ToolResult.failure(f"{self.name}: {exc}")
        except Exception as exc:  # a bug or a broken resource: the episode goes on, the log keeps the traceback
            log.exception("tool %s failed on %s", self.name, arguments)
            return ToolResult.failure(f"{self.name} failed ({type(exc).__name__}: {exc}); try another tool or answer")

    def run(self, episode: Episode, **arguments: Any) -> ToolResult:
        raise NotImplementedError


def _check_signature(cls: type[Tool]) -> None:
    """Refuse a tool class whose ``run`` does not take exactly its schema's arguments."""
    if cls.run is Tool.run:
        return  # an abstract intermediate class
    params = list(inspect.signature(cls.run).parameters.values())[2:]  # after self, episode
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) for p in params):
        raise TypeError(f"tool {cls.__name__}.run must take each argument by name (no *args, **kwargs)")
    schema = cls.parameters
    properties = set(schema.get("properties", {}))
    required = set(schema.get("required", []))
    names = {p.name for p in params}
    without_default = {p.name for p in params if p.default is inspect.Parameter.empty}
    problems = []
    if names != properties:
        problems.append(f"run() takes {sorted(names)} but the schema's properties are {sorted(properties)}")
    if without_default != required:
        problems.append(f"arguments without a default {sorted(without_default)} differ from the schema's required "
                        f"{sorted(required)}")
    if schema.get("additionalProperties", True) is not False:
        problems.append("the schema must set additionalProperties to false")
    if problems:
        raise TypeError(f"tool {cls.__name__} ({cls.name}): " + "; ".join(problems))


def execute(call: ToolCall, tools: dict[str, Tool], episode: Episode) -> ToolResult:
    """Run one tool call, turning an unknown tool name into an error observation."""
    tool = tools.get(call.name)
    if tool is None:
        return ToolResult.failure(f"unknown tool {call.name!r}; available tools: {', '.join(sorted(tools))}")
    return tool(call.arguments, episode)
