"""Input that used to crash a stage or destroy its previous outputs (issue 17): bad
bytes anywhere in a record are a counted reject naming the field; a file the loader
cannot use fails with one line naming it; outputs, rejects and metrics are replaced
together or not at all, even when the stage is killed mid-write."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, stage
from synthtrain.params import StageError, parse_params
from synthtrain.records import RecordWriter, make_record, open_parquet, output_transaction, write_metrics
from synthtrain.sources.download import download

OUTPUTS = ("data/raw/mine.parquet", "data/rejects/download-mine.parquet", "metrics/download/mine.json")


def source(path: str, **extra) -> dict:
    return {"mine": {"kind": "local", "path": path, "category": "web", "max_samples": 1_000_000, **extra}}


def write_lines(path: Path, *lines: bytes) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def good(n: int = 3) -> list[bytes]:
    return [json.dumps({"text": f"a good document number {i}"}).encode() for i in range(n)]


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def rejects(workdir: Path) -> dict[str, tuple[str, str]]:
    return {r["location"]: (r["reason"], r["detail"]) for r in pq.read_table(workdir / "data/rejects/download-mine.parquet").to_pylist()}


def counted(workdir: Path) -> dict:
    metrics = json.loads((workdir / "metrics/download/mine.json").read_text())
    assert metrics["read"] == metrics["kept"] + metrics["rejected"]
    assert pq.read_table(workdir / "data/raw/mine.parquet").num_rows == metrics["kept"]
    return metrics


def snapshot(workdir: Path) -> dict[str, bytes]:
    return {name: (workdir / name).read_bytes() for name in OUTPUTS}


def temporaries(workdir: Path) -> list[Path]:
    return sorted(p for p in workdir.rglob("*.tmp-*"))


# --- every value that goes to Parquet is checked --------------------------------------------
def test_invalid_utf8_in_meta_is_a_counted_reject_naming_the_field(tmp_path, write_params):
    write_lines(tmp_path / "in.jsonl", *good(), b'{"text": "fine text", "source_url": "http://example.com/\xff\xfe"}')
    write_params(source("in.jsonl"))
    stage(tmp_path, "stages.download", "mine")
    assert counted(tmp_path)["rejected_by_reason"] == {"invalid_utf8": 1}
    reason, detail = rejects(tmp_path)["in.jsonl:4"]
    assert reason == "invalid_utf8" and detail.startswith("meta.source_url is not valid UTF-8")


def test_a_lone_surrogate_escape_is_a_counted_reject_naming_the_field(tmp_path, write_params):
    write_lines(tmp_path / "in.jsonl", *good(), b'{"text": "fine text", "tags": ["a", {"lang": "\\ud800"}]}', b'{"text": "Hi \\udcff"}')
    write_params(source("in.jsonl"))
    stage(tmp_path, "stages.download", "mine")
    assert counted(tmp_path)["rejected_by_reason"] == {"invalid_utf8": 2}
    found = rejects(tmp_path)
    assert found["in.jsonl:4"][1].startswith("meta.tags[1].lang is not valid UTF-8")
    assert found["in.jsonl:5"][1].startswith("text is not valid UTF-8")
    write_lines(tmp_path / "chat.jsonl", b'{"instruction": "Say hi.", "output": "Hi"}', b'{"instruction": "Say it.", "output": "Hi \\udcff"}')
    write_params(source("chat.jsonl"))
    stage(tmp_path, "stages.download", "mine")
    assert rejects(tmp_path)["chat.jsonl:2"][1].startswith("messages[1].content is not valid UTF-8")


# --- one line for a file the loader cannot use ---------------------------------------------
@pytest.mark.parametrize("content, reason", [(b"", "Parquet file size is 0 bytes"), (b"not parquet at all", "Parquet magic bytes not found")])
def test_an_empty_or_garbage_parquet_fails_naming_the_file(tmp_path, write_params, content, reason):
    (tmp_path / "in.parquet").write_bytes(content)
    write_params(source("in.parquet"))
    assert f"in.parquet: not a readable Parquet file ({reason}" in one_line_error(stage(tmp_path, "stages.download", "mine", check=False))
    # a downstream stage run directly on a damaged output (a killed download of old) names it too
    (tmp_path / "data/raw").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data/raw/mine.parquet").write_bytes(content)
    assert f"data/raw/mine.parquet: not a readable Parquet file ({reason}" in one_line_error(stage(tmp_path, "stages.dedup", check=False))


def test_a_read_only_output_directory_fails_in_one_line_and_keeps_the_outputs(tmp_path, write_params):
    write_lines(tmp_path / "in.jsonl", *good())
    write_params(source("in.jsonl"))
    stage(tmp_path, "stages.download", "mine")
    before = snapshot(tmp_path)
    raw = tmp_path / "data/raw"
    raw.chmod(0o555)
    # root ignores the mode; the immutable attribute (chattr +i) stops root too
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(raw)], capture_output=True).returncode == 0
    try:
        try:
            (raw / "probe").touch()
        except PermissionError:
            pass
        else:
            (raw / "probe").unlink()
            pytest.skip("cannot make a directory read-only here")
        write_lines(tmp_path / "in.jsonl", *good(5))
        error = one_line_error(stage(tmp_path, "stages.download", "mine", check=False))
        assert "data/raw/mine.parquet: cannot write it in" in error and ("Permission denied" in error or "not permitted" in error), error
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(raw)], check=True)
        raw.chmod(0o755)
    assert snapshot(tmp_path) == before and not temporaries(tmp_path)


def test_a_line_nested_100000_deep_is_a_counted_reject(tmp_path, write_params):
    write_lines(tmp_path / "in.jsonl", *good(), b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    write_params(source("in.jsonl"))
    stage(tmp_path, "stages.download", "mine")
    assert counted(tmp_path)["rejected_by_reason"] == {"malformed_json": 1}
    assert rejects(tmp_path)["in.jsonl:4"] == ("malformed_json", "cannot read this JSON: nested too deep")
    # in a JSON array the whole file is one value: one line naming it
    (tmp_path / "in.json").write_text("[" + "[" * 100_000 + "]" * 100_000 + "]")
    write_params(source("in.json"))
    assert "in.json: cannot read the JSON array (nested too deep)" in one_line_error(stage(tmp_path, "stages.download", "mine", check=False))


def test_an_integer_of_5000_digits_is_a_counted_reject(tmp_path, write_params):
    write_lines(tmp_path / "in.jsonl", *good(), b'{"text": "fine", "n": ' + b"7" * 5000 + b"}")
    write_params(source("in.jsonl"))
    stage(tmp_path, "stages.download", "mine")
    assert counted(tmp_path)["rejected_by_reason"] == {"malformed_json": 1}
    reason, detail = rejects(tmp_path)["in.jsonl:4"]
    assert reason == "malformed_json" and "Exceeds the limit (4300 digits)" in detail


# --- clear messages ----------------------------------------------------------------------
def test_a_directory_as_the_path_says_it_is_a_directory(tmp_path, write_params):
    (tmp_path / "exports").mkdir()
    write_params(source("exports"))
    assert "exports: is a directory; give a file or a glob of files (e.g. exports/*.jsonl)" in one_line_error(
        stage(tmp_path, "stages.download", "mine", check=False))


def test_a_pretty_printed_json_object_says_what_a_json_file_must_hold(tmp_path, write_params):
    (tmp_path / "one.json").write_text(json.dumps({"instruction": "Say hi.", "output": "Hi!"}, indent=2))
    write_params(source("one.json"))
    error = one_line_error(stage(tmp_path, "stages.download", "mine", check=False))
    assert "one.json: one JSON object over several lines; a .json file must hold a JSON array of records" in error
    assert "or JSON Lines" in error


def test_files_starting_with_a_byte_order_mark_are_read(tmp_path, write_params):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "arr.json").write_bytes(bom + json.dumps([{"text": "first"}, {"text": "second"}]).encode())
    write_lines(tmp_path / "lines.jsonl", bom + b'{"text": "first"}', b'{"text": "second"}')
    (tmp_path / "doc.txt").write_bytes(bom + b"first\n\nsecond\n")
    for name in ("arr.json", "lines.jsonl", "doc.txt"):
        write_params(source(name))
        stage(tmp_path, "stages.download", "mine")
        assert counted(tmp_path)["rejected"] == 0
        assert [r["text"] for r in pq.read_table(tmp_path / "data/raw/mine.parquet").to_pylist()] == ["first", "second"], name


# --- atomic outputs ----------------------------------------------------------------------
def test_a_failed_stage_leaves_the_previous_outputs_and_no_temporaries(tmp_path, write_params):
    write_lines(tmp_path / "a.jsonl", *good(10), b"{broken")
    write_params(source("a.jsonl"))
    stage(tmp_path, "stages.download", "mine")
    before = snapshot(tmp_path)
    # the first file is read (records and a reject written) before the second fails the stage
    write_lines(tmp_path / "a.jsonl", *good(20), b"{broken", b"{broken")
    write_lines(tmp_path / "b.jsonl", b'{"question": "q", "answer": "a"}')
    write_params(source("[ab].jsonl"))
    assert "b.jsonl:1: cannot tell the format" in one_line_error(stage(tmp_path, "stages.download", "mine", check=False))
    assert snapshot(tmp_path) == before and not temporaries(tmp_path)
    # called as a library (no transaction), the writers discard their files on the error too
    with pytest.raises(StageError, match="cannot tell the format"):
        download(parse_params({"sources": source(str(tmp_path / "[ab].jsonl"))}), "mine", tmp_path)
    assert snapshot(tmp_path) == before and not temporaries(tmp_path)


def test_a_transaction_renames_every_output_at_its_end_or_none(tmp_path):
    records, metrics = tmp_path / "out/r.parquet", tmp_path / "out/m.json"
    with output_transaction():
        with RecordWriter(records) as writer:
            writer.write(make_record("s", "web", text="new"))
        write_metrics(metrics, {"kept": 1})
        assert not records.exists() and not metrics.exists()  # held back until the stage succeeds
        assert open_parquet(records).read().num_rows == 1  # but the stage reads what it wrote
    assert pq.read_table(records).column("text").to_pylist() == ["new"] and json.loads(metrics.read_text()) == {"kept": 1}
    with pytest.raises(RuntimeError), output_transaction():
        with RecordWriter(records) as writer:
            writer.write(make_record("s", "web", text="newer"))
        write_metrics(metrics, {"kept": 2})
        raise RuntimeError("the stage fails after writing")
    assert pq.read_table(records).column("text").to_pylist() == ["new"] and json.loads(metrics.read_text()) == {"kept": 1}
    assert not temporaries(tmp_path)


def test_a_download_killed_mid_write_leaves_the_previous_output_intact(tmp_path, write_params):
    write_lines(tmp_path / "small.jsonl", *good(10))
    write_params(source("small.jsonl"))
    stage(tmp_path, "stages.download", "mine")
    before = snapshot(tmp_path)
    # about 3 s of work: the first 10,000-row group is written long before the end
    with open(tmp_path / "big.jsonl", "w") as out:
        out.writelines(json.dumps({"text": f"document number {i} about rivers and stones"}) + "\n" for i in range(200_000))
    write_params(source("big.jsonl"))
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    process = subprocess.Popen([sys.executable, "-m", "stages.download", "mine"], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temporary, final = tmp_path / f"data/raw/mine.parquet.tmp-{process.pid}", tmp_path / "data/raw/mine.parquet"

    def writing() -> bool:  # more than the 4-byte header on disk: a row group is written (or the output rewritten in place)
        return (temporary.exists() and temporary.stat().st_size > 4) or final.stat().st_mtime_ns != modified

    modified, deadline = final.stat().st_mtime_ns, time.monotonic() + 60
    while not writing() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the download finished before it could be killed"
    assert snapshot(tmp_path) == before
    assert temporary.stat().st_size > 4
    assert pq.read_table(tmp_path / "data/raw/mine.parquet").num_rows == 10
    # the next run replaces the outputs and removes what the killed one left
    write_params(source("small.jsonl"))
    stage(tmp_path, "stages.download", "mine")
    assert snapshot(tmp_path) == before and not temporaries(tmp_path)
