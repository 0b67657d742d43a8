"""Command-line options shared by ``iad inspect``, ``iad register`` and ``iad eval`` (the VLM backend
settings, the feature backbone)."""

from __future__ import annotations

import typer

BASE_URL = typer.Option(None, "--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")
MODEL = typer.Option(None, "--model", help="Model name (openai) or path to weights (hf).")
API_KEY_ENV = typer.Option(None, "--api-key-env", help="openai: env var holding the API key (default OPENAI_API_KEY).")
TIMEOUT = typer.Option(None, "--timeout", help="openai: seconds per request.")
MAX_RETRIES = typer.Option(None, "--max-retries", help="openai: retries on 429/5xx/timeouts.")
NATIVE_TOOLS = typer.Option(None, "--native-tools/--text-tools", help="openai: native function calling or the text protocol.")
MAX_IMAGE_SIDE = typer.Option(None, "--max-image-side", help="VLM: longest image side sent to the model.")
ADAPTER = typer.Option(None, "--adapter", help="hf: PEFT LoRA adapter folder.")
DTYPE = typer.Option(None, "--dtype", help="hf: auto, float32, bfloat16, float16.")
DEVICE = typer.Option(None, "--device", help="hf: cpu, cuda, auto.")
TEMPERATURE = typer.Option(None, "--temperature", help="VLM: 0 = greedy decoding.")
MAX_NEW_TOKENS = typer.Option(None, "--max-new-tokens", help="VLM: tokens per turn.")
BACKBONE = typer.Option("efficientnet-lite0", "--backbone", help="Feature backbone of new products: efficientnet-lite0 "
                        "/ -lite1 / -lite2 (packaged), a local Hugging Face model folder (DINOv2, DINOv3, CLIP, SigLIP, "
                        "ConvNeXt, ResNet, ...), or timm:MODEL_NAME:CHECKPOINT. Saved with the product.")
LAYERS = typer.Option(None, "--layers", help="Custom backbone: tapped layers, comma-separated (Hugging Face: hidden-state "
                      "indices, 0 = embeddings; timm: feature levels). Default: the last block of DINO ViTs, the blocks "
                      "at 1/2 and 3/4 depth of other ViTs, the stride-8 and stride-16 stages of CNNs.")


def layers(text: str | None) -> tuple[int, ...] | None:
    """``--layers "6,9"`` → ``(6, 9)``; unset → None (the backbone's default).

    >>> layers("6, 9"), layers(None), layers("-1")
    ((6, 9), None, (-1,))
    """
    if text is None or not text.strip():
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers such as 6,9, got {text!r}", param_hint="--layers") from None


def vlm_options(**given: object):  # noqa: ANN201 - VLMOptions, imported lazily
    """The VLM flags of a command as one :class:`~iad_agent.policies.VLMOptions` (unset flags stay ``None``)."""
    from iad_agent.policies import VLMOptions

    return VLMOptions(**given)
