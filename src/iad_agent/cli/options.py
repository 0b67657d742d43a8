"""Command-line options shared by ``iad inspect`` and ``iad eval`` (the VLM backend settings)."""

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


def vlm_options(**given: object):  # noqa: ANN201 - VLMOptions, imported lazily
    """The VLM flags of a command as one :class:`~iad_agent.policies.VLMOptions` (unset flags stay ``None``)."""
    from iad_agent.policies import VLMOptions

    return VLMOptions(**given)
