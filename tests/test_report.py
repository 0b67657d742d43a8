"""The HTML report: one self-contained page from the Jinja2 template, model text escaped."""

from __future__ import annotations

from iad_agent.inspector import Inspector
from iad_agent.policies import ScriptedPolicy
from iad_agent.report import render_html, save_report
from iad_agent.tools import default_tools
from iad_agent.types import FinalAnswer, Step, ToolCall


def test_report_shows_every_step_and_escapes_model_text(hazelnut_product, data_root, tmp_path):
    script = [Step(thought="<script>alert('x')</script> zooming", tool_calls=[ToolCall("perceptive_zoomer", {"box": [0.3, 0.3, 0.6, 0.6]})],
                   raw_output="<think>raw & <b>bold</b></think>"),
              Step(thought="done", answer=FinalAnswer(True, reason="a <crack>"))]
    result = Inspector(hazelnut_product, ScriptedPolicy(script), default_tools()).inspect(data_root / "mvtec_ad/hazelnut/test/crack/000.png")
    page = render_html(result)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "<script>" not in page and "&lt;script&gt;alert(" in page  # what a model writes is text, never markup
    assert "raw &amp; &lt;b&gt;bold&lt;/b&gt;" in page and "a &lt;crack&gt;" in page
    assert page.count('<img src="data:image/png;base64,') == 3  # query, heat-map overlay, zoomed crop
    assert "<h3>Step 2</h3>" in page and "perceptive_zoomer" in page and "zoomed crop" in page
    save_report(result, tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text(encoding="utf-8") == page
