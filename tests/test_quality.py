"""quality stage: scorers on hand-made records, accounting, rejects, determinism,
params and bad-input messages, and accuracy against the built-in generator's
ground truth on a small generated sample."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import stage
from synthtrain.sources.download import download
from synthtrain.params import ParamsError, StageError, parse_params
from synthtrain.quality.decide import decide, decide_stage, quality_stage
from synthtrain.quality.enrich import file_records, train_scorer
from synthtrain.quality.units import split_units
from synthtrain.quality.heuristics import answer_errors, reply_statistics
from synthtrain.records import SCHEMA, SCORED_SCHEMA, make_record

N = 20_000
# Smaller training samples than the defaults, so the file runs in seconds.
QUALITY = {"classifier": {"train_records": 3000}, "reference_lm": {"train_records": 8000, "calibration_records": 500}}


def quality_params(n=N, workers=2, **quality):
    return parse_params({"sources": {"builtin": {"kind": "builtin", "max_samples": n}}, "download": {"workers": 2},
                         "quality": {**QUALITY, "workers": workers, **quality}})


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    download(quality_params(), "builtin", root)
    input_path = root / "data/raw/builtin.parquet"
    metrics = quality_stage(quality_params(), input_path, root)
    return root, input_path, metrics


@pytest.fixture(scope="module")
def scorer(scored):
    _, input_path, _ = scored
    return train_scorer(pq.ParquetFile(input_path), quality_params().quality)[0]


def chat(question, answer):
    return make_record("test", "instruction", messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def document(text, category="web"):
    return make_record("test", category, text=text)


def judge(scorer, records):
    table = pa.Table.from_pylist(records, schema=SCHEMA)
    scores = scorer.score(table)
    _, quality, reason = decide(scorer.params, scorer.calibration, table.column("category").to_numpy(zero_copy_only=False), scores)
    return scores, quality, reason


def test_a_clean_answer_beats_refusal_repetition_mojibake_gibberish_and_boilerplate(scorer, scored):
    _, input_path, _ = scored
    rows = pq.read_table(input_path).to_pylist()
    clean_chat = next(r for r in rows if r["category"] == "instruction" and json.loads(r["meta"]) == {"family": "fact_qa", "flaw": None,
                                                                                                        "generator": "builtin", "level": 1})
    question, answer = clean_chat["messages"][-2]["content"], clean_chat["messages"][-1]["content"]
    rng = random.Random(0)
    bad = [
        chat(question, "I'm afraid I can't help with that. As an AI developed to be safe, I must emphasize that it is not appropriate."),
        chat(question, "\n".join([answer] * 12)),
        chat(question, answer.replace(" ", " â€“ ", 1) + " Itâ€™s true."),
        document("".join(rng.choice("abcdefghijklmnopqrstuvwxyz   .,") for _ in range(300)), "knowledge"),
        document("Home | News | Forum | Shop | About | Contact\nWe use cookies. [Accept] [Settings]\n"
                 "best maps | cheap maps | maps online | buy maps\n© 2020 Some Shop. All rights reserved.\nPrivacy Policy | Terms of Use | Sitemap"),
    ]
    _, quality, reason = judge(scorer, [chat(question, answer)] + bad)
    assert reason[0] is None, (quality[0], reason[0])
    assert all(quality[0] > q for q in quality[1:]), quality
    assert list(reason[1:]) == ["refusal", "dup_lines", "mojibake", "stopwords", "boilerplate"], reason


def test_refusal_detector_catches_hand_written_refusals_and_not_normal_answers():
    refusals = [
        "I'm sorry, but I cannot provide instructions for that.",
        "As an AI language model, I do not have personal opinions.",
        "I apologize, but I'm unable to help with this request.",
        "I won't write that. It is not appropriate to make fun of people, and I must emphasize respect for everyone.",
        "Unfortunately I am not able to answer questions about that topic as it goes against my guidelines.",
        "I can't assist with creating harmful content.",
    ]
    normal = [
        "The capital of France is Paris.",
        "You cannot divide by zero, so the expression is undefined.",
        "I can't wait to try it: mix the flour and water, then knead for ten minutes.",
        "Sorry for the wait! Here is the code:\nprint('hello')",
        "It is important to water the plant twice a week.",
        "Final answer: 42",
    ]
    records = [chat("Tell me something.", reply) for reply in refusals + normal]
    refusal = reply_statistics(split_units(pa.Table.from_pylist(records, schema=SCHEMA)))["refusal"]
    assert (refusal[: len(refusals)] > 0.5).all(), refusal
    assert (refusal[len(refusals):] == 0).all(), refusal


def test_ifd_is_lower_for_on_topic_than_off_topic_answers(scorer, scored):
    _, input_path, _ = scored
    rows = [r for r in pq.read_table(input_path).to_pylist()
            if r["category"] == "instruction" and json.loads(r["meta"])["flaw"] is None and len(r["messages"]) == 2
            and json.loads(r["meta"])["family"] in ("fact_qa", "word_problem", "string")][:300]
    on_topic = [chat(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows]
    off_topic = [chat(r["messages"][0]["content"], rows[(i + 1) % len(rows)]["messages"][1]["content"]) for i, r in enumerate(rows)]
    scores, _, _ = judge(scorer, on_topic + off_topic)
    on, off = scores["ifd"][: len(rows)], scores["ifd"][len(rows):]
    assert np.median(on) < 1 <= np.median(off), (np.median(on), np.median(off))
    assert (on < off).mean() > 0.8


def test_answer_check_finds_wrong_sums_and_unsupported_final_answers():
    assert answer_errors("What is 23 + 68?", "Add the ones: 3 + 8 = 11. Write 1, carry 1.\nAdd the tens: 2 + 6 + 1 carried = 9.\nFinal answer: 91") == 0
    assert answer_errors("What is 23 + 68?", "Add the ones: 3 + 8 = 11. Write 1, carry 1.\nAdd the tens: 2 + 6 + 1 carried = 9.\nFinal answer: 92") == 1
    assert answer_errors("Compute 12 × 4.", "12 × 4 = 46.\nFinal answer: 46") == 1  # the equation; 46 follows from it
    assert answer_errors("Sort: pear, apple.", "Compare the words: apple, pear.\nFinal answer: apple, pear") == 0
    assert answer_errors("Sort: pear, apple.", "Compare the words: apple, pear.\nFinal answer: raep ,elppa") == 1
    assert answer_errors("Who wrote it?", "Nobody knows.") == 0


def test_read_equals_kept_plus_rejected_and_rejects_file_holds_the_rejected_rows(scored):
    root, input_path, metrics = scored
    assert metrics["read"] == N == metrics["kept"] + metrics["rejected"] and metrics["rejected"] > 0
    assert sum(metrics["rejected_by_reason"].values()) == metrics["rejected"]
    table = pq.read_table(root / "data/quality/scored.parquet")
    assert table.schema == SCORED_SCHEMA and table.num_rows == N
    assert table.select(SCHEMA.names).cast(SCHEMA).equals(pq.read_table(input_path))
    rejects = pq.read_table(root / "data/rejects/quality.parquet")
    assert rejects.num_rows == metrics["rejected"] and rejects.column("reject_reason").null_count == 0
    reasons = rejects.column("reject_reason").to_pylist()
    assert {r: reasons.count(r) for r in set(reasons)} == metrics["rejected_by_reason"]
    assert table.column("reject_reason").null_count == metrics["kept"]
    assert json.loads((root / "metrics/quality.json").read_text())["read_equals_kept_plus_rejected"] is True
    histogram = (root / "plots/quality/histogram.csv").read_text().splitlines()
    assert histogram[0] == "group,quality,records" and sum(int(line.rsplit(",", 1)[1]) for line in histogram[1:]) == 2 * N


def test_auc_and_recall_on_generated_records(scored):
    _, _, metrics = scored
    accuracy = metrics["builtin_accuracy"]
    assert accuracy["auc"] >= 0.9, accuracy
    assert accuracy["recall_at_threshold"]["refusal"] >= 0.95, accuracy
    assert accuracy["clean_rejected_share"] < 0.1, accuracy
    assert metrics["classifier"]["heldout_accuracy"] > 0.9
    assert set(metrics["by_category"]) == {"instruction", "knowledge", "web"}


def test_same_input_and_params_give_byte_identical_outputs_whatever_the_process_count(scored, tmp_path):
    root, input_path, _ = scored
    quality_stage(quality_params(workers=1), input_path, tmp_path)
    for output in ("data/quality/scored.parquet", "data/rejects/quality.parquet", "data/quality/classifier.npz", "data/quality/reference_lm.npz"):
        assert (tmp_path / output).read_bytes() == (root / output).read_bytes(), output


@pytest.mark.parametrize("quality, message", [
    ({"threshhold": 0.5}, "quality: unknown key 'threshhold'; did you mean 'threshold'?"),
    ({"threshold": 1.5}, "quality.threshold = 1.5: Input should be less than or equal to 1"),
    ({"weights": {"classifier": "high"}}, "quality.weights.classifier = 'high': Input should be a valid number"),
    ({"weights": {"classifier": 0, "reference_lm": 0, "ifd": 0}}, "quality.weights: at least one weight must be positive"),
    ({"classifier": {"positives": {}}}, "quality.classifier.positives: name at least one category or source"),
    ({"classifier": {"positives": {"categories": ["chat"]}}}, "quality.classifier.positives.categories.0 = 'chat'"),
    ({"limits": {"min_words": 10, "max_words": 5}}, "min_words (10) must be at most max_words (5)"),
    ({"rules": {"refusals": False}}, "quality.rules: unknown key 'refusals'; did you mean 'refusal'?"),
])
def test_bad_params_fail_naming_the_key(quality, message):
    with pytest.raises(ParamsError, match=None) as error:
        parse_params({"sources": {"b": {"kind": "builtin"}}, "quality": quality})
    assert message in str(error.value), str(error.value)


def test_empty_input_fails_with_a_clear_message(tmp_path):
    (tmp_path / "data/dedup").mkdir(parents=True)
    pq.write_table(SCHEMA.empty_table(), tmp_path / "data/dedup/train.parquet")
    (tmp_path / "params.yaml").write_text(json.dumps({"sources": {"builtin": {"kind": "builtin"}}}))
    result = stage(tmp_path, "stages.quality_score", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: data/dedup/train.parquet: no records to score (the input is empty)" in result.stderr
    result = stage(tmp_path, "stages.quality", check=False)
    assert "error: data/quality/scores.parquet: no such file (run the dedup and quality_score stages first)" in result.stderr


def test_retuning_the_threshold_decides_again_without_rescoring(scored, tmp_path):
    root, input_path, metrics = scored
    scores = (root / "data/quality/scores.parquet").read_bytes()
    stricter = decide_stage(quality_params(threshold=0.7), input_path, root)
    assert (root / "data/quality/scores.parquet").read_bytes() == scores
    assert stricter["kept"] < metrics["kept"] and stricter["rejected_by_reason"]["below_threshold"] > metrics["rejected_by_reason"]["below_threshold"]
    decide_stage(quality_params(), input_path, root)  # back to the module's outputs


@pytest.fixture(scope="module")
def small_input(scored):
    _, input_path, _ = scored
    return input_path


def test_a_threshold_that_drops_everything_fails_naming_the_param(small_input, tmp_path):
    with pytest.raises(StageError, match=r"quality.threshold = 1.0 rejects all 20000 records"):
        quality_stage(quality_params(threshold=1.0), small_input, tmp_path)


def test_a_selection_with_no_records_fails_naming_the_param(small_input, tmp_path):
    with pytest.raises(StageError, match=r"quality.classifier.positives: no input record is of source gpteacher"):
        quality_stage(quality_params(classifier={"positives": {"sources": ["gpteacher"]}}), small_input, tmp_path)


def test_missing_files_are_reported_or_fail_when_required(scorer, tmp_path):
    params = quality_params(files={"gone": {"path": str(tmp_path / "gone.jsonl"), "category": "web"}}).quality
    assert file_records(params)[1] == {"gone": {"path": str(tmp_path / "gone.jsonl"), "missing": True}}
    params = quality_params(files={"gone": {"path": str(tmp_path / "gone.jsonl"), "category": "web", "required": True}}).quality
    with pytest.raises(StageError, match="quality.files.gone.path"):
        file_records(params)
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps({"instruction": f"What is {i} + 1?", "output": f"{i} + 1 = {i + 1}."})
                                                   for i in range(20)))
    params = quality_params(files={"mine": {"path": str(tmp_path / "mine.jsonl"), "category": "instruction"}}).quality
    records, report = file_records(params)
    assert report["mine"] == {"path": str(tmp_path / "mine.jsonl"), "category": "instruction", "records": 20, "invalid": 0}
    _, quality, _ = judge(scorer, records.to_pylist())
    assert len(quality) == 20 and ((0 <= quality) & (quality <= 1)).all()
