"""The LM scorer (quality.lm_scorer): the real SmolLM2-135M-Instruct reads real text
as better than damaged copies of it; batched scores are the scores of one record at
a time; the quality stages fill its columns for the records of real sources only,
within max_records, and its scores replace the trigram reference LM's in the decision."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SHARED_DATA, build_teacher
from synthtrain.params import parse_params
from synthtrain.quality.decide import quality_stage
from synthtrain.quality.lm_scorer import Item, LMScorer, items_of
from synthtrain.records import SCHEMA, make_record
from synthtrain.sources.download import download

TEACHER = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(build_teacher(tmp_path_factory.mktemp("tiny")))


def shuffled(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def test_the_real_lm_reads_text_as_better_than_its_damaged_copies(teacher_project, monkeypatch):
    monkeypatch.chdir(teacher_project)  # the teacher's name is its folder under models/teachers
    scorer = LMScorer(TEACHER, max_tokens=128, batch_tokens=2048)
    rng = random.Random(0)
    documents = [json.loads(line)["text"] for line in (SHARED_DATA / "human/c4-sample.jsonl").read_text().splitlines()[:6]]
    scores = scorer([Item(None, text) for text in documents] + [Item(None, shuffled(text, rng)) for text in documents])
    perplexity = scores["lm_perplexity"]
    assert (perplexity[:6] < perplexity[6:]).all(), perplexity  # shuffled words: every copy reads worse than its original
    assert np.isnan(scores["lm_ifd"]).all()  # documents have no instruction

    tasks = json.loads((SHARED_DATA / "synthetic/gpteacher-toolformer.json").read_text())[:6]
    def conversation(instruction, response):
        return items_of([{"role": "user", "content": instruction}, {"role": "assistant", "content": response}], None)
    matched = [conversation(t["instruction"], t["response"]) for t in tasks]
    swapped = [conversation(tasks[(i + 1) % 6]["instruction"], t["response"]) for i, t in enumerate(tasks)]
    cut = [conversation(t["instruction"], " ".join(t["response"].split()[: len(t["response"].split()) // 2])) for t in tasks]
    scores = scorer(matched + swapped + cut)
    ifd, end = scores["lm_ifd"], scores["lm_end_surprisal"]
    # the instruction helps predict its own answer, not another task's (Cherry LLM's IFD)
    assert ifd[:6].mean() < ifd[6:12].mean() and (ifd[:6] < 1).all(), ifd
    # a reply cut in half is an unlikely place for the turn to end
    assert np.nanmedian(end[:6]) + 5 < np.nanmedian(end[12:]), end
    assert scorer.speed()["tokens"] > 0


def test_batched_scores_are_the_scores_of_one_record_at_a_time(tiny_model):
    texts = [" ".join(line.split()[:n]) for line, n in zip((SHARED_DATA / "human/wiki-sample.txt").read_text().splitlines(), (5, 40, 12, 90, 3))]
    items = [Item(None, texts[0]), items_of([{"role": "user", "content": texts[1]}, {"role": "assistant", "content": texts[2]}], None),
             None, Item(None, texts[3]), items_of([{"role": "user", "content": texts[4]}, {"role": "assistant", "content": texts[0]}], None)]
    batched = LMScorer(tiny_model, max_tokens=64, batch_tokens=4096, precision="fp32")(items)
    one_at_a_time = LMScorer(tiny_model, max_tokens=64, batch_tokens=1, precision="fp32")
    single = {name: np.array([one_at_a_time([item])[name][0] for item in items]) for name in batched}
    for name in batched:
        np.testing.assert_allclose(batched[name], single[name], rtol=1e-4, err_msg=name)
    assert np.isnan(batched["lm_perplexity"][2])  # nothing to read
    assert np.isnan(batched["lm_end_surprisal"][3])  # cut at max_tokens: where it ends is unknown
    assert not np.isnan(batched["lm_ifd"][[1, 4]]).any() and np.isnan(batched["lm_ifd"][[0, 3]]).all()


def pool_with_a_real_source(root, real: int) -> None:
    """data/dedup/train.parquet: 600 built-in records, then ``real`` GPTeacher records of a local source."""
    params = parse_params({"sources": {"builtin": {"kind": "builtin", "max_samples": 600}}})
    download(params, "builtin", root)
    tasks = json.loads((SHARED_DATA / "synthetic/gpteacher-codegen.json").read_text())[:real]
    rows = [make_record("mine", "instruction", messages=[{"role": "user", "content": t["instruction"]},
                                                         {"role": "assistant", "content": t["response"]}]) for t in tasks]
    pool = pa.concat_tables([pq.read_table(root / "data/raw/builtin.parquet"), pa.Table.from_pylist(rows, schema=SCHEMA)])
    (root / "data/dedup").mkdir(parents=True)
    pq.write_table(pool, root / "data/dedup/train.parquet", row_group_size=256)


def quality_params(model: str, max_records: int):
    return parse_params({"sources": {"builtin": {"kind": "builtin"}, "mine": {"kind": "local", "path": "unused.jsonl", "category": "instruction", "max_samples": 1000}},
                         "quality": {"workers": 1, "classifier": {"train_records": 200}, "reference_lm": {"train_records": 300, "calibration_records": 40},
                                     "lm_scorer": {"model": model, "max_records": max_records}}})


def test_the_stage_reads_the_real_sources_records_and_leaves_the_builtin_ones(tmp_path, tiny_model):
    pool_with_a_real_source(tmp_path, 30)
    metrics = quality_stage(quality_params(tiny_model, 1000), tmp_path / "data/dedup/train.parquet", tmp_path)
    scored = pq.read_table(tmp_path / "data/quality/scored.parquet")
    real = np.array(scored.column("source").to_pylist()) == "mine"
    perplexity = scored.column("lm_perplexity").to_numpy(zero_copy_only=False)
    assert real.sum() == 30 and not np.isnan(perplexity[real]).any() and np.isnan(perplexity[~real]).all()
    assert not np.isnan(scored.column("lm_ifd").to_numpy(zero_copy_only=False)[real]).any()
    assert metrics["lm_scorer"]["real_records"] == metrics["lm_scorer"]["pool_records_read"] == 30
    assert metrics["read"] == metrics["kept"] + metrics["rejected"] == 630
    # the groups' means count the LM's component for the real records
    assert "mean_reference_lm" in metrics["by_source"]["mine"]


def test_more_real_records_than_max_records_are_scored_without_the_lm_and_a_warning(tmp_path, tiny_model, caplog):
    pool_with_a_real_source(tmp_path, 30)
    metrics = quality_stage(quality_params(tiny_model, 10), tmp_path / "data/dedup/train.parquet", tmp_path)
    assert metrics["lm_scorer"]["real_records"] == 30 and metrics["lm_scorer"]["pool_records_read"] == 0
    assert "more than max_records = 10" in caplog.text
    assert pq.read_table(tmp_path / "data/quality/scores.parquet").column("lm_perplexity").null_count == 630


def test_the_lm_scores_replace_the_reference_lms_in_the_decision():
    from synthtrain.quality.scorer import components, judged

    params = quality_params(None, 0).quality
    calibration = {"category": np.array(["instruction"]), "log_perplexity_median": np.array([1.0]), "log_perplexity_p90": np.array([2.0]),
                   "ifd_median": np.array([0.5]), "ifd_p95": np.array([0.9])}
    nan = np.nan
    scores = {name: np.zeros(3) for name in ("words", "mean_word_length", "alpha_ratio", "symbol_ratio", "dup_line_fraction",
                                             "dup_ngram_fraction", "boilerplate_fraction", "mojibake", "stopwords", "unfinished",
                                             "answer_errors", "response_ratio", "refusal", "classifier")}
    scores.update(perplexity=np.full(3, 1000.0), ifd=np.full(3, 2.0), end_surprisal=np.full(3, 1.0),  # the trigram LM: hopeless
                  lm_perplexity=np.array([params.lm_scorer.perplexity[0], params.lm_scorer.perplexity[1], nan]),
                  lm_ifd=np.array([params.lm_scorer.ifd[0], params.lm_scorer.ifd[1], nan]), lm_end_surprisal=np.array([9.0, 1.0, nan]))
    parts = components(judged(scores, np.array(["instruction"] * 3), calibration), params, calibration)
    np.testing.assert_allclose(parts["reference_lm"], [1.0, 0.0, np.exp(-(np.log(1000) - 1.0))])
    np.testing.assert_allclose(parts["ifd"], [1.0, 0.0, 0.0])
    assert judged(scores, np.array(["instruction"] * 3), calibration)["end_surprisal"][0] == 9.0  # the LM's, not the trigram's
