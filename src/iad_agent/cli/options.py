"""Command-line options shared by ``iad inspect``, ``iad register`` and ``iad eval`` (the VLM backend
settings, the feature backbone)."""

from __future__ import annotations

import typer

BASE_URL = typer.Option(None, "--base-url", metavar="URL", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.",
                        show_default="$OPENAI_BASE_URL")
MODEL = typer.Option(None, "--model", metavar="NAME|DIR", help="Model name (openai) or folder of the weights (hf).",
                     show_default="openai: the one model the server serves")
API_KEY_ENV = typer.Option(None, "--api-key-env", metavar="VAR", help="openai: environment variable holding the API key.",
                           show_default="OPENAI_API_KEY")
TIMEOUT = typer.Option(None, "--timeout", metavar="SECONDS", help="openai: seconds per request.", show_default="120")
MAX_RETRIES = typer.Option(None, "--max-retries", metavar="N", help="openai: retries on 429/5xx/timeouts/malformed replies.",
                           show_default="3")
NATIVE_TOOLS = typer.Option(None, "--native-tools/--text-tools", help="openai: native function calling or the text protocol.",
                            show_default="--text-tools")
MAX_IMAGE_SIDE = typer.Option(None, "--max-image-side", metavar="PIXELS", help="VLM: longest image side sent to the model.",
                              show_default="768")
ADAPTER = typer.Option(None, "--adapter", metavar="DIR", help="hf: PEFT LoRA adapter folder.", show_default="none")
DTYPE = typer.Option(None, "--dtype", metavar="auto|float32|bfloat16|float16", help="hf: weight type.", show_default="auto")
DEVICE = typer.Option(None, "--device", metavar="cpu|cuda|auto", help="hf: where the model runs.", show_default="cpu")
TEMPERATURE = typer.Option(None, "--temperature", metavar="T", help="VLM: sampling temperature; 0 = greedy decoding.",
                           show_default="0")
MAX_NEW_TOKENS = typer.Option(None, "--max-new-tokens", metavar="N", help="VLM: tokens per turn.",
                              show_default="openai 1024, hf 512")
BACKBONE = typer.Option("efficientnet-lite0", "--backbone", metavar="NAME|DIR|timm:NAME:CHECKPOINT",
                        help="Feature backbone of new products: efficientnet-lite0 / -lite1 / -lite2 (packaged), a local "
                        "Hugging Face model folder (DINOv2, DINOv3, CLIP, SigLIP, ConvNeXt, ResNet, ...), or "
                        "timm:MODEL_NAME:CHECKPOINT. Saved with the product.")
LAYERS = typer.Option(None, "--layers", metavar="I,J", help="Custom backbone: tapped layers, comma-separated (Hugging Face: "
                      "hidden-state indices, 0 = embeddings; timm: feature levels).",
                      show_default="the last block of DINO ViTs, the blocks at 1/2 and 3/4 depth of other ViTs, the "
                      "stride-8 and stride-16 stages of CNNs")


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
