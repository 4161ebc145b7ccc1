import json
import re
from collections import Counter

import pyarrow.parquet as pq
import pytest

from synthtrain.world.problems import FAMILIES, write_problems
from synthtrain.sources.download import download
from synthtrain.world.corpus import REFUSALS
from synthtrain.world.facts import EVAL_QUESTIONS, PHRASES, World
from synthtrain.params import parse_params
from synthtrain.records import content_of
from synthtrain.text import normalize

N = 40_000


def builtin_params(workers=0, n=N, **sections):
    return parse_params({"sources": {"builtin": {"kind": "builtin", "max_samples": n}}, "download": {"workers": workers}, **sections})


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("builtin")
    metrics = download(builtin_params(workers=2), "builtin", root)
    rows = pq.read_table(root / "data/raw/builtin.parquet").to_pylist()
    return root, metrics, rows


def test_same_params_give_byte_identical_parquet_whatever_the_process_count(generated, tmp_path):
    root, _, _ = generated
    download(builtin_params(workers=1), "builtin", tmp_path)
    assert (tmp_path / "data/raw/builtin.parquet").read_bytes() == (root / "data/raw/builtin.parquet").read_bytes()


def test_another_seed_gives_other_records(tmp_path):
    params = parse_params({"sources": {"builtin": {"kind": "builtin", "max_samples": 500, "seed": 1}}})
    download(params, "builtin", tmp_path)
    download(builtin_params(n=500), "builtin", tmp_path / "b")
    assert (tmp_path / "data/raw/builtin.parquet").read_bytes() != (tmp_path / "b/data/raw/builtin.parquet").read_bytes()


def test_flaw_rates_are_met_within_20_percent(generated):
    _, metrics, rows = generated
    flaws = Counter(json.loads(r["meta"])["flaw"] for r in rows)
    expected = builtin_params().sources["builtin"].flaws.model_dump()
    for flaw, rate in expected.items():
        assert abs(flaws[flaw] / N - rate) <= 0.2 * rate, (flaw, flaws[flaw] / N, rate)
    assert metrics["flaws"] == {k: v for k, v in flaws.items() if k is not None}
    assert metrics["read"] == metrics["kept"] == N and metrics["rejected"] == 0


def test_category_shares_and_schema(generated):
    _, _, rows = generated
    categories = Counter(r["category"] for r in rows)
    for category, share in {"instruction": 0.5, "knowledge": 0.3, "web": 0.2}.items():
        assert abs(categories[category] / N - share) < 0.05
    for r in rows[:2000]:
        assert (r["messages"] is None) != (r["text"] is None)
        assert (r["messages"] is not None) == (r["category"] == "instruction")


def test_flaws_look_like_their_names(generated):
    _, _, rows = generated
    by_flaw = {}
    for r in rows:
        by_flaw.setdefault(json.loads(r["meta"])["flaw"], []).append(r)
    ids = {r["id"] for r in by_flaw[None]}
    for r in by_flaw["exact_duplicate"]:
        assert r["id"] == json.loads(r["meta"])["duplicate_of"] and r["id"] in ids
    for r in by_flaw["near_duplicate"]:
        assert r["id"] != json.loads(r["meta"])["duplicate_of"] in ids
    assert all(r["messages"][-1]["content"] in REFUSALS for r in by_flaw["refusal"])
    assert all(re.search("[ÃÂâ]", r["text"] or r["messages"][-1]["content"]) for r in by_flaw["mojibake"])
    wrong = [r for r in by_flaw["wrong_answer"] if json.loads(r["meta"])["family"] == "arithmetic"]
    for r in wrong:
        question, reply = r["messages"][-2]["content"], r["messages"][-1]["content"]
        expression = re.search(r"(\d[\d +\-×]*\d)", question).group(1).replace("×", "*")
        assert int(reply.rsplit("Final answer: ", 1)[1]) != eval(expression)


def test_clean_arithmetic_is_correct(generated):
    _, _, rows = generated
    checked = 0
    for r in rows:
        meta = json.loads(r["meta"])
        if meta["family"] == "arithmetic" and meta["flaw"] is None:
            question, reply = r["messages"][-2]["content"], r["messages"][-1]["content"]
            expression = re.search(r"(\d[\d +\-×]*\d)", question).group(1).replace("×", "*")
            assert int(reply.rsplit("Final answer: ", 1)[1]) == eval(expression), r
            checked += 1
    assert checked > 1000


def test_each_fact_is_phrased_several_ways_in_knowledge(generated):
    _, _, rows = generated
    world = World(builtin_params().world)
    fact = world.by_kind["country"][0]
    capital = [f for f in world.facts_of(fact) if f.attribute == "capital"][0]
    statements = {t.format(e=capital.entity.name, v=capital.value) for t in PHRASES["capital"][0][: world.phrasings]}
    texts = [r["text"] for r in rows if r["category"] == "knowledge"]
    assert sum(any(s in t for t in texts) for s in statements) >= 3


def test_eval_problems_are_held_out_and_answerable(generated, tmp_path):
    _, _, rows = generated
    params = builtin_params()
    metrics = write_problems(params, tmp_path / "eval.parquet")
    problems = pq.read_table(tmp_path / "eval.parquet").to_pylist()
    assert metrics["by_family"] == {family: 200 for family in FAMILIES}
    train_turns = {m["content"] for r in rows if r["messages"] for m in r["messages"] if m["role"] == "user"}
    world = World(params.world)
    for p in problems:
        meta, prompt, reference = json.loads(p["meta"]), p["messages"][0]["content"], p["messages"][1]["content"]
        assert prompt not in train_turns
        if meta["extract"] == "final_answer":
            assert reference.endswith(f"Final answer: {meta['answer']}")
        if meta["family"] == "fact_recall":
            assert meta["answer"] in {f.value for f in world.facts}
    # held-out phrasings are never training phrasings
    for attribute, questions in EVAL_QUESTIONS.items():
        assert not set(questions) & set(PHRASES[attribute][1])
    assert {json.loads(p["meta"]).get("qa_trained") for p in problems if "fact" in p["meta"]} >= {True, False}


def test_a_source_without_instructions_gets_no_instruction_flaws(tmp_path):
    params = parse_params({"sources": {"builtin": {"kind": "builtin", "max_samples": 3000,
                                                   "shares": {"instruction": 0, "knowledge": 0, "web": 1}}}})
    metrics = download(params, "builtin", tmp_path)
    assert metrics["by_category"] == {"web": 3000}
    assert set(metrics["flaws"]) <= {"exact_duplicate", "near_duplicate", "boilerplate_only", "mojibake", "gibberish"}


def shingles(text: str, size: int = 5) -> set:
    words = normalize(text).split()
    return {tuple(words[i:i + size]) for i in range(max(1, len(words) - size + 1))}


def test_near_duplicates_stay_near_their_original(generated):
    """Near duplicates are meant to be found by a 5-word-shingle Jaccard threshold of 0.8."""
    _, _, rows = generated
    clean = {r["id"]: content_of(r["messages"], r["text"]) for r in rows if json.loads(r["meta"])["flaw"] is None}
    similarities = sorted(
        len(shingles(content_of(r["messages"], r["text"])) & shingles(clean[meta["duplicate_of"]]))
        / len(shingles(content_of(r["messages"], r["text"])) | shingles(clean[meta["duplicate_of"]]))
        for r in rows if (meta := json.loads(r["meta"]))["flaw"] == "near_duplicate")
    assert len(similarities) > 500
    assert similarities[len(similarities) // 2] >= 0.85 and similarities[len(similarities) // 20] >= 0.8, similarities[:20]
    assert similarities[-1] < 1.0
