"""Fuzzing ``kind: local`` (issue 17): random JSON values, random bytes and random
nesting in JSON Lines, JSON arrays and Parquet files, through the download. Every run
either fails with a StageError of one line naming the file, or finishes with
read = kept + rejected and outputs that read back; any other exception is a bug.

The seed is fixed (derandomize), so CI runs the same cases every time; FUZZ_EXAMPLES
sets the number of cases per test (``make fuzz`` runs many more).
"""

import io
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from synthtrain.params import StageError, parse_params
from synthtrain.records import output_transaction
from synthtrain.sources.download import download

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))  # per test; about 20 s for the three on 2 cores
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
FORMATS = ("auto",) * 6 + ("text",) * 2 + ("alpaca", "sharegpt", "messages", "prompt_completion", "self_instruct", "preference", "hh_rlhf",
                                           "sharegpt_preference", "turns")
BOM = b"\xef\xbb\xbf"

# Text with what breaks loaders: lone surrogates (a "\ud800" escape), NUL, line
# separators, a byte-order mark, astral characters.
ODD = st.sampled_from(["\ud800", "\udcff", "\x00", "\n", "\r", "\u2028", "\x85", "\ufeff", "é", "\U0001f600", '"', "\\"])
TEXT = st.lists(st.characters(exclude_categories=()) | ODD, max_size=12).map("".join)  # st.text would seldom draw from ODD
KEYS = st.sampled_from(["text", "instruction", "input", "output", "response", "messages", "conversations", "prompt", "completion",
                        "instances", "role", "content", "from", "value", "meta", "source_url", "chosen", "rejected", "turns"]) | TEXT
SCALAR = st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats() | TEXT
JSON = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)
ROLE = st.sampled_from(["system", "user", "assistant", "human", "gpt", "bot", ""]) | JSON
MESSAGES = st.lists(st.fixed_dictionaries({"role": ROLE, "content": TEXT | JSON}), max_size=3)
SHAREGPT_TURN = st.fixed_dictionaries({"from": ROLE, "value": TEXT | JSON})
HH_TRANSCRIPT = st.lists(st.tuples(st.sampled_from(["\n\nHuman: ", "\n\nAssistant: ", "\n\nAssistant:", "Human:"]), TEXT),
                         max_size=3).map(lambda turns: "".join(speaker + text for speaker, text in turns))
# Rows shaped like the formats, with random values where the parsers look, and rows of anything.
ROW = st.one_of(
    st.dictionaries(KEYS, JSON, max_size=5),
    st.fixed_dictionaries({"text": TEXT | JSON}, optional={"source_url": TEXT, "meta": JSON}),
    st.fixed_dictionaries({"instruction": TEXT, "output": TEXT | JSON}, optional={"input": TEXT | JSON, "extra": JSON}),
    st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries({"role": ROLE, "content": TEXT | JSON}), max_size=3) | JSON}),
    st.fixed_dictionaries({"conversations": st.lists(st.fixed_dictionaries({"from": ROLE, "value": TEXT | JSON}), max_size=3) | JSON}),
    st.fixed_dictionaries({"instruction": TEXT, "instances": st.lists(st.dictionaries(KEYS, JSON, max_size=3), max_size=3) | JSON}),
    st.fixed_dictionaries({"chosen": MESSAGES | TEXT | JSON, "rejected": MESSAGES | TEXT | JSON}, optional={"prompt": MESSAGES | TEXT | JSON}),
    st.fixed_dictionaries({"chosen": HH_TRANSCRIPT, "rejected": HH_TRANSCRIPT}),
    st.fixed_dictionaries({"conversations": st.lists(SHAREGPT_TURN, max_size=3) | JSON, "chosen": SHAREGPT_TURN | JSON,
                           "rejected": SHAREGPT_TURN | JSON}),
    st.fixed_dictionaries({"turns": st.lists(TEXT | JSON, max_size=3) | JSON}, optional={"question_id": JSON}),
    JSON,
)
# Rows that pass when their extra fields (meta) are sound: with random extras, they make runs that finish.
GOOD = st.builds(lambda text, extra: {**extra, "text": text}, st.text(min_size=1, max_size=12).filter(str.strip),
                 st.dictionaries(KEYS, JSON, max_size=3))


def encode(value: object, ascii_only: bool, indent: int | None = None) -> bytes:
    """JSON bytes; without ascii_only a lone surrogate becomes bytes that are not UTF-8."""
    return json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode("utf-8", "surrogatepass")


def nested(depth: int, kind: str) -> bytes:
    return (b"[" * depth + b"]" * depth) if kind == "list" else (b'{"a":' * depth + b"1" + b"}" * depth)


DEEP = st.builds(nested, st.sampled_from([5, 200, 900, 990, 1_000, 3_000, 100_000]) | st.integers(0, 2_000), st.sampled_from(["list", "dict"]))
HUGE_INT = st.integers(4_000, 6_000).map(lambda digits: b"9" * digits)
# One line of a JSONL file: a row, random bytes, a row with deep nesting or a huge number inside, or bare nesting.
GOOD_LINE = st.builds(encode, GOOD, st.booleans())
LINE = st.one_of(
    GOOD_LINE,
    st.builds(encode, ROW, st.booleans()),
    st.binary(max_size=40),
    st.builds(lambda text, inner: b'{"text": ' + encode(text, True) + b', "extra": ' + inner + b"}", TEXT, DEEP | HUGE_INT),
    DEEP,
)


def check(path: Path, fmt: str, root: Path) -> None:
    """Run the download of ``path`` in a transaction, as a stage does, and check the outcome."""
    params = parse_params({"sources": {"fuzz": {"kind": "local", "path": str(path), "category": "web", "max_samples": 1_000_000,
                                                "format": fmt}}})
    outputs = [root / "data/raw/fuzz.parquet", root / "data/rejects/download-fuzz.parquet", root / "metrics/download/fuzz.json"]
    try:
        with output_transaction():
            metrics = download(params, "fuzz", root)
    except StageError as exc:
        message = str(exc)
        event(f"failed: {message.split(': ', 1)[-1][:24]}")  # --hypothesis-show-statistics: what the cases reached
        assert "\n" not in message and "\r" not in message, f"more than one line: {message!r}"
        assert path.name in message, f"the message does not name the file: {message!r}"
        assert not any(p.exists() for p in outputs), "a failed run left outputs"
    else:
        event(f"finished: rejected {', '.join(sorted(metrics['rejected_by_reason'])) or 'none'}")
        assert metrics["read"] == metrics["kept"] + metrics["rejected"], metrics
        assert pq.read_table(outputs[0]).num_rows == metrics["kept"] >= 1
        assert pq.read_table(outputs[1]).num_rows == metrics["rejected"]
        assert json.loads(outputs[2].read_text()) == metrics
    assert not list(root.rglob("*.tmp-*")), "temporaries left behind"


def run(name: str, content: bytes, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        check(path, fmt, Path(tmp) / "out")


@FUZZ
@given(lines=st.lists(GOOD_LINE | GOOD_LINE | LINE, min_size=1, max_size=12), newline=st.sampled_from([b"\n", b"\r\n"]), bom=st.booleans(), fmt=st.sampled_from(FORMATS))
def test_jsonl(lines, newline, bom, fmt):
    run("in.jsonl", (BOM if bom else b"") + newline.join(lines) + newline, fmt)


# A .json file: an array of rows (whole, or cut short), one pretty-printed row, JSON Lines, bytes, nesting, a huge number.
JSON_FILE = st.one_of(
    st.builds(encode, st.lists(GOOD | GOOD | ROW, max_size=8), st.booleans()),
    st.builds(lambda rows, cut: encode(rows, True)[:cut], st.lists(ROW, min_size=1, max_size=4), st.integers(0, 200)),
    st.builds(encode, ROW, st.booleans(), st.sampled_from([None, 2])),
    st.lists(LINE, max_size=5).map(b"\n".join),
    st.binary(max_size=60),
    st.builds(lambda inner: b"[" + inner + b"]", DEEP | HUGE_INT),
)


@FUZZ
@given(content=JSON_FILE, bom=st.booleans(), fmt=st.sampled_from(FORMATS))
def test_json_array(content, bom, fmt):
    run("in.json", (BOM if bom else b"") + content, fmt)


def parquet_bytes(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def rows_parquet(rows: list) -> bytes:
    """The rows as Parquet types them; rows it cannot type or write (mixed types,
    surrogates, an empty object) as JSON text."""
    try:
        return parquet_bytes(pa.Table.from_pylist([r if isinstance(r, dict) else {"value": r} for r in rows]))
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        return parquet_bytes(pa.table({"text": [json.dumps(r) for r in rows]}))


def invalid_utf8_table(texts: list[bytes]) -> pa.Table:
    """A string column holding bytes that are not UTF-8, as other writers produce."""
    binary = pa.array(texts, pa.binary())
    column = pa.Array.from_buffers(pa.string(), len(binary), binary.buffers())
    return pa.table({"text": column, "source_url": column})


# Rows of one schema, as Parquet files have: text or messages, and extra columns for meta.
PLAIN = st.text(max_size=12)
TYPED_ROW = st.fixed_dictionaries(
    {"text": PLAIN | st.none(), "messages": st.none() | st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "bot"]), "content": PLAIN}), max_size=3),
     "source_url": PLAIN | st.none(), "tags": st.none() | st.lists(PLAIN, max_size=3), "score": st.none() | st.floats(),
     "nested": st.fixed_dictionaries({"n": st.none() | st.integers(-(2**63), 2**63 - 1)})})
# A .parquet file: rows of one schema, rows of any shape, invalid UTF-8 in a string column, or a valid file damaged (cut, overwritten).
PARQUET_FILE = st.one_of(
    st.lists(TYPED_ROW, max_size=6).map(rows_parquet),
    st.lists(ROW, max_size=6).map(rows_parquet),
    st.lists(st.binary(max_size=12), min_size=1, max_size=4).map(lambda texts: parquet_bytes(invalid_utf8_table(texts))),
    st.builds(lambda rows, cut: rows_parquet(rows)[:cut], st.lists(ROW, min_size=1, max_size=4), st.integers(0, 400)),
    st.builds(lambda rows, at, junk: (lambda data: data[:at] + junk + data[at + len(junk):])(rows_parquet(rows)),
              st.lists(ROW, min_size=1, max_size=4), st.integers(0, 400), st.binary(min_size=1, max_size=8)),
    st.binary(max_size=60),
)


@FUZZ
@given(content=PARQUET_FILE, fmt=st.sampled_from(FORMATS))
def test_parquet(content, fmt):
    run("in.parquet", content, fmt)
