"""Tests for the MMAD protocol: question generation, the answer mapping and MMAD's scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from iad_agent.cli import app
from iad_agent.eval import mmad
from iad_agent.types import ANOMALOUS, NORMAL, Box, FinalAnswer, Sample

runner = CliRunner()


# ----------------------------------------------------------------------------- 3x3 locations


@pytest.mark.parametrize(
    ("x", "y", "cell"),
    [
        (0.0, 0.0, "top left"), (0.5, 0.1, "top"), (0.9, 0.2, "top right"),
        (0.2, 0.5, "left"), (0.5, 0.5, "center"), (0.8, 0.4, "right"),
        (0.1, 0.9, "bottom left"), (0.5, 0.99, "bottom"), (1.0, 1.0, "bottom right"),
        (0.3333, 0.6666, "left"), (1 / 3, 2 / 3, "bottom"),  # a boundary belongs to the next cell
    ],
)
def test_grid_cell(x, y, cell):
    assert mmad.grid_cell(x, y) == cell


def test_defect_location_is_the_largest_region():
    mask = np.zeros((90, 90), bool)
    mask[2:6, 2:6] = True  # small, top left
    mask[70:88, 62:85] = True  # large, bottom right
    assert mmad.defect_location(mask) == "bottom right"
    mask[:] = False
    mask[40:50, 0:20] = True
    assert mmad.defect_location(mask) == "left"
    assert mmad.defect_location(np.zeros((5, 5), bool)) is None


# ----------------------------------------------------------------------------- generation


def _sample(label: int, defect: str | None = None) -> Sample:
    return Sample(image_path=Path(f"/x/{defect or 'good'}/000.png"), category="hazelnut", label=label, defect_type=defect)


def test_normal_sample_gets_only_the_anomaly_detection_question():
    (q,) = mmad.make_conversation(_sample(NORMAL), ["crack", "cut"], None)
    assert q["type"] == mmad.ANOMALY_DETECTION and q["Question"] == mmad.AD_QUESTION
    assert q["Options"] == {"A": "Yes.", "B": "No."} and q["Answer"] == "B"


def test_anomalous_sample_questions_contain_their_answer():
    mask = np.zeros((60, 60), bool)
    mask[45:55, 5:15] = True  # bottom left
    types = ["crack", "cut", "hole", "print", "broken_large"]
    conv = mmad.make_conversation(_sample(ANOMALOUS, "broken_large"), types, mask, seed=3)
    assert [q["type"] for q in conv] == [mmad.ANOMALY_DETECTION, mmad.DEFECT_CLASSIFICATION, mmad.DEFECT_LOCALIZATION]
    assert conv[0]["Answer"] == "A"
    for q in conv[1:]:
        assert 2 <= len(q["Options"]) <= 4 and q["Answer"] in q["Options"]
        assert list(q["Options"]) == list("ABCD"[: len(q["Options"])])
        assert len(set(q["Options"].values())) == len(q["Options"])
        assert set(q) >= {"Question", "Options", "Answer", "type"}
    assert conv[1]["Options"][conv[1]["Answer"]] == "Broken large."
    assert conv[2]["Options"][conv[2]["Answer"]] == "Bottom left."
    assert conv == mmad.make_conversation(_sample(ANOMALOUS, "broken_large"), types, mask, seed=3)  # deterministic


def test_single_type_category_has_no_classification_question():
    conv = mmad.make_conversation(_sample(ANOMALOUS, "logical_anomalies"), ["logical_anomalies"], None)
    assert [q["type"] for q in conv] == [mmad.ANOMALY_DETECTION]


def test_generate_questions_on_real_data(data_root, tmp_path):
    from iad_agent.datasets import load_dataset
    from iad_agent.eval.plan import split_dataset

    samples = load_dataset("mvtec", data_root / "mvtec_ad", "hazelnut")
    split = split_dataset(samples)
    pool = split.pool[:6]
    test = [s for s in split.test if s.defect_type in (None, "crack")]
    questions = mmad.generate_questions([(pool, test)], data_root, seed=0)
    assert set(questions) == {s.image_path.relative_to(data_root).as_posix() for s in test}
    for key, item in questions.items():
        assert item["image_path"] == key and (data_root / key).exists()
        assert len(item["similar_templates"]) == 5 and len(item["random_templates"]) == 5
        assert {data_root / t for t in item["similar_templates"]} <= set(pool)
        types = {q["type"] for q in item["conversation"]}
        if "/good/" in key:
            assert types == {mmad.ANOMALY_DETECTION} and item["mask_path"] is None
        else:
            assert types == {mmad.ANOMALY_DETECTION, mmad.DEFECT_CLASSIFICATION, mmad.DEFECT_LOCALIZATION}
            dc = next(q for q in item["conversation"] if q["type"] == mmad.DEFECT_CLASSIFICATION)
            assert dc["Options"][dc["Answer"]] == "Crack."
            assert set(mmad.normalize(v) for v in dc["Options"].values()) <= {"crack", "cut", "hole", "print"}
    # the most similar template comes first: it is the pool image nearest in feature space
    key = next(iter(questions))
    desc = mmad.descriptors([data_root / key, *pool])
    best = pool[int(np.argmax(desc[1:] @ desc[0]))]
    assert questions[key]["similar_templates"][0] == best.relative_to(data_root).as_posix()
    path = tmp_path / "q.json"
    path.write_text(json.dumps(questions))
    assert mmad.load_questions(path) == questions


def test_load_questions_refuses_other_schemas(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"a.png": {"conversation": [{"Question": "?"}]}}))
    with pytest.raises(ValueError, match="conversation"):
        mmad.load_questions(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="keyed by image path"):
        mmad.load_questions(path)


# ----------------------------------------------------------------------------- answer mapping


AD = {"type": mmad.ANOMALY_DETECTION, "Options": {"A": "Yes.", "B": "No."}}
DC = {"type": mmad.DEFECT_CLASSIFICATION, "Options": {"A": "Cut.", "B": "Broken large.", "C": "Hole."}}
DL = {"type": mmad.DEFECT_LOCALIZATION, "Options": {"A": "Top right.", "B": "Bottom left.", "C": "Center."}}


def test_choose_option_maps_structured_answers():
    anomalous = FinalAnswer(True, box=Box(0.7, 0.05, 0.95, 0.3), defect_type="broken_large")
    assert mmad.choose_option(anomalous, AD) == "A"
    assert mmad.choose_option(FinalAnswer(False), AD) == "B"
    assert mmad.choose_option(FinalAnswer(None), AD) is None
    assert mmad.choose_option(None, AD) is None
    assert mmad.choose_option(anomalous, DC) == "B"
    assert mmad.choose_option(FinalAnswer(True), DC) is None  # no type never matches
    assert mmad.choose_option(FinalAnswer(True, defect_type="scratch"), DC) is None
    assert mmad.choose_option(anomalous, DL) == "A"  # box centre (0.825, 0.175)
    assert mmad.choose_option(FinalAnswer(True, box=Box(0.0, 0.7, 0.2, 0.9)), DL) == "B"
    assert mmad.choose_option(FinalAnswer(True, box=Box(0.0, 0.0, 0.2, 0.5)), DL) is None  # "left" is no option
    assert mmad.choose_option(anomalous, {"type": "Object Classification", "Options": {"A": "Nut."}}) is None


# ----------------------------------------------------------------------------- scoring


def _e(image, qtype, correct, given, normal=None):
    e = {"image": image, "question": "?", "question_type": qtype, "correct_answer": correct, "gpt_answer": given}
    if normal is not None:
        e["normal"] = normal
    return e


def test_score_mmad_balanced_detection_mean_over_types_then_datasets():
    entries = [
        # dataset "mv": 3 normal (2 right), 1 anomalous (right) -> AD = (2/3 + 1) / 2
        _e("mv/good/0.png", "Anomaly Detection", "B", "B"),
        _e("mv/good/1.png", "Anomaly Detection", "B", "B"),
        _e("mv/good/2.png", "Anomaly Detection", "B", "A"),
        _e("mv/crack/0.png", "Anomaly Detection", "A", "A"),
        _e("mv/crack/0.png", "Defect Classification", "C", "C"),
        _e("mv/crack/0.png", "Defect Localization", "B", None),  # no answer: wrong
        _e("mv/crack/0.png", "Object Structure", "A", "A"),
        _e("mv/crack/0.png", "Object Details", "B", "A"),  # merged with Object Structure: 1/2
        # dataset "mt": normal read from the `normal` field (no 'good' in the path)
        _e("mt/MT_Free/0.jpg", "Anomaly Detection", "B", "A", normal=True),
        _e("mt/MT_Crack/0.jpg", "Anomaly Detection", "A", "A", normal=False),
        _e("mt/MT_Crack/1.jpg", "Anomaly Detection", "A", "B", normal=False),
        _e("mt/MT_Crack/0.jpg", "Defect Classification", "A", "A"),
    ]
    score = mmad.score_mmad(entries)
    mv, mt = score["datasets"]["mv"], score["datasets"]["mt"]
    assert mv["types"] == pytest.approx({"Anomaly Detection": 5 / 6, "Defect Classification": 1.0,
                                         "Defect Localization": 0.0, "Object Analysis": 0.5})
    assert mv["average"] == pytest.approx((5 / 6 + 1 + 0 + 0.5) / 4)
    assert (mv["overkill"], mv["miss"]) == (pytest.approx(1 / 3), 0.0)
    assert mv["n_questions"] == 8 and mv["invalid"] == 1
    assert mt["types"] == pytest.approx({"Anomaly Detection": (0 + 0.5) / 2, "Defect Classification": 1.0})
    assert (mt["overkill"], mt["miss"]) == (1.0, 0.5)
    avg = score["average"]
    assert avg["average"] == pytest.approx((mv["average"] + mt["average"]) / 2)  # types first, then datasets
    assert avg["types"]["Anomaly Detection"] == pytest.approx((5 / 6 + 0.25) / 2)
    assert avg["types"]["Object Analysis"] == 0.5  # only mv has it
    assert avg["overkill"] == pytest.approx((1 / 3 + 1) / 2) and avg["miss"] == pytest.approx(0.25)
    assert avg["n_questions"] == 12


def test_score_mmad_one_class_detection_is_that_class_accuracy():
    score = mmad.score_mmad([_e("pcb/a.jpg", "Anomaly Detection", "A", "A"), _e("pcb/b.jpg", "Anomaly Detection", "A", "B")])
    d = score["datasets"]["pcb"]
    assert d["types"]["Anomaly Detection"] == 0.5 and d["overkill"] is None and d["miss"] == 0.5


# ----------------------------------------------------------------------------- end to end


def _small_hazelnut_tree(data_root: Path, root: Path) -> None:
    """A data root holding ``mvtec_ad/hazelnut`` with ONE good training image and four test images.

    Answering registers one product per distinct first template; with one training image every
    question shares it, so each ``iad eval`` run registers once (the full folder's 50-image pool
    registered one product per test image: 6 registrations, ~25 s). Template ranking over a real
    pool is checked in ``test_generate_questions_on_real_data``.
    """
    import shutil

    src, dst = data_root / "mvtec_ad/hazelnut", root / "mvtec_ad/hazelnut"
    files = ["train/good/000.png", "test/good/000.png", "test/crack/000.png", "test/hole/000.png", "test/print/001.png",
             "ground_truth/crack/000_mask.png", "ground_truth/hole/000_mask.png", "ground_truth/print/001_mask.png"]
    for f in files:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / f, dst / f)


@pytest.mark.slow
def test_iad_eval_mmad_style_then_reuse_the_file(data_root, tmp_path, monkeypatch):
    """Generate MMAD-style questions (``--max-test 3`` of 4: one good, two defects, so all three question
    types), answer and score them, then answer the written file again: the same scores."""
    small = tmp_path / "data"
    _small_hazelnut_tree(data_root, small)
    monkeypatch.setenv("IAD_DATA", str(small))  # image keys stay relative to the data root, as with the shared data
    data_root = small
    out = tmp_path / "gen"
    args = ["--dataset", "mvtec", "--category", "hazelnut", "--max-test", "3", "--policy", "knn"]
    first = runner.invoke(app, ["eval", "--questions", "mmad-style", *args, "--out", str(out)])
    assert first.exit_code == 0, first.output
    questions = json.loads((out / "mmad_style_questions.json").read_text())
    assert len(questions) == 3 and all(k.startswith("mvtec_ad/hazelnut/test/") for k in questions)
    assert {q["type"] for item in questions.values() for q in item["conversation"]} == {
        mmad.ANOMALY_DETECTION, mmad.DEFECT_CLASSIFICATION, mmad.DEFECT_LOCALIZATION}
    scores = json.loads((out / "mmad_scores.json").read_text())
    answers = json.loads((out / "mmad_answers_knn.json").read_text())
    assert len(answers) == sum(len(q["conversation"]) for q in questions.values())
    assert scores["knn"] == mmad.score_mmad(answers)
    assert set(scores["knn"]["datasets"]) == {"mvtec_ad"}
    assert "MMAD-protocol questions" in (out / "report.md").read_text()

    # the written file is an MMAD question file: answering it again gives the same scores (one code path)
    again = tmp_path / "again"
    second = runner.invoke(app, ["eval", "--mmad", str(out / "mmad_style_questions.json"), "--mmad-root", str(data_root),
                                 "--policy", "knn", "--out", str(again)])
    assert second.exit_code == 0, second.output
    assert json.loads((again / "mmad_scores.json").read_text()) == scores
