"""Bad input: per-record problems are rejected by reason and kept for audit; file-level
problems fail the stage with one line naming the file."""

import json

import pyarrow.parquet as pq

from conftest import stage


def write_corrupted(path):
    good = {"instruction": "Say hi.", "input": "", "output": "Hi!"}
    lines = [
        json.dumps(good).encode(),
        b'{"instruction": "broken", "output": ',                                       # malformed JSON
        json.dumps({"input": "x", "output": "y"}).encode(),                             # missing field
        json.dumps({"instruction": ["a list"], "output": "y"}).encode(),                # wrong type
        json.dumps({"instruction": "Empty answer", "output": "   "}).encode(),          # empty text
        b'{"instruction": "bad bytes \xff\xfe here", "output": "ok"}',                  # invalid UTF-8
        json.dumps({"instruction": "Huge", "output": "x" * 10_000_000}).encode(),      # a 10 MB record
        json.dumps({"instruction": "Say bye.", "input": "", "output": "Bye!"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_corrupted_file_read_equals_kept_plus_rejected(tmp_path, write_params):
    write_corrupted(tmp_path / "bad.jsonl")
    write_params({"mine": {"kind": "local", "path": "bad.jsonl", "category": "instruction", "max_samples": 100}},
                 download={"max_chars": 1_000_000})
    result = stage(tmp_path, "stages.download", "mine")
    metrics = json.loads((tmp_path / "metrics/download/mine.json").read_text())
    assert metrics["read"] == 8 and metrics["kept"] == 2 and metrics["rejected"] == 6
    assert metrics["read"] == metrics["kept"] + metrics["rejected"]
    assert metrics["rejected_by_reason"] == {"malformed_json": 1, "missing_field": 1, "bad_type": 1, "empty_text": 1,
                                             "invalid_utf8": 1, "too_long": 1}
    rejects = pq.read_table(tmp_path / "data/rejects/download-mine.parquet").to_pylist()
    assert {r["location"]: r["reason"] for r in rejects} == {
        "bad.jsonl:2": "malformed_json", "bad.jsonl:3": "missing_field", "bad.jsonl:4": "bad_type",
        "bad.jsonl:5": "empty_text", "bad.jsonl:6": "invalid_utf8", "bad.jsonl:7": "too_long"}
    assert "field 'instruction' is missing" in {r["reason"]: r["detail"] for r in rejects}["missing_field"]
    assert len({r["reason"]: r["raw"] for r in rejects}["too_long"]) > 10_000_000
    assert "read 8, kept 2, rejected 6" in result.stderr


def test_a_10mb_record_is_kept_when_max_chars_allows(tmp_path, write_params):
    write_corrupted(tmp_path / "bad.jsonl")
    write_params({"mine": {"kind": "local", "path": "bad.jsonl", "category": "instruction", "max_samples": 100}},
                 download={"max_chars": 20_000_000})
    stage(tmp_path, "stages.download", "mine")
    rows = pq.read_table(tmp_path / "data/raw/mine.parquet").to_pylist()
    assert max(len(r["messages"][1]["content"]) for r in rows) == 10_000_000


def one_line_failure(tmp_path, sources, expected):
    (tmp_path / "params.yaml").write_text(json.dumps({"sources": sources}))
    result = stage(tmp_path, "stages.download", next(iter(sources)), check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr


def test_missing_path_fails_naming_it(tmp_path):
    one_line_failure(tmp_path, {"mine": {"kind": "local", "path": "nope/*.jsonl", "category": "web", "max_samples": 1}}, "nope/*.jsonl: no such file")


def test_unknown_file_type_and_unknown_format_fail_naming_the_file(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    one_line_failure(tmp_path, {"mine": {"kind": "local", "path": "data.csv", "category": "web", "max_samples": 1}},
                     "data.csv: unknown file type '.csv' (expected one of .jsonl, .ndjson, .json, .parquet, .txt, .md; "
                     "format: text reads any file as plain text)")
    (tmp_path / "odd.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    one_line_failure(tmp_path, {"mine": {"kind": "local", "path": "odd.jsonl", "category": "web", "max_samples": 1}},
                     "odd.jsonl:1: cannot tell the format from the fields (answer, question); set format: in the source "
                     "(supported formats: alpaca, sharegpt, messages, prompt_completion, self_instruct, text, preference, hh_rlhf")


def test_a_prompts_file_fails_saying_where_it_belongs(tmp_path):
    (tmp_path / "question.jsonl").write_text(json.dumps({"question_id": 81, "category": "writing", "turns": ["Write a poem."]}) + "\n")
    one_line_failure(tmp_path, {"mine": {"kind": "local", "path": "question.jsonl", "category": "instruction", "max_samples": 1}},
                     "question.jsonl: a file of prompts without answers (format turns, as MT-bench's question.jsonl), which makes "
                     "no training record; use it as the seed_file of a kind: generate source")


def test_bad_preference_pairs_are_rejected_naming_the_side(tmp_path, write_params):
    def row(rejected):
        return json.dumps({"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
                           "rejected": rejected}).encode()

    lines = [row([{"role": "assistant", "content": "Go away."}]),
             row([{"role": "assistant", "content": "  "}]),                                       # empty reply
             row([{"role": "user", "content": "Hello?"}]),                                        # not the assistant's
             row([]),                                                                             # no reply
             row("Go away."),                                                                     # a string in a conversational pair
             row([{"role": "assistant", "content": "bad BYTES here"}]).replace(b"BYTES", b"\xff\xfe")]  # invalid UTF-8
    (tmp_path / "pairs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    write_params({"mine": {"kind": "local", "path": "pairs.jsonl", "category": "instruction", "max_samples": 100}})
    stage(tmp_path, "stages.download", "mine")
    metrics = json.loads((tmp_path / "metrics/download/mine.json").read_text())
    assert metrics["read"] == 6 == metrics["kept"] + metrics["rejected"] and metrics["kept"] == metrics["pairs"] == 1
    rejects = pq.read_table(tmp_path / "data/rejects/download-mine.parquet").to_pylist()
    assert [(r["reason"], r["detail"]) for r in rejects] == [
        ("empty_text", "rejected[0].content is empty"),
        ("bad_role", "rejected[0].role is 'user'; a reply holds assistant turns"),
        ("missing_field", "rejected has no reply after the prompt"),
        ("bad_type", "field 'rejected' is str, expected list"),
        ("invalid_utf8", "meta.rejected[0].content is not valid UTF-8 (invalid bytes or a lone surrogate)")]


def test_zero_valid_records_fails_naming_the_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n{"text": "  "}\n')
    one_line_failure(tmp_path, {"mine": {"kind": "local", "path": "empty.jsonl", "category": "web", "max_samples": 1}}, "no valid records")


def test_broken_json_array_fails_with_line_and_column(tmp_path):
    (tmp_path / "arr.json").write_text('[\n {"text": "a"},\n {"text": }\n]\n')
    one_line_failure(tmp_path, {"mine": {"kind": "local", "path": "arr.json", "category": "web", "max_samples": 1}}, "arr.json:3:")


def test_unknown_source_and_bad_params_fail_in_one_line(tmp_path):
    one_line_failure(tmp_path, {"mine": {"kind": "local", "path": "x", "category": "webb", "max_samples": 1}}, "sources.mine.category = 'webb'")
