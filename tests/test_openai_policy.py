"""OpenAIPolicy against a real HTTP server on loopback that replays scripted conversations.

The server (stdlib ``http.server`` in a thread, random free port) records every request, so
the tests check what a real endpoint would receive: images as data URLs, the tool schemas,
the order of the turns, and the retries.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from iad_agent.inspector import Inspector
from iad_agent.policies import make_policy
from iad_agent.policies.openai import OpenAIPolicy
from iad_agent.tools import default_tools

CRACK = "mvtec_ad/hazelnut/test/crack/000.png"
HANG = "hang"

ZOOM_TURN = ('<think>A dark line near the centre.</think>\n'
             '<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0.3, 0.3, 0.6, 0.6]}}</tool_call>')
COMPARE_TURN = ('<think>Compare with a good part.</think>\n'
                '<tool_call>{"name": "comparative_retriever", "arguments": {"box": [0.3, 0.3, 0.6, 0.6]}}</tool_call>')
ANSWER_TURN = ('<think>The good part has no such line: a crack.</think>\n'
               '<answer>{"anomaly_present": true, "box": [0.35, 0.35, 0.55, 0.55], "defect_type": "crack", '
               '"reason": "a thin dark crack crosses the shell"}</answer>')


def chat_reply(content: str | None, tool_calls: list | None = None, finish: str = "stop") -> dict:
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 40, "total_tokens": 1040}}


class ScriptedServer:
    """An OpenAI-compatible endpoint that answers POSTs from a script.

    Each script entry is a chat-completion dict (200), ``(status, body, headers)``, raw
    ``bytes`` (200, sent as is), or ``HANG`` (never answers). The last entry repeats.
    """

    def __init__(self, script: list, delay: float = 0.0) -> None:
        self.script = list(script)
        self.delay = delay
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                self._send(200, json.dumps({"object": "list", "data": [{"id": "only-model"}]}).encode(), {})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    server.requests.append(json.loads(body))
                    server.headers.append(dict(self.headers))
                    entry = server.script[min(len(server.requests) - 1, len(server.script) - 1)]
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if entry == HANG:
                        server.release.wait(10)
                        return
                    time.sleep(server.delay)
                    if isinstance(entry, dict):
                        self._send(200, json.dumps(entry).encode(), {})
                    elif isinstance(entry, bytes):
                        self._send(200, entry, {})
                    else:
                        status, payload, headers = entry
                        self._send(status, payload if isinstance(payload, bytes) else json.dumps(payload).encode(), headers)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status, payload, headers):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout tests)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def data_url_image(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def images_in(message: dict) -> list[str]:
    content = message["content"]
    if not isinstance(content, list):
        return []
    return [p["image_url"]["url"] for p in content if p["type"] == "image_url"]


def texts_in(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str) or content is None:
        return content or ""
    return "".join(p["text"] for p in content if p["type"] == "text")


@pytest.fixture()
def inspect_with(hazelnut_product, data_root):
    def run(policy, max_steps: int = 4):
        inspector = Inspector(hazelnut_product, policy, default_tools(anomaly_map=True), max_steps=max_steps)
        return inspector.inspect(data_root / CRACK)

    return run


# ----------------------------------------------------------------------------- the scripted run
def test_scripted_conversation_text_protocol(inspect_with, hazelnut_product, monkeypatch, tmp_path):
    monkeypatch.setenv("IAD_TEST_KEY", "secret")
    with ScriptedServer([chat_reply(ZOOM_TURN), chat_reply(COMPARE_TURN), chat_reply(ANSWER_TURN)]) as server:
        policy = OpenAIPolicy("qwen2.5-vl-3b", server.url, api_key_env="IAD_TEST_KEY", max_image_side=128)
        result = inspect_with(policy)

    # what the server received
    assert len(server.requests) == 3
    assert all({k.lower(): v for k, v in h.items()}.get("authorization") == "Bearer secret" for h in server.headers)
    first, second, third = server.requests
    assert first["model"] == "qwen2.5-vl-3b" and first["temperature"] == 0.0 and first["max_tokens"] == 1024
    assert "tools" not in first  # text protocol: the schemas travel in the system prompt
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    system = texts_in(first["messages"][0])
    for tool in default_tools(anomaly_map=True).values():
        assert json.dumps(tool.spec(), ensure_ascii=False) in system
    assert "hazelnut" in system and "<answer>" in system
    query = images_in(first["messages"][1])
    assert len(query) == 1 and max(data_url_image(query[0]).size) == 128  # downsized to max_image_side
    assert "hazelnut" in texts_in(first["messages"][1])

    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][2]["content"] == ZOOM_TURN  # the model's own words, verbatim
    observation = second["messages"][3]
    assert texts_in(observation).startswith("<tool_response>\n[perceptive_zoomer]")
    assert len(images_in(observation)) == 1  # the zoomed crop
    assert second["messages"][:2] == first["messages"]  # history is replayed unchanged

    assert [m["role"] for m in third["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "[comparative_retriever]" in texts_in(third["messages"][5])
    assert len(images_in(third["messages"][5])) == 2  # good reference region + query region

    # what came out
    d = result.to_dict()
    assert d["anomaly_present"] is True and d["defect_type"] == "crack"
    assert d["box"] == [0.35, 0.35, 0.55, 0.55]
    assert d["stop_reason"] == "answer" and d["policy"] == "openai"
    look = result.episode.look
    assert d["score"] == pytest.approx(look.score, abs=1e-5) and d["threshold"] == pytest.approx(look.threshold, abs=1e-5)
    assert [c["name"] for c in d["tool_calls"]] == ["perceptive_zoomer", "comparative_retriever"]
    steps = d["trace"]["steps"]
    assert [s["raw_output"] for s in steps] == [ZOOM_TURN, COMPARE_TURN, ANSWER_TURN]
    assert steps[0]["thought"] == "A dark line near the centre."
    assert all(s["usage"]["prompt_tokens"] == 1000 and s["usage"]["retries"] == 0 for s in steps)
    assert all(s["policy_ms"] > 0 for s in steps)
    json.dumps(d)

    from iad_agent.report import save_report

    save_report(result, tmp_path / "r.html")
    assert "A dark line near the centre." in (tmp_path / "r.html").read_text()


def test_native_function_calling(inspect_with):
    call = {"id": "call_7", "type": "function",
            "function": {"name": "perceptive_zoomer", "arguments": json.dumps({"box": [0.3, 0.3, 0.6, 0.6]})}}
    script = [chat_reply("<think>zoom in</think>", [call], finish="tool_calls"), chat_reply(ANSWER_TURN)]
    with ScriptedServer(script) as server:
        tools = default_tools(anomaly_map=True)
        result = inspect_with(OpenAIPolicy("m", server.url, native_tools=True))
    first, second = server.requests
    assert first["tools"] == [t.spec() for t in tools.values()] and first["tool_choice"] == "auto"
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assistant, tool, images = second["messages"][2:]
    assert assistant["content"] == "<think>zoom in</think>"
    assert assistant["tool_calls"][0]["id"] == "call_7"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"box": [0.3, 0.3, 0.6, 0.6]}
    assert tool["tool_call_id"] == "call_7" and "[perceptive_zoomer]" in tool["content"]
    assert len(images_in(images)) == 1
    step = result.trajectory.steps[0]
    assert step.thought == "zoom in"
    assert "<tool_call>" in step.raw_output  # the trajectory stays in the text protocol
    assert result.trajectory.answer.anomaly_present is True


# ------------------------------------------------------------------------------- server trouble
def test_retries_429_and_500_then_succeeds(inspect_with):
    script = [(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}), (500, {"error": "boom"}, {}),
              (503, b"upstream down", {}), chat_reply(ANSWER_TURN)]
    with ScriptedServer(script) as server:
        result = inspect_with(OpenAIPolicy("m", server.url, max_retries=3))
    assert len(server.requests) == 4
    assert server.requests[0] == server.requests[3]  # the same request, resent
    assert result.trajectory.stop_reason == "answer"
    assert result.trajectory.steps[0].usage["retries"] == 3


def test_server_500_past_retries_ends_without_answer(inspect_with):
    with ScriptedServer([(500, {"error": "boom"}, {})]) as server:
        result = inspect_with(OpenAIPolicy("m", server.url, max_retries=2))
    assert len(server.requests) == 3
    d = result.to_dict()
    assert d["anomaly_present"] is None and d["stop_reason"] == "error"
    assert "500" in d["reason"]


def test_server_hangs_past_timeout(inspect_with):
    with ScriptedServer([HANG]) as server:
        start = time.perf_counter()
        result = inspect_with(OpenAIPolicy("m", server.url, timeout=0.5, max_retries=1))
        elapsed = time.perf_counter() - start
    assert len(server.requests) == 2
    assert result.trajectory.stop_reason == "error" and result.trajectory.answer.anomaly_present is None
    assert "no reply within 0.5 s" in result.trajectory.answer.reason
    assert elapsed < 5


def test_malformed_json_is_retried(inspect_with):
    with ScriptedServer([b"{not json", b'{"choices": []}', chat_reply(ANSWER_TURN)]) as server:
        result = inspect_with(OpenAIPolicy("m", server.url, max_retries=2))
    assert len(server.requests) == 3
    assert result.trajectory.answer.anomaly_present is True


def test_always_malformed_ends_without_answer(inspect_with):
    with ScriptedServer([b"<html>bad gateway</html>"]) as server:
        result = inspect_with(OpenAIPolicy("m", server.url, max_retries=1))
    assert len(server.requests) == 2
    assert result.trajectory.stop_reason == "error"
    assert "malformed response" in result.trajectory.answer.reason


def test_client_error_is_not_retried(inspect_with):
    with ScriptedServer([(400, {"error": {"message": "context length exceeded"}}, {})]) as server:
        result = inspect_with(OpenAIPolicy("m", server.url))
    assert len(server.requests) == 1
    assert "context length exceeded" in result.trajectory.answer.reason


def test_garbage_replies_use_up_the_budget(inspect_with):
    with ScriptedServer([chat_reply("I am not sure what you mean."), chat_reply(None, finish="length")]) as server:
        result = inspect_with(OpenAIPolicy("m", server.url), max_steps=3)
    traj = result.trajectory
    assert traj.stop_reason == "budget" and traj.answer.anomaly_present is None
    assert len(traj.steps) == 3 and all(s.parse_errors for s in traj.steps)
    assert "cut off at the token limit" in traj.steps[1].parse_errors[0]
    # the model is told what was wrong, in order
    last = server.requests[2]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert texts_in(last[3]).startswith("<tool_response>\nError: the reply has neither")
    assert last[2]["content"] == "I am not sure what you mean."


def test_bad_tool_call_becomes_an_observation(inspect_with):
    bad = ('<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [5, 5]}}</tool_call>'
           '<tool_call>{"name": "magnifier", "arguments": {}}</tool_call>')
    with ScriptedServer([chat_reply(bad), chat_reply(ANSWER_TURN)]) as server:
        result = inspect_with(OpenAIPolicy("m", server.url))
    step = result.trajectory.steps[0]
    assert "four numbers" in step.parse_errors[0]
    assert [c.name for c in step.tool_calls] == ["magnifier"] and not step.observations[0].ok
    text = texts_in(server.requests[1]["messages"][3])
    assert "four numbers" in text and "unknown tool 'magnifier'" in text
    assert result.trajectory.answer.anomaly_present is True


# ---------------------------------------------------------------------------- concurrency, CLI
def test_concurrency_limit(hazelnut_product, data_root):
    with ScriptedServer([chat_reply(ZOOM_TURN)], delay=0.4) as server:
        policy = OpenAIPolicy("m", server.url, concurrency=2)
        inspector = Inspector(hazelnut_product, policy, default_tools(), max_steps=1)
        episodes = [inspector.episode(data_root / CRACK)[0] for _ in range(5)]
        steps = [None] * 5

        def act(i):
            steps[i] = policy.act(episodes[i], inspector.tools)

        threads = [threading.Thread(target=act, args=(i,)) for i in range(5)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
    assert len(server.requests) == 5 and 1 <= server.max_in_flight <= 2
    assert elapsed >= 3 * 0.4  # five requests through two slots take at least three rounds
    assert all(s.tool_calls[0].name == "perceptive_zoomer" for s in steps)


def test_make_policy_options():
    with ScriptedServer([chat_reply(ANSWER_TURN)]) as server:
        policy = make_policy("openai", base_url=server.url, model=None, api_key_env=None, timeout=5.0, max_retries=1,
                             max_image_side=256, concurrency=3, temperature=0.2, max_new_tokens=64, native_tools=False,
                             adapter=None, dtype="auto", device="cpu")
        assert policy.model == "only-model"  # the one model the server lists
        assert policy.concurrency == 3 and policy.max_image_side == 256 and policy.timeout == 5.0
        assert make_policy("embedded", base_url=None).name == "embedded"
    with pytest.raises(ValueError, match="base-url"):
        make_policy("openai", model="m", base_url=None)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("gpt")


def test_cli_inspect_with_openai_policy(hazelnut_product, data_root, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from iad_agent.cli import app
    from iad_agent.product import Workspace

    hazelnut_product.save(Workspace(tmp_path / "ws").product_dir("hazelnut"))
    monkeypatch.chdir(tmp_path)
    with ScriptedServer([chat_reply(ZOOM_TURN), chat_reply(ANSWER_TURN)]) as server:
        out = CliRunner().invoke(app, ["inspect", str(data_root / CRACK), "--product", "hazelnut", "--workspace",
                                       str(tmp_path / "ws"), "--policy", "openai", "--base-url", server.url,
                                       "--model", "qwen2.5-vl-3b", "--report", str(tmp_path / "r.html"), "--json"])
    assert out.exit_code == 0, out.output
    d = json.loads(out.stdout.strip().splitlines()[-1])
    assert d["anomaly_present"] is True and d["defect_type"] == "crack" and d["policy"] == "openai"
    assert d["trace"]["steps"][0]["raw_output"] == ZOOM_TURN
    assert Path(d["heatmap"] or tmp_path / "r_heatmap.png").exists() or (tmp_path / "r_heatmap.png").exists()
    assert (tmp_path / "r.html").exists()
    # the VLM policies get the normal-bank evidence tool too
    assert "anomaly_map" in texts_in(server.requests[0]["messages"][0])
