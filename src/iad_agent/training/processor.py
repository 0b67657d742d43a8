"""The processor and chat template used for SFT: the model's own, made trainable.

Two practical gaps are closed here, without changing what the model sees:

- transformers 5 builds ``Qwen2_5_VLProcessor`` only with torchvision installed (for its video
  processor). Where it is missing (CPU installs), :class:`ImageOnlyQwen2_5_VLProcessor` is the
  same processor class minus the video processor: same text, same image-token expansion, same
  tensors, and a real ``ProcessorMixin`` so TRL's ``SFTTrainer`` treats the model as a VLM.
- loss on the model's own turns only needs ``{% generation %}`` markers in the chat template.
  TRL patches the templates it knows; a Qwen2.5-VL template that differs from TRL's copy only in
  whitespace gets TRL's Qwen2.5-VL training template after a check that both render a probe
  conversation identically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import Qwen2_5_VLProcessor, Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin

log = logging.getLogger(__name__)

QWEN_VL_TYPES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor (no torchvision needed)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any) -> None:
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without the video processor (no torchvision needed)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any) -> None:
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.vision_start_token, self.vision_end_token = "<|vision_start|>", "<|vision_end|>"
        for name in ("image_token", "video_token", "vision_start_token", "vision_end_token"):
            setattr(self, f"{name}_id", tokenizer.convert_tokens_to_ids(getattr(self, name)))
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def load_training_processor(path: str | Path) -> ProcessorMixin:
    """``AutoProcessor`` of a local model folder, or the image-only Qwen-VL processor without torchvision."""
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(path, local_files_only=True)
    except ImportError as exc:
        model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        if "torchvision" not in str(exc).lower() or model_type not in QWEN_VL_TYPES:
            raise
    log.info("%s: AutoProcessor needs torchvision; using the image-only %s processor", path, model_type)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    cls = ImageOnlyQwen3VLProcessor if model_type == "qwen3_vl" else ImageOnlyQwen2_5_VLProcessor
    return cls(image_processor, tokenizer, chat_template=_read_chat_template(Path(path)) or tokenizer.chat_template)


def _read_chat_template(folder: Path) -> str | None:
    import json

    if (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "chat_template.json").exists():
        return json.loads((folder / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    return None


def training_chat_template(processor: ProcessorMixin, probe: list[dict[str, Any]]) -> str | None:
    """A chat template with ``{% generation %}`` markers that renders like the model's own.

    Args:
        processor: the model's processor.
        probe: a conversation (content parts, images as placeholders) to check the rendering on.

    Returns:
        ``None`` when the model's template already has the markers, else the training template.

    Raises:
        ValueError: no training template is known for this chat template.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers, qwen2_5_vl_training_chat_template

    if has_generation_markers(processor.chat_template):
        return None
    try:
        return get_training_chat_template(processor)
    except ValueError:
        pass
    original = processor.apply_chat_template(probe, tokenize=False)
    patched = processor.apply_chat_template(probe, tokenize=False, chat_template=qwen2_5_vl_training_chat_template)
    if original != patched:
        raise ValueError("the model's chat template has no {% generation %} markers and no training variant is known; "
                         "add the markers around the assistant turns of chat_template.jinja")
    return qwen2_5_vl_training_chat_template
