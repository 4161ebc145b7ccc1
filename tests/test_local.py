"""kind: local on every data file of ../shared/data/synthetic and ../shared/data/human."""

import json
import re

import pyarrow.parquet as pq
import pytest

from conftest import SHARED_DATA
from synthtrain.sources.download import download
from synthtrain.params import parse_params


def run(tmp_path, path, category, **extra):
    source = {"kind": "local", "path": str(path), "category": category, "max_samples": 10_000_000, **extra}
    metrics = download(parse_params({"sources": {"src": source}}), "src", tmp_path)
    rows = pq.read_table(tmp_path / "data/raw/src.parquet").to_pylist()
    assert metrics["read"] == metrics["kept"] + metrics["rejected"] and metrics["kept"] == len(rows)
    return metrics, rows


@pytest.mark.parametrize("name", ["gpteacher-codegen.json", "gpteacher-toolformer.json"])
def test_gpteacher_alpaca_with_response(tmp_path, name):
    upstream = json.loads((SHARED_DATA / "synthetic" / name).read_text())
    metrics, rows = run(tmp_path, SHARED_DATA / "synthetic" / name, "instruction")
    assert metrics["read"] == len(upstream) and metrics["rejected"] == metrics["rejected_by_reason"].get("empty_text", 0)
    assert metrics["kept"] >= 0.99 * len(upstream)
    first, item = rows[0], upstream[0]
    user = item["instruction"] + ("\n\n" + item["input"] if item["input"].strip() else "")
    assert first["messages"] == [{"role": "user", "content": user}, {"role": "assistant", "content": item["response"]}]
    assert json.loads(first["meta"])["format"] == "alpaca"


@pytest.mark.parametrize("folder, name, category", [("synthetic", "tinystories-val.txt", "knowledge"), ("human", "tinyshakespeare.txt", "knowledge")])
def test_plain_text_one_document_per_blank_line_block(tmp_path, folder, name, category):
    content = (SHARED_DATA / folder / name).read_text()
    blocks = [b for b in re.split(r"\n\s*\n", content) if b.strip()]
    metrics, rows = run(tmp_path, SHARED_DATA / folder / name, category)
    assert metrics["kept"] == len(blocks) and metrics["rejected"] == 0
    assert rows[1]["text"] == blocks[1].strip("\n")


def test_wiki_one_article_per_line(tmp_path):
    lines = [line for line in (SHARED_DATA / "human/wiki-sample.txt").read_text().splitlines() if line.strip()]
    metrics, rows = run(tmp_path, SHARED_DATA / "human/wiki-sample.txt", "knowledge", split="line")
    assert metrics["kept"] == len(lines) == 30 and rows[0]["text"] == lines[0]


def test_c4_jsonl_text(tmp_path):
    upstream = [json.loads(line) for line in (SHARED_DATA / "human/c4-sample.jsonl").read_text().splitlines()]
    metrics, rows = run(tmp_path, SHARED_DATA / "human/c4-sample.jsonl", "web")
    assert metrics["kept"] == len(upstream) == 300
    assert [r["text"] for r in rows] == [u["text"] for u in upstream]
    assert all(r["category"] == "web" and r["messages"] is None for r in rows)


def test_self_instruct_seed_tasks_one_record_per_instance(tmp_path):
    upstream = [json.loads(line) for line in (SHARED_DATA / "human/self-instruct-seed-tasks.jsonl").read_text().splitlines()]
    metrics, rows = run(tmp_path, SHARED_DATA / "human/self-instruct-seed-tasks.jsonl", "instruction")
    assert metrics["read"] == sum(len(u["instances"]) for u in upstream)
    assert metrics["kept"] + metrics["rejected_by_reason"].get("empty_text", 0) == metrics["read"]
    meta = json.loads(rows[0]["meta"])
    assert meta["format"] == "self_instruct" and meta["name"] == upstream[0]["name"]
    assert rows[0]["messages"][1]["content"] == upstream[0]["instances"][0]["output"]


def test_every_data_file_is_covered():
    """The tests above name every data file there is; a new one must get a test."""
    files = {p.name for folder in ("synthetic", "human") for p in (SHARED_DATA / folder).iterdir() if "LICENSE" not in p.name}
    assert files == {"gpteacher-codegen.json", "gpteacher-toolformer.json", "tinystories-val.txt", "tinyshakespeare.txt",
                     "wiki-sample.txt", "c4-sample.jsonl", "self-instruct-seed-tasks.jsonl"}


@pytest.mark.parametrize("fmt, row, expected", [
    ("sharegpt", {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
     [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
    ("messages", {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
    ("prompt_completion", {"prompt": "2+2=", "completion": "4"}, [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]),
    ("alpaca", {"instruction": "Add.", "input": "2 and 2", "output": "4"}, [{"role": "user", "content": "Add.\n\n2 and 2"}, {"role": "assistant", "content": "4"}]),
])
def test_formats_are_detected_in_jsonl_and_parquet(tmp_path, fmt, row, expected):
    import pyarrow as pa

    (tmp_path / "in.jsonl").write_text(json.dumps(row) + "\n")
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "in.parquet")
    for name in ("in.jsonl", "in.parquet"):
        _, rows = run(tmp_path / name.replace(".", "_"), tmp_path / name, "instruction")
        assert rows[0]["messages"] == expected and json.loads(rows[0]["meta"])["format"] == fmt
