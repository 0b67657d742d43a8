"""Plain ``--help`` pages for the ``iad`` command: ``IMAGE...``, ``--timeout SECONDS [default: 120]``.

Typer's own help renders every parameter with its Python type (``{images}...``,
``<list[Path]>``, ``<bool>`` after a flag) and leaves out the defaults of options whose value
is decided further down (``None`` here, 120 s in the openai backend). These command classes
print click's classic layout instead, from the parameters' own metavars, help and defaults:

    Usage: iad inspect [OPTIONS] IMAGE...
      --timeout SECONDS   openai: seconds per request.  [default: 120]
      --json              Print one JSON object per image.

A parameter's metavar is its ``metavar=`` when given, else a word for its type (``PATH``,
``NUMBER``, ``INTEGER``, ``TEXT``); flags have none; a repeatable option says so.
"""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

_TYPE_WORDS = {int: "INTEGER", float: "NUMBER", str: "TEXT", Path: "PATH", bool: "BOOLEAN"}


def metavar(param) -> str:  # noqa: ANN001 - a TyperArgument or TyperOption
    """The word shown for ``param``'s value (``IMAGE...``, ``PATH``), or ``""`` for a flag."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.metavar:
        word = param.metavar
    elif param.param_type_name == "argument":
        word = param.name.upper().rstrip("S") if param.nargs != 1 else param.name.upper()
    else:
        desc = param.type_descriptor
        if desc.is_choice:
            word = "|".join(str(c) for c in desc.choices or ())
        else:
            annotation = desc.annotation
            inner = getattr(annotation, "__args__", (annotation,))[0] if desc.is_list else annotation
            word = _TYPE_WORDS.get(inner, "PATH" if desc.is_path else "VALUE")
    if param.param_type_name == "argument" and param.nargs != 1 and not word.endswith("..."):
        word += "..."
    return word


def _default(param) -> str | None:  # noqa: ANN001
    show = param.show_default
    if isinstance(show, str):
        return show
    if not show or param.required or getattr(param, "count", False):
        return None
    value = param.default
    if value is None or value == [] or value == () or (getattr(param, "is_flag", False) and value is False):
        return None
    if getattr(param, "is_flag", False) and param.secondary_opts:
        return param.opts[0] if value else param.secondary_opts[0]
    return str(value)


def _range(param) -> str | None:  # noqa: ANN001
    if getattr(param, "count", False):
        return None
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if lo is None and hi is None:
        return None
    if lo is not None and hi is not None:
        return f"{lo} to {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


def help_record(param) -> tuple[str, str] | None:  # noqa: ANN001
    """``(names and metavar, help with [default: …])`` of one parameter, or ``None`` when hidden."""
    if getattr(param, "hidden", False):
        return None
    word = metavar(param)
    if param.param_type_name == "argument":
        names = word
    else:
        names = ", ".join(param.opts) + (f" {word}" if word else "")
        if param.secondary_opts:
            names += " / " + ", ".join(param.secondary_opts)
    extra = [x for x in (_range(param) and f"range: {_range(param)}", _default(param) and f"default: {_default(param)}",
                         "repeatable" if getattr(param, "multiple", False) else None,
                         "required" if param.required and param.param_type_name == "option" else None) if x]
    text = (param.help or "").strip()
    if extra:
        text = f"{text}  [{'; '.join(extra)}]".strip()
    return names, text


class _PlainHelp:
    """Mixed into typer's command classes: classic click help with our metavars and defaults."""

    rich_markup_mode = None

    def format_help(self, ctx: typer.Context, formatter) -> None:  # noqa: ANN001
        ctx.ensure_object(dict)
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        self.format_options(ctx, formatter)
        if isinstance(self, TyperGroup):
            self.format_commands(ctx, formatter)
        self.format_epilog(ctx, formatter)

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = ["[OPTIONS]"] if any(p.param_type_name == "option" for p in self.get_params(ctx)) else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                pieces.append(metavar(p) if p.required else f"[{metavar(p)}]")
        if isinstance(self, TyperGroup):
            pieces.append("COMMAND [ARGS]...")
        return pieces

    def format_options(self, ctx: typer.Context, formatter) -> None:  # noqa: ANN001
        args, opts = [], []
        for p in self.get_params(ctx):
            record = help_record(p)
            if record is not None:
                (args if p.param_type_name == "argument" else opts).append(record)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class Command(_PlainHelp, TyperCommand):
    """A command of ``iad`` (plain help)."""


class Group(_PlainHelp, TyperGroup):
    """A group of ``iad`` commands (plain help)."""
