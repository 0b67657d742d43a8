"""``HFPolicy``: a local transformers vision-language model (e.g. Qwen2.5-VL-3B-Instruct) as the agent.

Loads ``AutoModelForImageTextToText`` and its processor from a folder (never from a hub),
optionally with a PEFT LoRA adapter, renders the episode with the model's chat template and
decodes greedily or by sampling. A folder written by ``trainer.save_model()`` for a LoRA run
(``adapter_config.json`` but no ``config.json``) loads as base model + adapter by itself.

Qwen2-VL-family processors need torchvision in transformers 5; where it is missing (CPU
installs), the processor is built without its video part (``iad_agent.training.processor``,
shared with SFT): same text, same image-token expansion, same tensors.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iad_agent.policies.vlm import DEFAULT_MAX_IMAGE_SIDE, Completion, VLMPolicy

if TYPE_CHECKING:
    from iad_agent.episode import Episode
    from iad_agent.tools.base import Tool

log = logging.getLogger(__name__)

_DTYPES = {"auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def load_processor(path: str | Path) -> Any:
    """The model's processor: ``AutoProcessor``, or, where transformers 5 lacks torchvision for
    Qwen2-VL's video processor, the same processor without video (shared with SFT)."""
    from iad_agent.training.processor import load_training_processor

    processor = load_training_processor(path)
    if not hasattr(processor, "image_processor"):
        raise ValueError(f"{path}: no image processor files (preprocessor_config.json); not a vision-language model folder")
    return processor


def encode_messages(processor: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True):
    """Chat messages (text parts and PIL image parts) → model inputs (a ``BatchFeature``)."""
    images = [p["image"] for m in messages for p in m["content"] if p.get("type") == "image"]
    plain = [{"role": m["role"],
              "content": [{"type": "image"} if p.get("type") == "image" else {"type": "text", "text": p.get("text", "")}
                          for p in m["content"]]}
             for m in messages]
    text = processor.apply_chat_template(plain, tokenize=False, add_generation_prompt=add_generation_prompt)
    return processor(text=[text], images=images or None, return_tensors="pt")


def resolve_checkpoint(model: str | Path, adapter: str | Path | None = None) -> tuple[str, str | None]:
    """``(base weights, adapter or None)``; a LoRA checkpoint folder names its own base model."""
    path = Path(model).expanduser()
    if (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        if adapter is not None:
            raise ValueError(f"{path} is itself a LoRA adapter; pass it as --model alone, or the base model with --adapter")
        base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{path}/adapter_config.json names no base_model_name_or_path; "
                             "pass the base as --model and this folder as --adapter")
        return str(base), str(path)
    if not path.exists():
        log.info("%s is not a folder; trying the local Hugging Face cache (no download)", model)
    return str(path) if path.exists() else str(model), str(adapter) if adapter is not None else None


class HFPolicy(VLMPolicy):
    """A local transformers VLM.

    Args:
        model: folder of the weights (or of a LoRA checkpoint whose base model is on disk).
        adapter: folder of a PEFT LoRA adapter to apply (merged for inference).
        dtype: ``auto`` (the checkpoint's), ``float32``, ``bfloat16`` or ``float16``.
        device: ``cpu``, ``cuda``, ``cuda:1``, ``mps``, or ``auto`` (accelerate's device map).
        max_new_tokens: tokens per reply.
        temperature: 0 for greedy decoding, else sampling at this temperature.
        top_p: nucleus sampling (sampling only).
        max_image_side: longer side of every image given to the processor.
    """

    name = "hf"
    concurrency = 1

    def __init__(self, model: str | Path, adapter: str | Path | None = None, dtype: str = "auto", device: str = "cpu",
                 max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 1.0,
                 max_image_side: int | None = DEFAULT_MAX_IMAGE_SIDE) -> None:
        import torch
        from transformers import AutoModelForImageTextToText

        super().__init__(max_image_side=max_image_side, native_tools=False)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        base, adapter_path = resolve_checkpoint(model, adapter)
        self.model_path, self.adapter = base, adapter_path
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.processor = load_processor(base)  # an adapter checkpoint carries copies of the base's processor files
        kwargs: dict[str, Any] = {"dtype": _DTYPES[dtype], "local_files_only": True}
        if device == "auto":
            kwargs["device_map"] = "auto"
        net = AutoModelForImageTextToText.from_pretrained(base, **kwargs)
        if adapter_path is not None:
            from peft import PeftModel

            net = PeftModel.from_pretrained(net, adapter_path).merge_and_unload()
        if device != "auto":
            net = net.to(torch.device(device))
        self.model = net.eval()
        self.device = next(self.model.parameters()).device
        self._lock = threading.Lock()  # generate keeps per-call state on the model (rope deltas)

    def complete(self, messages: list[dict[str, Any]], tools: dict[str, Tool], episode: Episode) -> Completion:
        import torch

        inputs = encode_messages(self.processor, messages).to(self.device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.temperature > 0}
        if self.temperature > 0:
            options.update(temperature=self.temperature, top_p=self.top_p)
        else:
            options.update(temperature=None, top_p=None, top_k=None)  # greedy: drop the checkpoint's sampling defaults
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, **options)
        new = output[0, prompt_tokens:].tolist()
        stops = _stop_ids(self.model.generation_config)
        cut = next((i + 1 for i, t in enumerate(new) if t in stops), None)
        produced = new[:cut] if cut is not None else new
        text = self.processor.batch_decode([produced], skip_special_tokens=True)[0]
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(produced),
                 "total_tokens": prompt_tokens + len(produced)}
        return Completion(text=text, usage=usage, finish_reason="stop" if cut is not None else "length")


def _stop_ids(config: Any) -> set[int]:
    ids = config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    return {int(i) for i in ids}
