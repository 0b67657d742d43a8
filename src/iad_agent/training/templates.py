"""Tool-aware chat templates and the response template for multi-turn GRPO with TRL.

TRL's ``GRPOTrainer`` runs the tools itself: it parses the model's tool calls into an assistant
message with ``tool_calls``, appends one ``tool`` message per result, and renders those with the
chat template to get the tokens the model reads next (masked out of the loss). Qwen2.5-VL's
stock template cannot render ``tool`` messages; Qwen3-VL's can, but in its own layout, and
both add a second tool list when TRL passes ``tools=``. So a family gets a *tool-aware*
template here that

- renders system, user and assistant turns exactly as the model's own template does (checked
  on a probe conversation before it is used);
- leaves the tool list to our system prompt (the ``tools`` argument is ignored: the schemas
  already travel in ``<tools>`` there, as at inference);
- renders a run of ``tool`` messages as one user turn of
  ``<tool_response>\\n[<tool name>] <text>\\n</tool_response>`` blocks, each followed by its
  images: exactly :func:`~iad_agent.agent.protocol.render_observation`, so what the model reads
  during GRPO is token-for-token what the ``hf`` policy sends it at inference;
- renders assistant ``tool_calls`` as ``<tool_call>{"name": …, "arguments": …}</tool_call>``.

:data:`RESPONSE_TEMPLATE` tells transformers' response parser (``tokenizer.parse_response``,
which TRL calls) how to read a turn of our protocol: ``<think>`` → reasoning, each
``<tool_call>`` → a JSON tool call, the rest (an ``<answer>`` block) → content.
"""

from __future__ import annotations

from typing import Any

_CONTENT = (
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content['type'] == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
)

_TOOL_CALLS = (
    "{%- if message['tool_calls'] %}{%- set said = namespace(value=message['content'] is string and message['content'] | length > 0) %}"
    "{%- if message['content'] is not string %}{%- for content in message['content'] %}"
    "{%- if content['text'] %}{%- set said.value = true %}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set call = call['function'] if call['function'] is defined else call %}"
    "{%- if not loop.first or said.value %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{%- if call['arguments'] is string %}{{- call['arguments'] }}{%- else %}{{- call['arguments'] | tojson }}{%- endif %}"
    "{{- '}</tool_call>' }}"
    "{%- endfor %}{%- endif %}"
)

_TOOL = (
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user\\n' }}{%- endif %}"
    "{{- '<tool_response>\\n[' + message['name'] + ']' }}"
    "{%- if message['content'] is string %}{{- ' ' + message['content'] }}"
    "{%- else %}{%- set first = namespace(value=true) %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'text' %}"
    "{%- if first.value %}{{- ' ' }}{%- endif %}{{- content['text'] }}{%- set first.value = false %}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '\\n</tool_response>' }}"
    "{%- if message['content'] is not string %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Picture ' + image_count.value | string + ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
)

_BODY = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'tool' %}" + _TOOL +
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' }}" + _CONTENT +
    "{%- if message['role'] == 'assistant' %}" + _TOOL_CALLS + "{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_COUNTERS = "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"

#: Qwen2.5-VL (and Qwen2-VL): the stock default system turn when the conversation has none.
QWEN2_5_VL_TOOLS = (
    _COUNTERS
    + "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    + _BODY
)

#: Qwen3-VL: no default system turn; its own tool list is left to our system prompt.
QWEN3_VL_TOOLS = _COUNTERS + _BODY

#: Text-only ChatML models (SmolLM2, Qwen2.5): the same turns without image tokens in practice.
CHATML_TOOLS = QWEN2_5_VL_TOOLS

RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close_pattern": r"</think>\s*", "content": "text"},
        "tool_calls": {"open": "<tool_call>", "close_pattern": r"</tool_call>\s*", "repeats": True, "content": "json",
                       "transform": {"type": "function", "function": "{content}"}},
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}

_FAMILIES = {"qwen2_5_vl": QWEN2_5_VL_TOOLS, "qwen2_vl": QWEN2_5_VL_TOOLS, "qwen3_vl": QWEN3_VL_TOOLS}


def _probe() -> list[dict[str, Any]]:
    from PIL import Image

    image = Image.new("RGB", (28, 28))
    return [
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "inspect"}]},
        {"role": "assistant", "content": [{"type": "text", "text": '<think>t</think>\n<tool_call>{"name": "x", "arguments": {}}</tool_call>'}]},
        {"role": "user", "content": [{"type": "text", "text": "<tool_response>\n[x] ok\n</tool_response>"},
                                     {"type": "image", "image": image}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<answer>{}</answer>"}]},
    ]


def tool_chat_template(processing_class: Any, model_type: str | None = None) -> str:
    """The tool-aware template for this model, after checking it renders our turns like the model's own.

    Raises:
        ValueError: no tool-aware template for this family, or the model's template renders
            the probe conversation differently (a template we do not know).
    """
    is_vlm = hasattr(processing_class, "image_processor")
    template = _FAMILIES.get(model_type or "", None) if is_vlm else CHATML_TOOLS
    if template is None:
        raise ValueError(f"no tool-aware chat template for model type {model_type!r}; supported: {', '.join(_FAMILIES)} "
                         "and text-only ChatML models")
    probe = _probe()
    if not is_vlm:
        probe = [{"role": m["role"], "content": "".join(p.get("text", "") for p in m["content"])} for m in probe]
    own = processing_class.apply_chat_template(probe, tokenize=False)
    ours = processing_class.apply_chat_template(probe, tokenize=False, chat_template=template)
    if own != ours:
        raise ValueError("the model's chat template renders system/user/assistant turns differently from the tool-aware "
                         f"{model_type or 'ChatML'} template, so training would not see what inference sends")
    return template
