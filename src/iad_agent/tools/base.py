"""The tool interface (smolagents style): a name, a description, a JSON schema, one call.

Arguments are validated against the schema before the tool runs; a bad call (unknown tool,
wrong types, a box outside the image) comes back as an error ``ToolResult`` that the policy
sees as an observation, never as an exception.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import jsonschema

from iad_agent.types import ToolCall, ToolResult

if TYPE_CHECKING:
    from iad_agent.inspector import Episode

log = logging.getLogger(__name__)

BOX_SCHEMA = {
    "type": "array",
    "items": {"type": "number"},
    "minItems": 4,
    "maxItems": 4,
    "description": "normalized box [x1, y1, x2, y2] with coordinates in 0..1 of the query image",
}


class Tool:
    """Base class: subclasses set ``name``, ``description``, ``parameters`` and implement ``run``."""

    name: ClassVar[str]
    description: ClassVar[str]
    parameters: ClassVar[dict[str, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for attr in ("name", "description", "parameters"):
            if not hasattr(cls, attr):
                raise TypeError(f"tool class {cls.__name__} must define {attr!r}")
        jsonschema.Draft202012Validator.check_schema(cls.parameters)

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

    def run(self, episode: Episode, **arguments: Any) -> ToolResult:
        raise NotImplementedError


def execute(call: ToolCall, tools: dict[str, Tool], episode: Episode) -> ToolResult:
    """Run one tool call, turning an unknown tool name into an error observation."""
    tool = tools.get(call.name)
    if tool is None:
        return ToolResult.failure(f"unknown tool {call.name!r}; available tools: {', '.join(sorted(tools))}")
    return tool(call.arguments, episode)
