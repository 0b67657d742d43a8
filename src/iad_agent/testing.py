"""Test helpers: a tiny, randomly initialised Qwen2.5-VL that loads like real weights.

``build_tiny_qwen2_5_vl`` writes a config, random weights, a byte-level tokenizer with the
Qwen chat special tokens, an image processor and the Qwen2.5-VL chat template into a folder,
so ``AutoModelForImageTextToText.from_pretrained`` / ``AutoProcessor.from_pretrained`` (and
hence :class:`~iad_agent.policies.hf.HFPolicy`, SFT and GRPO code) run offline on CPU in
seconds. The model's output is random bytes: exactly the garbage a policy must survive.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The chat template shipped with Qwen/Qwen2.5-VL-3B-Instruct (images in any role's content list).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Control tokens of Qwen2.5-VL (special: dropped when decoding) ...
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# ... and the protocol tags, single tokens but kept in decoded text (as in the real tokenizer).
PROTOCOL_TOKENS = ["<tool_call>", "</tool_call>", "<think>", "</think>", "<answer>", "</answer>",
                   "<tool_response>", "</tool_response>"]


def _prompt_corpus() -> list[str]:
    from importlib import resources

    folder = resources.files("iad_agent.prompts")
    texts = [f.read_text(encoding="utf-8") for f in folder.iterdir() if f.name.endswith(".md")]
    texts.append('{"type": "function", "function": {"name": "perceptive_zoomer", "description": "Zoom into a region of '
                 'the query image", "parameters": {"type": "object", "properties": {"box": {"type": "array", "items": '
                 '{"type": "number"}, "minItems": 4, "maxItems": 4, "description": "normalized box [x1, y1, x2, y2] '
                 'with coordinates in 0..1 of the query image"}}, "required": ["box"], "additionalProperties": false}}}')
    return texts


def _tiny_tokenizer(special_tokens: list[str], vocab_size: int, chat_template: str) -> Any:
    """Byte-level BPE (every text encodes and decodes back), with merges learnt from the prompt
    templates so that a system prompt with its tool schemas stays around a thousand tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=special_tokens, show_progress=False)
    tok.train_from_iterator(_prompt_corpus(), trainer)
    tok.add_tokens(PROTOCOL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token=None, model_max_length=32768)
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_qwen2_5_vl(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, seed: int = 0,
                          min_pixels: int = 28 * 28 * 4, max_pixels: int = 112 * 112, vocab_size: int = 1024) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint (config, weights, tokenizer, processor) to ``out_dir``.

    The vision tower has one block whose width equals the language model's, patch 14, merge 2;
    the image processor resizes every image to at most ``max_pixels`` (112 x 112 = 16 image
    tokens by default), so a multi-image conversation stays a few hundred tokens long.

    Args:
        out_dir: folder to create (or overwrite).
        hidden_size: width of both towers (a multiple of 8: 2 heads with an even rotary split).
        num_layers: language-model layers.
        seed: torch seed for the random weights.
        min_pixels: image processor's lower bound on pixels per image.
        max_pixels: image processor's upper bound on pixels per image.
        vocab_size: byte-level BPE vocabulary (256 bytes, the special tokens, merges from the prompts).

    Returns:
        ``out_dir`` as a path, loadable with ``from_pretrained``.
    """
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _tiny_tokenizer(SPECIAL_TOKENS, vocab_size, QWEN2_5_VL_CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)

    heads = 2
    head_dim = hidden_size // heads
    quarter = head_dim // 2
    mrope = [quarter - 2 * (quarter // 3), quarter // 3, quarter // 3]  # t, h, w rotary sections, sum head_dim / 2
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers, "num_attention_heads": heads, "num_key_value_heads": 1,
            "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                                  "mrope_section": mrope},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1, "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_heads": heads,
            "out_hidden_size": hidden_size, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "window_size": 56, "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng():  # seeded weights without touching the caller's RNG state
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    # The processor as the real checkpoint ships it (tokenizer, image processor, chat template):
    # AutoProcessor builds Qwen2_5_VLProcessor from it where torchvision is installed.
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    (out / "chat_template.jinja").write_text(QWEN2_5_VL_CHAT_TEMPLATE, encoding="utf-8")
    config_file = out / "preprocessor_config.json"
    preprocessor = json.loads(config_file.read_text(encoding="utf-8"))
    preprocessor["processor_class"] = "Qwen2_5_VLProcessor"
    config_file.write_text(json.dumps(preprocessor, indent=2), encoding="utf-8")
    return out


# The chat template shipped with HuggingFaceTB/SmolLM2-135M-Instruct (string contents, ChatML).
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_chatml_lm(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, seed: int = 0,
                         vocab_size: int = 1024) -> Path:
    """Write a tiny random Llama (SmolLM2's architecture) with a ChatML tokenizer and SmolLM2's template.

    Stands in for SmolLM2-135M-Instruct in the text-mode tests (``AutoModelForCausalLM`` /
    ``AutoTokenizer.from_pretrained`` load it offline in a second).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = _tiny_tokenizer(specials, vocab_size, SMOLLM2_CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=ids["<|im_start|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def qwen3_vl_chat_template() -> str:
    """The chat template shipped with Qwen3-VL-*-Instruct (TRL keeps a verbatim copy)."""
    from importlib import resources

    return resources.files("trl").joinpath("chat_templates/qwen3_vl.jinja").read_text(encoding="utf-8")


def build_tiny_qwen3_vl(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, seed: int = 0,
                        min_pixels: int = 32 * 32 * 4, max_pixels: int = 128 * 128, vocab_size: int = 1024) -> Path:
    """Write a tiny random Qwen3-VL checkpoint (config, weights, tokenizer, processor, stock chat template).

    Like :func:`build_tiny_qwen2_5_vl`, with Qwen3-VL's layout: patch 16, merge 2, interleaved
    multimodal rotary sections, one deepstack layer, and Qwen3-VL's own template (which renders
    ``tool`` messages itself, differently from our observation turn).
    """
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = qwen3_vl_chat_template()
    tokenizer = _tiny_tokenizer(SPECIAL_TOKENS, vocab_size, template)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=16,
                                               merge_size=2, temporal_patch_size=2)
    heads = 2
    quarter = hidden_size // heads // 2
    mrope = [quarter - 2 * (quarter // 4), quarter // 4, quarter // 4]
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers, "num_attention_heads": heads, "num_key_value_heads": 1,
            "head_dim": hidden_size // heads, "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope,
                                "mrope_interleaved": True},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1, "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_heads": heads,
            "out_hidden_size": hidden_size, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "num_position_embeddings": 64, "deepstack_visual_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    config_file = out / "preprocessor_config.json"
    preprocessor = json.loads(config_file.read_text(encoding="utf-8"))
    preprocessor["processor_class"] = "Qwen3VLProcessor"
    config_file.write_text(json.dumps(preprocessor, indent=2), encoding="utf-8")
    return out
