"""Every tool: schema, argument validation (errors are observations), and real outputs."""

import pytest

from iad_agent.tools import default_tools, execute
from iad_agent.types import ToolCall


@pytest.fixture(scope="module")
def episode(hazelnut_inspector, data_root):
    ep, _ = hazelnut_inspector.episode(data_root / "mvtec_ad/hazelnut/test/hole/001.png")
    return ep


@pytest.fixture(scope="module")
def tools():
    return default_tools(anomaly_map=True)


def test_specs_are_function_schemas(tools):
    assert set(tools) == {"perceptive_zoomer", "comparative_retriever", "high_frequency_enhancer", "prior_retriever", "anomaly_map"}
    for tool in tools.values():
        spec = tool.spec()
        assert spec["type"] == "function" and spec["function"]["parameters"]["type"] == "object"
        assert spec["function"]["description"]


BAD_CALLS = [
    ("perceptive_zoomer", {}, "required"),
    ("perceptive_zoomer", {"box": [0, 0, 1]}, "too short|fewer"),
    ("perceptive_zoomer", {"box": ["a", 0, 1, 1]}, "not of type"),
    ("perceptive_zoomer", {"box": [1.5, 1.5, 2.0, 2.0]}, "outside the image"),
    ("perceptive_zoomer", {"box": [0, 0, 1, 1], "zoom": 3}, "Additional properties"),
    ("comparative_retriever", {"k": 0}, "minimum"),
    ("high_frequency_enhancer", {"box": "everywhere"}, "not of type"),
    ("prior_retriever", {"defect_type": "melted"}, "unknown defect_type 'melted'"),
    ("anomaly_map", {"box": [0, 0, 1, 1, 1]}, "too long|more"),
    ("teleport", {}, "unknown tool 'teleport'"),
]


@pytest.mark.parametrize("name,arguments,message", BAD_CALLS)
def test_bad_arguments_come_back_as_error_results(episode, tools, name, arguments, message):
    result = execute(ToolCall(name, arguments), tools, episode)
    assert not result.ok
    assert result.text.startswith("Error:")
    import re

    assert re.search(message, result.error), result.error


def test_non_object_arguments(episode, tools):
    assert not tools["perceptive_zoomer"]("box please", episode).ok


def test_zoom_clamps_upsamples_and_rescores(episode, tools):
    result = execute(ToolCall("perceptive_zoomer", {"box": [0.5, 0.5, 0.51, 0.51]}), tools, episode)  # tiny box
    assert result.ok, result.text
    x1, y1, x2, y2 = result.data["box"]
    assert x2 - x1 >= 0.08 and y2 - y1 >= 0.08  # minimum size enforced
    assert max(result.images[0].size) == 448  # upsampled
    assert result.data["score"] > 0 and result.data["evidence"] == pytest.approx(result.data["score"] / result.data["limit"])
    inverted = execute(ToolCall("perceptive_zoomer", {"box": [0.9, 0.9, 0.4, 0.4]}), tools, episode)
    assert inverted.ok and inverted.data["box"][0] < inverted.data["box"][2]


def test_zoom_on_the_defect_reads_higher_than_on_background(episode, tools, data_root):
    from iad_agent.types import Box

    from iad_agent.imageio import load_mask

    gt = Box.from_mask(load_mask(data_root / "mvtec_ad/hazelnut/ground_truth/hole/001_mask.png"))
    on = execute(ToolCall("perceptive_zoomer", {"box": gt.expanded(0.5).to_list()}), tools, episode)
    off = execute(ToolCall("perceptive_zoomer", {"box": [0.0, 0.0, 0.2, 0.2]}), tools, episode)
    assert on.data["evidence"] > off.data["evidence"]


def test_retriever_returns_reference_and_aligned_region(episode, tools):
    whole = execute(ToolCall("comparative_retriever", {}), tools, episode)
    assert whole.ok and len(whole.images) == 1 and -1 <= whole.data["similarity"][0] <= 1.0001
    region = execute(ToolCall("comparative_retriever", {"box": [0.2, 0.2, 0.6, 0.6], "k": 2}), tools, episode)
    assert region.ok and len(region.images) == 2 and region.data["region_distance"] > 0
    assert len(region.data["references"]) == 2


def test_high_frequency_enhancer(episode, tools):
    result = execute(ToolCall("high_frequency_enhancer", {"box": [0.3, 0.3, 0.7, 0.7]}), tools, episode)
    assert result.ok and result.images[0].mode == "RGB"
    assert result.data["energy"] > 0 and result.data["ratio"] >= 1.0


def test_prior_retriever_lists_matches_and_ranks(episode, tools):
    listing = execute(ToolCall("prior_retriever", {}), tools, episode)
    assert listing.ok and "crack" in listing.text and "Good hazelnut" in listing.text
    one = execute(ToolCall("prior_retriever", {"defect_type": "print"}), tools, episode)
    assert "print" in one.text.lower()
    ranked = execute(ToolCall("prior_retriever", {"query": "white printed markings on the shell"}), tools, episode)
    assert ranked.data["matches"][0][0] == "print"


def test_anomaly_map_tool(episode, tools):
    result = execute(ToolCall("anomaly_map", {}), tools, episode)
    assert result.ok and result.data["threshold"] == episode.look.threshold
    assert result.images[0].size == episode.query.size


def test_disable_tool():
    assert "perceptive_zoomer" not in default_tools(("perceptive_zoomer",))
    with pytest.raises(ValueError, match="unknown tool"):
        default_tools(("zoomer",))


def test_tool_cache_replays_identical_calls_with_their_original_cost(hazelnut_inspector, data_root):
    import time

    from iad_agent.tools.base import BOX_SCHEMA, Tool
    from iad_agent.tools.cache import ToolCache, cached_tools
    from iad_agent.types import ToolResult

    class Slow(Tool):
        name = "slow"
        description = "sleeps, then counts"
        parameters = {"type": "object", "properties": {"box": BOX_SCHEMA}, "additionalProperties": False}
        runs = 0

        def run(self, episode, box=None):
            Slow.runs += 1
            time.sleep(0.02)
            return ToolResult(text=f"run {Slow.runs}", data={"box": box})

    ep, _ = hazelnut_inspector.episode(data_root / "mvtec_ad/hazelnut/test/good/000.png")
    cache = ToolCache()
    a, b = cached_tools({"slow": Slow()}, cache), cached_tools({"slow": Slow()}, cache)
    assert a["slow"].spec()["function"]["name"] == "slow"  # still looks like the tool
    first = a["slow"]({"box": [0, 0, 0.5, 0.5]}, ep)
    assert Slow.runs == 1 and cache.replayed_ms == 0
    cache.new_run()
    again = b["slow"]({"box": [0, 0, 0.5, 0.5]}, ep)  # another policy, same call: not re-run
    assert again is first and Slow.runs == 1 and cache.replayed_ms >= 20
    b["slow"]({"box": [0, 0, 0.6, 0.5]}, ep)  # other arguments: run
    assert Slow.runs == 2
    refused = b["slow"]({"box": "nope"}, ep)  # schema violations are refused before the tool runs
    assert not refused.ok and "slow: invalid box: 'nope' is not of type 'array'" in refused.error and Slow.runs == 2
    cache.new_query()  # another image: nothing is replayed
    a["slow"]({"box": [0, 0, 0.5, 0.5]}, ep)
    assert Slow.runs == 3 and cache.replayed_ms == 0


def test_prior_ranking_reuses_embeddings(hazelnut_product):
    from iad_agent.tools.priors import embed_text, rank_by_text

    defects = {k: v for k, v in hazelnut_product.priors.items() if k not in ("good", "normal")}
    first = rank_by_text("a thin crack across the nut", defects)
    hits = embed_text.cache_info().hits
    assert rank_by_text("a thin crack across the nut", defects) == first
    assert embed_text.cache_info().hits >= hits + len(defects) + 1
    assert first[0][0] == "crack"


def test_any_exception_in_a_tool_is_an_error_observation_and_a_log_line(episode, caplog):
    from iad_agent.tools.base import Tool
    from iad_agent.types import ToolResult

    class Broken(Tool):
        name = "broken"
        description = "fails the way real code does"
        parameters = {"type": "object", "properties": {}, "additionalProperties": False}

        def run(self, episode) -> ToolResult:
            return {}["missing"]  # KeyError, not ValueError

    with caplog.at_level("ERROR", logger="iad_agent.tools.base"):
        result = execute(ToolCall("broken", {}), {"broken": Broken()}, episode)
    assert not result.ok and result.text.startswith("Error: broken failed (KeyError")
    assert any("tool broken failed" in r.message and r.exc_info for r in caplog.records)


def test_a_tool_whose_schema_does_not_match_run_is_refused_when_defined():
    from iad_agent.tools.base import BOX_SCHEMA, Tool

    with pytest.raises(TypeError, match=r"run\(\) takes \['box'\] but the schema's properties are \['box', 'k'\]"):
        class Extra(Tool):
            name, description = "extra", "schema lists an argument run() lacks"
            parameters = {"type": "object", "properties": {"box": BOX_SCHEMA, "k": {"type": "integer"}},
                          "additionalProperties": False}

            def run(self, episode, box=None): ...

    with pytest.raises(TypeError, match="without a default"):
        class Required(Tool):
            name, description = "required", "box is required in run() but optional in the schema"
            parameters = {"type": "object", "properties": {"box": BOX_SCHEMA}, "additionalProperties": False}

            def run(self, episode, box): ...

    with pytest.raises(TypeError, match="additionalProperties"):
        class Open(Tool):
            name, description = "open", "accepts anything"
            parameters = {"type": "object", "properties": {}}

            def run(self, episode): ...


def test_tool_readings_are_typed_and_the_trace_keeps_their_dict(episode, tools):
    from iad_agent.tools import ComparisonReading, HighFrequencyReading, PriorMatches, ZoomReading

    zoom = execute(ToolCall("perceptive_zoomer", {"box": [0.2, 0.2, 0.6, 0.6]}), tools, episode)
    assert isinstance(zoom.reading, ZoomReading) and zoom.data == zoom.reading.to_dict()
    assert zoom.reading.limit == episode.product.tool_limits.zoom_threshold and zoom.reading.evidence == zoom.data["evidence"]
    whole = execute(ToolCall("comparative_retriever", {}), tools, episode)
    assert isinstance(whole.reading, ComparisonReading) and whole.reading.evidence is None and "evidence" not in whole.data
    assert isinstance(execute(ToolCall("high_frequency_enhancer", {}), tools, episode).reading, HighFrequencyReading)
    assert isinstance(execute(ToolCall("prior_retriever", {}), tools, episode).reading, PriorMatches)


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf"), -1.0])
def test_no_tool_divides_by_a_zero_or_non_finite_limit(hazelnut_product, data_root, bad):
    from iad_agent.inspector import Inspector
    from iad_agent.product import Product
    from iad_agent.tools import ToolLimits

    broken = Product(hazelnut_product.name, hazelnut_product.bank, hazelnut_product.gate, priors=hazelnut_product.priors,
                     tool_limits=ToolLimits(zoom_threshold=bad, compare_threshold=bad, highfreq_threshold=bad))
    broken._extractor = hazelnut_product.extractor
    tools = default_tools()
    ep, _ = Inspector(broken, tools={}).episode(data_root / "mvtec_ad/hazelnut/test/crack/000.png")
    for name in ("perceptive_zoomer", "comparative_retriever", "high_frequency_enhancer"):
        result = execute(ToolCall(name, {"box": [0.3, 0.3, 0.7, 0.7]}), tools, ep)
        assert result.ok and result.reading.evidence is None, result.text
    assert "no calibrated normal limit" in execute(ToolCall("perceptive_zoomer", {"box": [0.3, 0.3, 0.7, 0.7]}), tools, ep).text
    # the embedded policy then decides on the global look alone
    answer = Inspector(broken).inspect(data_root / "mvtec_ad/hazelnut/test/crack/000.png").trajectory.answer
    assert answer.anomaly_present is not None and "tool reading" not in answer.reason


def test_limits_of_products_saved_before_limits_json_still_load(hazelnut_product, tmp_path):
    import json

    from iad_agent import store
    from iad_agent.product import Product

    hazelnut_product.save(tmp_path / "p")
    saved = Product.load(tmp_path / "p")
    assert saved.tool_limits == hazelnut_product.tool_limits
    assert saved.tool_readings["highfreq"] and len(saved.tool_readings["zoom"]) == len(saved.tool_readings["compare"])
    version = store.current(tmp_path / "p")
    gate = json.loads((version / "gate.json").read_text())
    assert not any(k.endswith("_threshold") for k in gate)  # the limits are not gate parameters any more
    gate.update(zoom_threshold=3.25, compare_threshold=2.5, highfreq_threshold=1.75)  # the old layout
    (version / "gate.json").write_text(json.dumps(gate))
    (version / "limits.json").unlink()
    old = Product.load(tmp_path / "p")
    limits = old.tool_limits
    assert (limits.zoom_threshold, limits.compare_threshold, limits.highfreq_threshold) == (3.25, 2.5, 1.75)
    assert not hasattr(old.gate, "zoom_threshold")


def test_importing_the_agent_loop_and_the_tools_loads_no_torch_or_faiss():
    import subprocess
    import sys

    code = ("import sys, iad_agent.agent.loop, iad_agent.tools, iad_agent.trajectories.styles\n"
            "print(sorted(m for m in ('torch', 'faiss', 'transformers', 'sentence_transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
