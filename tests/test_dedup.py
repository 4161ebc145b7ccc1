import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, SHARED_DATA, stage
from synthtrain.dedup import (MinHasher, collision_probability, edited_copy, jaccard, near_duplicate_roots, optimal_bands,
                          real_text_accuracy, shingle_sets, component_roots)
from synthtrain.sources.download import download
from synthtrain.params import NearDuplicates, parse_params
from synthtrain.records import RecordWriter, make_record

NEAR = NearDuplicates()
WORDS = ("river stone lamp garden violet copper winter tall quiet bright seven window market forest silver "
         "harbour candle meadow thunder paper orange castle mirror bridge pencil cloud engine valley").split()


def essay(seed: int, words: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randint(0, 99)) for _ in range(words))


def edit(text: str, edits: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = text.split()
    for _ in range(edits):
        words[rng.randrange(len(words))] = "changed"
    return " ".join(words)


# --- the algorithm on texts in memory ------------------------------------------------------
def test_bands_and_rows_fit_the_permutations_and_put_the_s_curve_at_the_threshold():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        near = NearDuplicates(threshold=threshold, false_positive_weight=0.5, false_negative_weight=0.5)
        bands, rows = optimal_bands(near)
        assert bands * rows <= near.num_perm
        assert collision_probability(np.array(threshold - 0.15), bands, rows) < 0.5 < collision_probability(np.array(threshold + 0.1), bands, rows)
    strict = optimal_bands(NearDuplicates(false_positive_weight=0.9, false_negative_weight=0.1))
    lenient = optimal_bands(NearDuplicates(false_positive_weight=0.1, false_negative_weight=0.9))
    assert strict[1] > lenient[1]  # fearing false positives means more rows per band


def test_exact_duplicates_fold_case_whitespace_punctuation_and_unicode_form():
    texts = ["The ﬁrst café, in Paris!", "the  first CAFÉ in paris", "The first cafe\u0301 in Paris.", "ＴＨＥ first café in Paris",
             "The second café in Paris"]
    roots = near_duplicate_roots(texts, NEAR)
    assert roots.tolist() == [0, 0, 0, 0, 4]
    assert near_duplicate_roots(["!!!", "a b", "???"], NEAR).tolist() == [0, 1, 0]  # nothing left after folding: equal


def test_near_duplicates_above_the_threshold_cluster_and_those_below_do_not():
    original = essay(1)
    close = edit(original, 2, seed=1)      # ~10 of ~116 shingles differ: Jaccard ~0.85
    far = edit(original, 25, seed=2)       # Jaccard well below 0.5
    texts = [essay(0), original, close, far, essay(2)]
    shingles, owner, _ = MinHasher(NEAR).shingles(__import__("pyarrow").array(texts))
    similarity = jaccard(np.array([[1, 2], [1, 3]]), shingle_sets(shingles, owner, range(len(texts))))
    assert similarity[0] >= 0.8 > 0.5 > similarity[1]
    roots = near_duplicate_roots(texts, NEAR)
    assert roots.tolist() == [0, 1, 1, 3, 4]  # the first of a cluster is its representative


def test_component_roots_join_chains_and_root_at_the_smallest_index():
    roots = component_roots(7, np.array([[5, 6], [2, 5], [1, 3], [6, 5]]))
    assert roots.tolist() == [0, 1, 2, 1, 4, 2, 2]
    assert component_roots(3, np.empty((0, 2), dtype=np.int64)).tolist() == [0, 1, 2]


def test_edited_copies_land_near_their_target_similarity():
    rng = np.random.default_rng(0)
    text = essay(3, 300).split()
    minhasher = MinHasher(NEAR)
    for target in (0.6, 0.8, 0.95):
        copies = [" ".join(edited_copy(text, target, NEAR.shingle, WORDS, rng)) for _ in range(20)]
        shingles, owner, _ = minhasher.shingles(__import__("pyarrow").array([" ".join(text)] + copies))
        sets = shingle_sets(shingles, owner, range(21))
        similarity = jaccard(np.array([[0, k] for k in range(1, 21)]), sets)
        assert abs(similarity.mean() - target) < 0.06, (target, similarity.mean())


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_f1_on_real_texts_edited_at_known_similarity_meets_the_target():
    params = parse_params({"sources": {"x": {"kind": "builtin"}}, "dedup": {"accuracy": {"pairs": 600, "files": {
        "c4": {"path": str(SHARED_DATA / "human/c4-sample.jsonl")},
        "stories": {"path": str(SHARED_DATA / "synthetic/tinystories-val.txt")}}}}})
    result = real_text_accuracy(params.dedup)
    assert 100 < result["positives"] < 500
    assert result["f1"] >= 0.95, result


# --- the stage --------------------------------------------------------------------------------
def write_source(path, records):
    with RecordWriter(path) as writer:
        for record in records:
            writer.write(record)


def doc(text, source="a", **meta):
    return make_record(source, "knowledge", text=text, meta=meta)


BENCHMARK_QUESTION = "which of the seven bridges of the old harbour town was built first by the river guild"


@pytest.fixture
def workdir(tmp_path):
    """Two sources with duplicates within and across them, a built-in eval file
    and a benchmark file."""
    a = [doc(essay(i)) for i in range(40)]
    a.append(doc(essay(0).upper()))                        # exact duplicate of a[0]
    a.append(doc(edit(essay(1), 2, seed=1)))                # near duplicate of a[1]
    a.append(doc("Notes. " + BENCHMARK_QUESTION + " is what the quiz asked."))  # contains a benchmark 13-gram
    b = [doc(essay(100 + i), "b") for i in range(30)]
    b.append(doc(essay(2) + "!!", "b"))                     # exact duplicate of a[2], across sources
    b.append(doc(edit(essay(3), 1, seed=3), "b"))           # near duplicate of a[3], across sources
    b.append(doc("Ten green bottles hanging on the wall said the old song", "b"))  # an eval text, matched whole
    write_source(tmp_path / "data/raw/a.parquet", a)
    write_source(tmp_path / "data/raw/b.parquet", b)
    write_source(tmp_path / "data/raw/builtin_eval.parquet",
                 [make_record("builtin_eval", "instruction", messages=[{"role": "user", "content": "Name it."}, {"role": "assistant", "content": "No."}])])
    (tmp_path / "bench.jsonl").write_text(json.dumps({"q": BENCHMARK_QUESTION + "?"}) + "\n"
                                          + json.dumps({"q": "ten green bottles hanging on the wall said the old song"}) + "\n"
                                          + json.dumps({"q": "too short"}) + "\n")
    return tmp_path


def params_file(workdir, heldout=None, sources=("a", "b"), outside=(), **dedup):
    sources = {name: {"kind": "local", "path": f"{name}.jsonl", "category": "knowledge", "max_samples": 100, "pool": name not in outside}
               for name in (*sources, *outside)}
    section = {"heldout": heldout or {"fraction": 0.1, "max_per_source": 2},
               "decontaminate": {"benchmarks": {"quiz": {"path": "bench.jsonl", "fields": ["q"]}}}, "workers": 2, **dedup}
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump({"sources": sources, "dedup": section}))
    return path


def rows(path):
    return pq.read_table(path).to_pylist()


def test_stage_removes_duplicates_across_sources_keeps_the_first_and_accounts_for_every_record(workdir):
    params_file(workdir)
    result = stage(workdir, "stages.dedup")
    assert "read 76" in result.stderr  # the stage logs to stderr
    metrics = json.loads((workdir / "metrics/dedup.json").read_text())
    assert metrics["exact_duplicates"] == 2 and metrics["near_duplicates"] == 2 and metrics["clusters"] == 4
    assert metrics["decontaminated"] == 2 and metrics["decontamination"]["quiz"] == {"texts": 3, "checked": 2, "too_short": 1, "records_removed": 2}
    assert metrics["heldout"] == 4
    assert metrics["in"] == 76 == metrics["kept"] + metrics["heldout"] + metrics["exact_duplicates"] + metrics["near_duplicates"] + metrics["decontaminated"]
    for source in ("a", "b"):
        counts = metrics["by_source"][source]
        assert counts["in"] == counts["kept"] + counts["heldout"] + counts["exact_duplicates"] + counts["near_duplicates"] + counts["decontaminated"]

    a = rows(workdir / "data/raw/a.parquet")
    rejects = {r["id"]: r for r in rows(workdir / "data/rejects/dedup.parquet")}
    assert rejects[a[40]["id"]]["reason"] == "exact_duplicate" and rejects[a[40]["id"]]["duplicate_of"] == a[0]["id"]
    assert rejects[a[41]["id"]]["reason"] == "near_duplicate" and rejects[a[41]["id"]]["duplicate_of"] == a[1]["id"]
    b = rows(workdir / "data/raw/b.parquet")
    assert rejects[b[30]["id"]]["duplicate_of"] == a[2]["id"] and rejects[b[31]["id"]]["duplicate_of"] == a[3]["id"]
    assert len({rejects[r["id"]]["cluster_id"] for r in (a[40], a[41], b[30], b[31])}) == 4
    assert rejects[a[42]["id"]]["reason"] == "decontaminated" and rejects[a[42]["id"]]["detail"] == "quiz"
    assert rejects[b[32]["id"]]["detail"] == "quiz" and rejects[b[32]["id"]]["cluster_id"] is None

    train = rows(workdir / "data/dedup/train.parquet")
    heldout = rows(workdir / "data/heldout/a.parquet") + rows(workdir / "data/heldout/b.parquet")
    assert len(train) == metrics["kept"] and len(heldout) == 4
    kept_ids = {r["id"] for r in train} | {r["id"] for r in heldout}
    assert {a[0]["id"], a[1]["id"], a[2]["id"], a[3]["id"]} <= kept_ids
    assert not kept_ids & {i for i, r in rejects.items() if r["reason"] != "exact_duplicate"}  # a case-folded copy shares its id
    assert [r["text"] for r in train] == [r["text"] for r in a + b if r["text"] in {t["text"] for t in train}]  # input order


def test_heldout_is_stable_when_other_params_or_sources_change_and_output_is_deterministic(workdir):
    params_file(workdir)
    stage(workdir, "stages.dedup")
    first = {p.name: p.read_bytes() for p in (workdir / "data").rglob("*.parquet") if "raw" not in p.parts}
    params_file(workdir, workers=1, near={"num_perm": 128})  # same choices, one process
    stage(workdir, "stages.dedup")
    assert first == {p.name: p.read_bytes() for p in (workdir / "data").rglob("*.parquet") if "raw" not in p.parts}
    # another source joins: source a keeps the same held-out records
    write_source(workdir / "data/raw/c.parquet", [doc(essay(500 + i), "c") for i in range(20)])
    params_file(workdir, sources=("a", "b", "c"))
    stage(workdir, "stages.dedup")
    assert (workdir / "data/heldout/a.parquet").read_bytes() == first["a.parquet"]
    assert len(rows(workdir / "data/heldout/c.parquet")) == 2


def test_a_held_out_record_removes_training_records_that_share_its_ngrams_unless_they_are_common(workdir):
    params_file(workdir, heldout={"fraction": 1.0, "max_per_source": 1})
    stage(workdir, "stages.dedup")
    heldout = rows(workdir / "data/heldout/a.parquet")[0]
    # add a training record quoting 13 words of the held-out record: it must go
    quote = " ".join(heldout["text"].split()[:13])
    essays = [doc(essay(900 + i), "c") for i in range(50)]
    write_source(workdir / "data/raw/c.parquet", [doc("Quoted: " + quote, "c")] + essays)
    params_file(workdir, heldout={"fraction": 1.0, "max_per_source": 1}, sources=("a", "b", "c"))
    stage(workdir, "stages.dedup")
    metrics = json.loads((workdir / "metrics/dedup.json").read_text())
    assert metrics["by_source"]["c"]["decontaminated"] == 1 and metrics["decontamination"]["heldout"]["records_removed"] == 1
    # quoted by more than max_matches training records, a held-out record's n-gram is common phrasing
    write_source(workdir / "data/raw/c.parquet", [doc(f"Quoted {k}: {quote}", "c") for k in range(4)] + essays)
    params_file(workdir, heldout={"fraction": 1.0, "max_per_source": 1}, sources=("a", "b", "c"), decontaminate={"max_matches": 3})
    stage(workdir, "stages.dedup")
    metrics = json.loads((workdir / "metrics/dedup.json").read_text())
    assert metrics["by_source"]["c"]["decontaminated"] == 0 and metrics["decontamination"]["heldout"]["records_removed"] == 0


def test_a_benchmark_question_repeated_in_50_training_records_is_removed(workdir):
    # max_matches exempts held-out n-grams only: a benchmark leak stays a leak however often it is repeated
    write_source(workdir / "data/raw/c.parquet", [doc(f"{essay(700 + i, 30)} {BENCHMARK_QUESTION}", "c") for i in range(50)])
    params_file(workdir, {"fraction": 0.0, "max_per_source": 0}, sources=("a", "b", "c"),
                decontaminate={"max_matches": 3, "benchmarks": {"quiz": {"path": "bench.jsonl", "fields": ["q"]}}})
    stage(workdir, "stages.dedup")
    metrics = json.loads((workdir / "metrics/dedup.json").read_text())
    assert metrics["by_source"]["c"] == {"in": 50, "kept": 0, "heldout": 0, "exact_duplicates": 0, "near_duplicates": 0, "semantic_duplicates": 0, "decontaminated": 50}
    assert metrics["decontamination"]["quiz"]["records_removed"] == 52  # and a[42] and b[32] of the fixture


SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())["dedup"]["decontaminate"]


def test_the_shipped_benchmarks_check_every_field_they_score(workdir):
    """params.yaml's hellaswag, piqa and BLiMP entries, on made-up items in
    their formats: each context with each ending, each query with each choice
    (a short one matched whole) and BLiMP's good and bad sentences are checked;
    a fragment of an item that is never scored alone is not a leak."""
    (workdir / "hellaswag.jsonl").write_text(json.dumps({
        "ind": 0, "activity_label": "Cooking soup", "ctx": "A woman is standing in a kitchen next to a large pot of soup. she",
        "endings": ["stirs the soup slowly with a long wooden spoon and then tastes a little from the spoon.", "drops the pot.",
                    "picks up a phone and starts to talk about the weather.", "walks away."], "label": 0}) + "\n")
    (workdir / "piqa.jsonl").write_text(json.dumps({"query": "Question: Open a jar.\n", "choices": ["Tap the lid.", "Lick the lid."], "gold": 0}) + "\n")
    (workdir / "blimp").mkdir()
    (workdir / "blimp/agreement.jsonl").write_text(json.dumps({"sentence_good": "The cats near the door were sleeping.",
                                                               "sentence_bad": "The cats near the door was sleeping."}) + "\n")
    (workdir / "blimp/islands.jsonl").write_text(json.dumps({"sentence_good": "What did Nora fix after reading the manual?",
                                                             "sentence_bad": "What did Nora fix the manual after reading?"}) + "\n")
    files = {"hellaswag": "hellaswag.jsonl", "piqa": "piqa.jsonl", "blimp_good": "blimp/*.jsonl", "blimp_bad": "blimp/*.jsonl"}
    decontaminate = {**SHIPPED, "benchmarks": {name: {**SHIPPED["benchmarks"][name], "path": path} for name, path in files.items()}}
    leaks = {
        "hellaswag": ["Recipe blog. She stirs the soup slowly with a long wooden spoon and then tastes a little. Yum.",  # an ending alone
                      "Caption: next to a large pot of soup. She picks up a phone and starts to talk, then hangs up."],  # a context with its third ending
        "piqa": ["Forum. Question: open a jar? Tap the lid! Worked for me."],  # query + choice: 7 words, matched whole
        "blimp_bad": ["Grammar drill: the cats near the door was sleeping. Correct it."],
        "blimp_good": ["She asked what did Nora fix after reading the manual, and nobody knew."],
    }
    clean = ["He drops the pot. Then he walks away.", "Forum. Question: open a jar? I gave up.", "The cats near the door purred."]
    c = [doc(text, "c") for texts in leaks.values() for text in texts] + [doc(text, "c") for text in clean]
    write_source(workdir / "data/raw/c.parquet", c + [doc(essay(800 + i), "c") for i in range(10)])
    params_file(workdir, {"fraction": 0.0, "max_per_source": 0}, sources=("a", "b", "c"), decontaminate=decontaminate)
    stage(workdir, "stages.dedup")
    rejects = {r["text"]: r["detail"] for r in rows(workdir / "data/rejects/dedup.parquet") if r["reason"] == "decontaminated"}
    assert rejects == {text: name for name, texts in leaks.items() for text in texts}
    coverage = json.loads((workdir / "metrics/dedup.json").read_text())["decontamination"]
    assert coverage["hellaswag"]["texts"] == 4 and coverage["piqa"] == {"texts": 2, "checked": 2, "too_short": 0, "records_removed": 1}
    assert coverage["blimp_good"]["texts"] == coverage["blimp_bad"]["texts"] == 2


def test_bad_input_gives_one_clear_line(workdir):
    params_file(workdir, sources=("a", "missing"))
    result = stage(workdir, "stages.dedup", check=False)
    assert result.returncode == 1 and "data/raw/missing.parquet is missing: run `dvc repro download@missing`" in result.stderr
    assert "Traceback" not in result.stderr

    write_source(workdir / "data/raw/empty.parquet", [])
    params_file(workdir, sources=("empty",))
    result = stage(workdir, "stages.dedup", check=False)
    assert "no records to deduplicate" in result.stderr and "Traceback" not in result.stderr

    params_file(workdir, heldout={"fraction": 1.0, "max_per_source": 1000})
    result = stage(workdir, "stages.dedup", check=False)
    assert result.returncode == 1 and "no training record is left of 76" in result.stderr
    assert "72 held out (dedup.heldout.fraction = 1.0, max_per_source = 1000)" in result.stderr

    (workdir / "bench.jsonl").write_text('{"q": "fine"}\n{"q": broken\n')
    params_file(workdir)
    result = stage(workdir, "stages.dedup", check=False)
    assert "bench.jsonl:2: not valid JSON" in result.stderr

    params_file(workdir, decontaminate={"benchmarks": {"quiz": {"path": "nowhere.jsonl", "fields": ["q"]}}})
    result = stage(workdir, "stages.dedup", check=False)
    assert "dedup.decontaminate.benchmarks.quiz.path: nowhere.jsonl is missing" in result.stderr

    params_file(workdir, decontaminate={"ngram": 6, "min_ngram": 8})
    result = stage(workdir, "stages.dedup", check=False)
    assert "min_ngram (8) must be at most ngram (6)" in result.stderr


def test_a_source_left_without_training_records_is_reported(workdir):
    write_source(workdir / "data/raw/c.parquet", [doc(essay(0), "c")])  # only a duplicate of a[0]
    params_file(workdir, sources=("a", "c"))
    result = stage(workdir, "stages.dedup")
    assert "source c has no training records left" in result.stderr
    assert json.loads((workdir / "metrics/dedup.json").read_text())["by_source"]["c"] == {
        "in": 1, "kept": 0, "heldout": 0, "exact_duplicates": 1, "near_duplicates": 0, "semantic_duplicates": 0, "decontaminated": 0}


def test_builtin_injected_near_duplicates_are_found(tmp_path):
    params = parse_params({"sources": {"builtin": {"kind": "builtin", "max_samples": 30_000}}, "dedup": {"workers": 2}})
    download(params, "builtin", tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sources": {"builtin": {"kind": "builtin", "max_samples": 30_000}}}))
    stage(tmp_path, "stages.dedup")
    accuracy = json.loads((tmp_path / "metrics/dedup.json").read_text())["accuracy"]["builtin_injected"]
    assert accuracy["positives"] > 500 and accuracy["f1"] >= 0.95, accuracy


def edited_at(text: str, positions: list[int]) -> str:
    words = text.split()
    for k in positions:
        words[k] = "changed"
    return " ".join(words)


def test_a_source_outside_the_pool_is_deduplicated_and_decontaminated_against_it_and_changes_nothing_in_it(workdir):
    one_each = {"fraction": 0.1, "max_per_source": 1, "seed": 2}  # a seed that holds out none of p's 4 records
    decontaminate = {"max_matches": 3, "benchmarks": {"quiz": {"path": "bench.jsonl", "fields": ["q"]}}}
    params_file(workdir, one_each, decontaminate=decontaminate)
    stage(workdir, "stages.dedup")
    quote = " ".join(rows(workdir / "data/heldout/a.parquet")[0]["text"].split()[:13])
    # pool source p: two records quoting the held-out record (2 <= max_matches: a leak), and A and B, 4 edits
    # apart (Jaccard ~0.7: not near duplicates), which H, 2 edits from each (~0.85), would link into one cluster
    first = essay(5000)
    near_a, near_b = edited_at(first, [20, 45]), edited_at(first, [20, 45, 70, 95])
    write_source(workdir / "data/raw/p.parquet", [doc(f"Quoted {k}: {quote}", "p") for k in range(2)] + [doc(first, "p"), doc(near_b, "p")])
    params_file(workdir, one_each, sources=("a", "b", "p"), decontaminate=decontaminate)
    stage(workdir, "stages.dedup")
    pool = {p.relative_to(workdir): p.read_bytes() for p in (workdir / "data").rglob("*.parquet") if p.parts[-2] in ("dedup", "heldout")}
    before = json.loads((workdir / "metrics/dedup.json").read_text())
    assert before["by_source"]["p"]["heldout"] == 0 and before["by_source"]["p"]["decontaminated"] == 2
    assert before["near_duplicates"] == 2  # the fixture's own two

    a = rows(workdir / "data/raw/a.parquet")
    fresh = [doc(essay(6000 + i), "c") for i in range(3)]
    outside = [doc(a[5]["text"].upper(), "c"), doc(near_a, "c"), *[doc(f"{essay(7000 + k, 40)} {quote}", "c") for k in range(2)], *fresh]
    write_source(workdir / "data/raw/c.parquet", outside)
    params_file(workdir, one_each, sources=("a", "b", "p"), outside=("c",), decontaminate=decontaminate)
    stage(workdir, "stages.dedup")
    # the pool is what it was: same training and held-out files, the same records decontaminated
    assert pool == {p.relative_to(workdir): p.read_bytes() for p in (workdir / "data").rglob("*.parquet")
                    if p.parts[-2] in ("dedup", "heldout")}
    metrics = json.loads((workdir / "metrics/dedup.json").read_text())
    assert metrics["by_source"]["p"] == before["by_source"]["p"] and not (workdir / "data/heldout/c.parquet").exists()
    # and the source outside it lost its copy, its near duplicate and its two leaks, and kept the rest apart
    assert [r["text"] for r in rows(workdir / "data/dedup/sources/c.parquet")] == [r["text"] for r in fresh]
    assert metrics["kept_outside_pool"] == 3 and metrics["by_source"]["c"] == {"in": 7, "kept": 3, "heldout": 0, "exact_duplicates": 1,
                                                                               "near_duplicates": 1, "semantic_duplicates": 0,
                                                                               "decontaminated": 2}
    rejects = {r["id"]: r for r in rows(workdir / "data/rejects/dedup.parquet")}
    p = rows(workdir / "data/raw/p.parquet")
    assert rejects[outside[0]["id"]]["duplicate_of"] == a[5]["id"] and rejects[outside[1]["id"]]["duplicate_of"] == p[2]["id"]
    assert [rejects[r["id"]]["detail"] for r in outside[2:4]] == ["heldout", "heldout"]
    assert metrics["in"] == metrics["kept"] + metrics["heldout"] + metrics["exact_duplicates"] + metrics["near_duplicates"] + metrics["decontaminated"]
