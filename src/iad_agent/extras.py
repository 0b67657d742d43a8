"""Optional parts of the install: ``pip install 'iad-agent[vlm]'`` and so on (see ``pyproject.toml``).

A plain ``pip install iad-agent`` gives the embedded CPU inspector (registration, inspection,
the benchmark). VLM backends, training, the service and Ray scale-out need an *extra*; the
code of an extra imports its packages lazily and calls :func:`require` first, so a missing
package is a one-line message naming the extra instead of an ``ImportError`` deep inside.
"""

from __future__ import annotations

import importlib

from iad_agent.errors import MissingExtra

#: What each extra is for, in the words of the error message.
PURPOSE = {
    "vlm": "vision-language-model policies (openai, hf)",
    "train": "trajectory datasets and training",
    "serve": "the inspection service",
    "scale": "Ray scale-out",
    "backbones": "Hugging Face backbones (--backbone MODEL_FOLDER)",
    "timm": "timm backbones (--backbone timm:NAME:CHECKPOINT)",
}


def require(extra: str, *modules: str) -> None:
    """Import ``modules`` or raise :class:`MissingExtra` naming ``extra`` and how to install it.

    >>> require("vlm", "json")  # present: nothing happens
    >>> require("train", "no_such_module_xyz")
    Traceback (most recent call last):
    ...
    iad_agent.errors.MissingExtra: trajectory datasets and training need the 'train' extra (no_such_module_xyz is not installed): pip install 'iad-agent[train]'
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtra(f"{PURPOSE.get(extra, extra)} need the {extra!r} extra ({module} is not installed): "
                               f"pip install 'iad-agent[{extra}]'") from exc
