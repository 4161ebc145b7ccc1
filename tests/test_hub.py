"""kind: hub, through `datasets.load_dataset(..., streaming=True)` on local mirrors of
the upstream repositories (tests/fixtures/hub, made by make_fixtures.py in the
upstream layouts and schemas)."""

import json
import time

import pyarrow.parquet as pq
import pytest

from conftest import FIXTURES, stage
from synthtrain.sources.download import download
from synthtrain.params import StageError, parse_params

HUB = FIXTURES / "hub"


def run(tmp_path, name, **extra):
    source = {"kind": "hub", "name": str(HUB / name), "max_samples": 1000, **extra}
    metrics = download(parse_params({"sources": {"src": source}}), "src", tmp_path)
    rows = pq.read_table(tmp_path / "data/raw/src.parquet").to_pylist()
    assert metrics["read"] == metrics["kept"] + metrics["rejected"] == len(rows) + metrics["rejected"]
    return metrics, rows, [json.loads(r["meta"]) for r in rows]


def test_openhermes_sharegpt_roles_and_metadata(tmp_path):
    upstream = json.loads((HUB / "teknium/OpenHermes-2.5/openhermes2_5.json").read_text())
    metrics, rows, metas = run(tmp_path, "teknium/OpenHermes-2.5")
    assert metrics["read"] == len(upstream) and metrics["rejected_by_reason"] == {"empty_text": metrics["rejected"]}
    assert {r["category"] for r in rows} == {"instruction"}
    with_system = next(i for i, u in enumerate(upstream) if u["conversations"][0]["from"] == "system")
    row = next(r for r in rows if r["messages"][0]["content"] == upstream[with_system]["conversations"][0]["value"])
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert metas[0]["source"] == upstream[0]["source"] and metas[0]["hub"].endswith("OpenHermes-2.5")


@pytest.mark.parametrize("config", ["stanford", "stories", "auto_math_text"])
def test_cosmopedia_text_is_knowledge_with_prompt_in_meta(tmp_path, config):
    metrics, rows, metas = run(tmp_path, "HuggingFaceTB/cosmopedia", config=config)
    assert {r["category"] for r in rows} == {"knowledge"} and all(r["text"] and r["messages"] is None for r in rows)
    assert all(m["prompt"] and "text_token_length" in m and m["config"] == config for m in metas)
    if config == "stories":
        assert metrics["rejected_by_reason"] == {"empty_text": 1}


def test_magpie_conversations(tmp_path):
    metrics, rows, metas = run(tmp_path, "Magpie-Align/Magpie-Pro-300K-Filtered")
    assert metrics["kept"] == 14 and {r["category"] for r in rows} == {"instruction"}
    assert all([m["role"] for m in r["messages"]][:2] == ["user", "assistant"] for r in rows)
    assert all("uuid" in m and "instruction" not in m and "task_category" in m for m in metas)


def test_fineweb_edu_min_int_score(tmp_path):
    metrics, rows, metas = run(tmp_path, "HuggingFaceFW/fineweb-edu", config="sample-10BT", min_int_score=3)
    assert metrics["read"] == 15 and metrics["kept"] == 10 and metrics["rejected_by_reason"] == {"below_min_int_score": 5}
    assert all(m["int_score"] >= 3 and isinstance(m["score"], float) for m in metas)
    assert {r["category"] for r in rows} == {"web"}
    _, everything, _ = run(tmp_path / "all", "HuggingFaceFW/fineweb-edu", config="default")
    assert len(everything) == 15


def test_max_samples_stops_the_stream(tmp_path):
    metrics, rows, _ = run(tmp_path, "HuggingFaceFW/fineweb-edu", config="sample-10BT", max_samples=4)
    assert len(rows) == metrics["kept"] == 4


def test_unknown_dataset_needs_a_normaliser(tmp_path):
    with pytest.raises(StageError, match="set normaliser:"):
        run(tmp_path, "someone/else")


def test_unreachable_hub_fails_within_seconds_suggesting_local_or_builtin(tmp_path):
    source = {"kind": "hub", "name": "HuggingFaceFW/fineweb-edu", "config": "sample-10BT", "max_samples": 10}
    (tmp_path / "params.yaml").write_text(json.dumps({"sources": {"fw": source}, "download": {"hub_timeout_s": 5}}))
    started = time.monotonic()
    # An endpoint nobody listens on makes the test offline even on a machine with internet.
    result = stage(tmp_path, "stages.download", "fw", check=False, HF_ENDPOINT="http://127.0.0.1:9")
    assert time.monotonic() - started < 20
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "127.0.0.1 is unreachable" in result.stderr and "HuggingFaceFW/fineweb-edu" in result.stderr and "kind: local" in result.stderr and "kind: builtin" in result.stderr
