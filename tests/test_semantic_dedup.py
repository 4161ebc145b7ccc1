"""Semantic deduplication (dedup.semantic): a paraphrase that MinHash keeps is
removed, with the same bookkeeping as a near duplicate."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import stage
from synthtrain.dedup import near_duplicate_roots, semantic_roots
from synthtrain.params import NearDuplicates, ParamsError, SemanticDuplicates, parse_params
from synthtrain.records import RecordWriter, make_record

# Same meaning, different words: no 5-word shingle in common, MiniLM cosine about 0.95
QUESTION = "How do I reset my password if I forgot it?"
PARAPHRASE = "I forgot my password. How can I reset it?"
UNRELATED = "The old lighthouse keeper painted the stairs blue every spring."


def write_source(path, texts):
    with RecordWriter(path) as writer:
        for text in texts:
            writer.write(make_record("a", "knowledge", text=text))


def run_dedup(root, semantic):
    (root / "params.yaml").write_text(yaml.safe_dump({
        "sources": {"a": {"kind": "local", "path": "a.jsonl", "category": "knowledge", "max_samples": 10}},
        "dedup": {"semantic": semantic, "heldout": {"fraction": 0.0, "max_per_source": 0},
                  "decontaminate": {"benchmarks": {}}, "workers": 1}}))
    stage(root, "stages.dedup")
    return json.loads((root / "metrics/dedup.json").read_text())


@pytest.fixture
def project(tmp_path):
    write_source(tmp_path / "data/raw/a.parquet", [QUESTION, UNRELATED, PARAPHRASE])
    return tmp_path


def test_a_paraphrase_that_minhash_keeps_is_removed_as_a_semantic_duplicate_of_the_first(project):
    assert near_duplicate_roots([QUESTION, PARAPHRASE], NearDuplicates()).tolist() == [0, 1]  # MinHash keeps both
    metrics = run_dedup(project, {"enabled": True})
    raw = pq.read_table(project / "data/raw/a.parquet").to_pylist()
    rejects = pq.read_table(project / "data/rejects/dedup.parquet").to_pylist()
    assert [(r["text"], r["reason"], r["duplicate_of"]) for r in rejects] == [(PARAPHRASE, "semantic_duplicate", raw[0]["id"])]
    assert rejects[0]["cluster_id"] == 0
    assert [r["text"] for r in pq.read_table(project / "data/dedup/train.parquet").to_pylist()] == [QUESTION, UNRELATED]
    # every record read is kept or rejected for one reason, and the metrics count the new one
    assert metrics["semantic_duplicates"] == 1 and metrics["near_duplicates"] == metrics["exact_duplicates"] == 0
    assert metrics["by_source"]["a"] == {"in": 3, "kept": 2, "heldout": 0, "exact_duplicates": 0, "near_duplicates": 0,
                                         "semantic_duplicates": 1, "decontaminated": 0}
    assert metrics["in"] == metrics["kept"] + len(rejects)


def test_groups_keep_the_first_or_the_most_central_record_and_clustering_is_seeded():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16))
    vectors = np.concatenate([base, base[:10] + 0.01 * rng.normal(size=(10, 16))])  # records 40..49 copy 0..9
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    semantic = SemanticDuplicates(threshold=0.95, records_per_cluster=8, seed=3)
    roots = semantic_roots(vectors, semantic)
    assert roots.tolist() == list(range(40)) + list(range(10))
    assert np.array_equal(roots, semantic_roots(vectors, semantic))
    # three near-copies of one direction: central keeps the one nearest the centroid, first the first
    a = np.array([[1.0, 0.0], [0.99, 0.14], [0.995, 0.1], [0.0, 1.0]], dtype=np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    assert semantic_roots(a, SemanticDuplicates(threshold=0.98)).tolist() == [0, 0, 0, 3]
    assert semantic_roots(a, SemanticDuplicates(threshold=0.98, keep="central")).tolist() == [1, 1, 1, 3]


def test_a_bad_semantic_param_names_the_key_the_value_and_what_is_allowed():
    with pytest.raises(ParamsError, match=r"dedup\.semantic\.threshold = 1\.5: Input should be less than 1"):
        parse_params({"sources": {"a": {"kind": "builtin"}}, "dedup": {"semantic": {"threshold": 1.5}}})
    with pytest.raises(ParamsError, match=r"dedup\.semantic\.keep = 'best': Input should be 'first' or 'central'"):
        parse_params({"sources": {"a": {"kind": "builtin"}}, "dedup": {"semantic": {"keep": "best"}}})
