"""Text mode: a text-only language model (e.g. SmolLM2-135M-Instruct) as the agent, on numbers and words.

A small language model cannot see pixels, but it can read what the normal bank and the tools
measured. In text mode

- the query image is replaced by one line, the global look in numbers (:func:`look_text`:
  score / threshold ratio and hot-spot box);
- every tool answers with its reading only (:class:`TextTool`: e.g. ``zoom ratio 1.34``, no
  image), computed once per image and call (tools are deterministic);
- the system prompt is the compact :file:`prompts/system_text.md`: the same ``<think>`` /
  ``<tool_call>`` / ``<answer>`` protocol and one tool, named but without its JSON schema, in
  about 50 tokens instead of 700 (every token of every rollout costs on two shared CPU cores;
  the exact call and answer format is learnt from the SFT trajectories).

The episode is still run by the one agent loop (:func:`~iad_agent.agent.loop.run_episode`) and
rendered by :meth:`~iad_agent.types.Trajectory.to_messages`; :class:`TextPolicy` only swaps the
image part for the look's text and the system prompt for the text-mode one, exactly as
:func:`text_prompt` writes the prompt of a GRPO row, so training and inference see the same tokens.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iad_agent import prompts
from iad_agent.policies.vlm import Completion, VLMPolicy
from iad_agent.types import ToolResult

if TYPE_CHECKING:
    from iad_agent.episode import Episode, GlobalLook
    from iad_agent.tools.base import Tool

TEXT_MAX_STEPS = 3
_LABELS = {"perceptive_zoomer": "zoom", "comparative_retriever": "comparison", "high_frequency_enhancer": "detail"}


def _box(values: list[float]) -> list[float]:
    return [round(float(v), 2) for v in values]


def look_text(look: GlobalLook) -> str:
    """The global look in one line (what replaces the query image in text mode).

    >>> import numpy as np
    >>> from iad_agent.episode import GlobalLook
    >>> from iad_agent.types import Box
    >>> look_text(GlobalLook(np.zeros((2, 2)), 1.5, 1.2, Box(0.104, 0.2, 0.5, 0.6), 0.031))
    'Global ratio 1.25, hot spot [0.1, 0.2, 0.5, 0.6].\\n'
    """
    return f"Global ratio {look.ratio:.2f}, hot spot {_box(look.hot_box.to_list())}.\n"


def text_system_prompt(product: str, max_steps: int = TEXT_MAX_STEPS) -> str:
    return prompts.load("system_text.md").format(product=product, max_steps=max_steps).strip()


def text_prompt(product: str, look: GlobalLook, max_steps: int = TEXT_MAX_STEPS) -> list[dict[str, Any]]:
    """The messages up to the model's first turn (system, then the look's line and the task)."""
    return [{"role": "system", "content": [{"type": "text", "text": text_system_prompt(product, max_steps)}]},
            {"role": "user", "content": [{"type": "text", "text": look_text(look)},
                                         {"type": "text", "text": prompts.task_prompt(product)}]}]


def reading_text(name: str, result: ToolResult) -> str:
    """A tool result as text mode shows it: the reading over its normal limit, or the error.

    >>> reading_text("perceptive_zoomer", ToolResult(text="Zoomed into ...", data={"evidence": 1.337}))
    'zoom ratio 1.34'
    """
    if not result.ok:
        return result.text
    if result.data.get("evidence") is not None:
        return f"{_LABELS.get(name, name)} ratio {float(result.data['evidence']):.2f}"
    return result.text


class TextTool:
    """A project tool in text mode: same name and schema, the reading as text, no images, each call run once.

    Results are kept in the episode's ``memo`` (an episode copied with :func:`fresh_episode`
    shares it), keyed by the call's arguments.
    """

    def __init__(self, tool: Tool) -> None:
        self.tool = tool
        self.name, self.description, self.parameters = tool.name, tool.description, tool.parameters

    def spec(self) -> dict[str, Any]:
        return self.tool.spec()

    def __call__(self, arguments: Any, episode: Episode) -> ToolResult:
        try:
            key = (self.name, json.dumps(arguments, sort_keys=True))
        except (TypeError, ValueError):
            key = None
        cache = episode.memo.setdefault("text_tool_results", {})
        if key is not None and key in cache:
            return cache[key]
        full = self.tool(arguments, episode)
        result = ToolResult(text=reading_text(self.name, full), data=dict(full.data), error=full.error)
        if key is not None:
            cache[key] = result
        return result


def text_tools(names: tuple[str, ...] = ("perceptive_zoomer",)) -> dict[str, TextTool]:
    """The text-mode tool set (default: the zoomer alone)."""
    from iad_agent.tools import default_tools

    tools = default_tools(anomaly_map=True)
    return {name: TextTool(tools[name]) for name in names}


def fresh_episode(base: Episode) -> Episode:
    """A new, empty episode of the same query: features, global look and tool results shared with ``base``."""
    from dataclasses import replace

    from iad_agent.episode import Episode

    traj = replace(base.trajectory, steps=[], answer=None, stop_reason=None, evidence=dict(base.trajectory.evidence),
                   elapsed_ms=0.0)
    episode = Episode(base.product, base.query, traj, notes=list(base.notes), memo=base.memo)
    for name in ("grid", "look"):
        if name in base.__dict__:
            episode.__dict__[name] = base.__dict__[name]
    return episode


def text_messages(episode: Episode, max_steps: int = TEXT_MAX_STEPS) -> list[dict[str, Any]]:
    """The episode so far in text mode: ``Trajectory.to_messages()`` with the text-mode system
    prompt and the global look's line in place of the query image (no other image exists in
    text mode: tools return readings only)."""
    messages = episode.trajectory.to_messages()
    look = {"type": "text", "text": look_text(episode.look)}
    query = episode.trajectory.query_image
    for message in messages:
        if message["role"] == "system":
            message["content"] = [{"type": "text", "text": text_system_prompt(episode.product.name, max_steps)}]
            continue
        content = []
        for part in message["content"]:
            if part.get("type") == "image":
                if part.get("image") is query:
                    content.append(look)
                continue
            content.append(part)
        message["content"] = content
    return messages


class TextPolicy(VLMPolicy):
    """A local causal language model (transformers) reading the episode in text mode.

    Turns of episodes run concurrently (:func:`run_episodes`) are decoded together: each
    ``complete`` call queues its prompt, and one caller at a time generates for every queued
    prompt in one left-padded batch (on a CPU, decoding one sequence or eight costs about the
    same: each step reads all the weights once).

    Args:
        model: a folder of weights, or an already loaded ``(model, tokenizer)`` pair (a benchmark
            evaluates several checkpoints without reloading).
        adapter: a PEFT LoRA adapter folder applied on top (merged in memory).
        max_new_tokens: tokens per turn.
        temperature: 0 for greedy decoding, else sampling.
        max_steps: the turn budget the system prompt announces (the loop's ``max_steps``).
        batch_size: at most this many turns decoded together.
    """

    name = "text"

    def __init__(self, model: str | Path | tuple[Any, Any], adapter: str | Path | None = None, max_new_tokens: int = 64,
                 temperature: float = 0.0, max_steps: int = TEXT_MAX_STEPS, batch_size: int = 8) -> None:
        super().__init__(max_image_side=None, native_tools=False)
        if isinstance(model, tuple):
            self.model, self.tokenizer = model
        else:
            self.model, self.tokenizer = load_text_model(model, adapter)
        self.max_new_tokens, self.temperature, self.max_steps = max_new_tokens, temperature, max_steps
        self.concurrency = batch_size
        self._batcher = _Batcher(self._generate, batch_size)

    def messages(self, episode: Episode) -> list[dict[str, Any]]:
        return text_messages(episode, self.max_steps)

    def complete(self, messages: list[dict[str, Any]], tools: dict[str, Tool], episode: Episode) -> Completion:
        ids = encode_text(self.tokenizer, messages)[0].tolist()
        produced, finished = self._batcher(ids)
        text = self.tokenizer.decode(produced, skip_special_tokens=True)
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(produced)}
        return Completion(text=text, usage=usage, finish_reason="stop" if finished else "length")

    def _generate(self, batch: list[list[int]]) -> list[tuple[list[int], bool]]:
        """Greedy (or sampled) continuation of each prompt up to the end of the turn."""
        import torch

        pad = self.tokenizer.pad_token_id
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.temperature > 0,
                                   "pad_token_id": pad}
        if self.temperature > 0:
            options["temperature"] = self.temperature
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                      **options)
        stop = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        results = []
        for row in out[:, width:].tolist():
            cut = row.index(stop) + 1 if stop in row else None
            results.append((row[:cut] if cut is not None else [t for t in row if t != pad], cut is not None))
        return results


class _Batcher:
    """Gathers the turns that concurrent episodes ask for into one ``run_batch`` call.

    No thread of its own: the first waiting caller becomes the leader, waits ``window_s`` for
    other callers to queue (or until ``max_batch`` are queued), runs the batch and hands every
    caller its result; the others sleep until theirs is ready.
    """

    def __init__(self, run_batch: Any, max_batch: int, window_s: float = 0.05) -> None:
        self.run_batch, self.max_batch, self.window_s = run_batch, max(1, max_batch), window_s
        self.cond = threading.Condition()
        self.pending: list[dict[str, Any]] = []
        self.busy = False

    def __call__(self, ids: list[int]) -> Any:
        slot: dict[str, Any] = {"ids": ids}
        with self.cond:
            self.pending.append(slot)
            self.cond.notify_all()
            while "result" not in slot:
                if self.busy or not any(s is slot for s in self.pending):
                    self.cond.wait()
                    continue
                self.busy = True
                self.cond.wait_for(lambda: len(self.pending) >= self.max_batch, timeout=self.window_s)
                batch = self.pending[: self.max_batch]
                del self.pending[: len(batch)]
                self.cond.release()
                try:
                    results = self.run_batch([s["ids"] for s in batch])
                except Exception as exc:  # every caller of the batch sees the failure
                    results = [exc] * len(batch)
                finally:
                    self.cond.acquire()
                for s, r in zip(batch, results):
                    s["result"] = r
                self.busy = False
                self.cond.notify_all()
        if isinstance(slot["result"], Exception):
            raise slot["result"]
        return slot["result"]


def run_episodes(policy: TextPolicy, tools: dict[str, Any], episodes: list[Episode], max_steps: int,
                 progress: Any = None) -> list[Episode]:
    """Run the one agent loop on every episode, ``policy.concurrency`` at a time (their turns batched)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from iad_agent.agent.loop import run_episode

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, policy.concurrency)) as pool:
        futures = [pool.submit(run_episode, policy, tools, ep, max_steps) for ep in episodes]
        for future in as_completed(futures):
            future.result()
            done += 1
            if progress:
                progress(done, len(episodes))
    return episodes


def encode_text(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True):
    """Text chat messages → a ``(1, n)`` tensor of token ids, with the tokenizer's (tool-aware) template."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def load_text_model(path: str | Path, adapter: str | Path | None = None) -> tuple[Any, Any]:
    """A causal LM and its tokenizer from a local folder (no download), with the tool-aware ChatML template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iad_agent.policies.hf import resolve_checkpoint
    from iad_agent.training.templates import tool_chat_template

    base, adapter_path = resolve_checkpoint(path, adapter)
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    tokenizer.chat_template = tool_chat_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32", local_files_only=True)
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    return model.eval(), tokenizer
