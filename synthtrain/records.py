"""The one record schema of synth-train (``id``, ``source``, ``category``,
``messages``, ``text``, ``meta``: docs/sources.md) and the Parquet I/O every
stage uses.

``meta`` is stored as a JSON string with sorted keys, so that sources with
different metadata share one Parquet schema and the bytes are deterministic.
Records are written and read in batches (BATCH_ROWS), so a stage's memory does
not grow with the number of records. Rejected input goes to a reject file with
its own schema (reason, location, detail, raw input), so nothing is lost
silently.
"""

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synthtrain.text import normalize

CATEGORIES = ("instruction", "knowledge", "web")
ROLES = ("system", "user", "assistant")
BATCH_ROWS = 10_000

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("messages", pa.list_(MESSAGE)),
        pa.field("text", pa.string()),
        pa.field("meta", pa.string(), nullable=False),
    ]
)
REJECT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("location", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("raw", pa.string()),
    ]
)
# The quality stage's output: the record columns unchanged, then its scores
# (null where a score does not apply: refusal, IFD and the answer check to
# documents, stop words to conversations), the combined quality in [0, 1] and
# the rule that rejected the record (null when kept). synthtrain/quality explains each.
QUALITY_SCORES = pa.schema(
    [
        pa.field("words", pa.int32()),
        pa.field("mean_word_length", pa.float32()),
        pa.field("alpha_ratio", pa.float32()),
        pa.field("symbol_ratio", pa.float32()),
        pa.field("dup_line_fraction", pa.float32()),
        pa.field("dup_ngram_fraction", pa.float32()),
        pa.field("boilerplate_fraction", pa.float32()),
        pa.field("mojibake", pa.int32()),
        pa.field("stopwords", pa.int32()),
        pa.field("unfinished", pa.bool_()),
        pa.field("answer_errors", pa.int32()),
        pa.field("response_ratio", pa.float32()),
        pa.field("refusal", pa.float32()),
        pa.field("classifier", pa.float32()),
        pa.field("perplexity", pa.float32()),
        pa.field("end_surprisal", pa.float32()),
        pa.field("ifd", pa.float32()),
    ]
)
# What dedup removed: the record, why (exact_duplicate, near_duplicate,
# decontaminated), its cluster and the id of the record kept in its place (null
# for decontamination), and the benchmarks it overlaps (null for duplicates).
DEDUP_REJECT_SCHEMA = pa.schema(
    list(SCHEMA)
    + [pa.field("reason", pa.string(), nullable=False), pa.field("cluster_id", pa.int64()),
       pa.field("duplicate_of", pa.string()), pa.field("detail", pa.string())]
)
# Records of the real files the quality stage scores for comparison (quality.files).
FILE_SCORES_SCHEMA = pa.schema([pa.field("file", pa.string(), nullable=False), pa.field("category", pa.string(), nullable=False)]
                               + list(QUALITY_SCORES))
# What tokenize left out: the record, why (empty, no_assistant_turn), and where it was read.
TOKENIZE_REJECT_SCHEMA = pa.schema(
    list(SCHEMA)
    + [pa.field("reason", pa.string(), nullable=False), pa.field("file", pa.string(), nullable=False),
       pa.field("row", pa.int64(), nullable=False)]
)
SCORED_SCHEMA = pa.schema(
    list(SCHEMA) + list(QUALITY_SCORES) + [pa.field("quality", pa.float32(), nullable=False), pa.field("reject_reason", pa.string())]
)


class InvalidRecord(ValueError):
    """A record that breaks the schema; ``reason`` is the short name counted in
    metrics, the message says which field and why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def content_of(messages: list[dict] | None, text: str | None) -> str:
    """The text a record's id and length are computed from."""
    if messages is not None:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return text


def record_id(messages: list[dict] | None = None, text: str | None = None) -> str:
    return hashlib.blake2b(normalize(content_of(messages, text)).encode(), digest_size=16).hexdigest()


def dump_meta(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def make_record(
    source: str,
    category: str,
    *,
    messages: list[dict] | None = None,
    text: str | None = None,
    meta: dict | None = None,
    max_chars: int | None = None,
) -> dict:
    """Build a schema-conforming record, or raise InvalidRecord saying why not."""
    if category not in CATEGORIES:
        raise InvalidRecord("bad_category", f"category {category!r} is not one of {', '.join(CATEGORIES)}")
    if (messages is None) == (text is None):
        raise InvalidRecord("bad_shape", "a record has either messages or text, not both or neither")
    if messages is not None:
        if not messages:
            raise InvalidRecord("empty_messages", "messages is an empty list")
        for i, message in enumerate(messages):
            if message.get("role") not in ROLES:
                raise InvalidRecord("bad_role", f"messages[{i}].role is {message.get('role')!r}, not one of {', '.join(ROLES)}")
            if not isinstance(message.get("content"), str):
                raise InvalidRecord("bad_type", f"messages[{i}].content is {type(message.get('content')).__name__}, not a string")
            if not message["content"].strip():
                raise InvalidRecord("empty_text", f"messages[{i}].content is empty")
        if not any(m["role"] == "assistant" for m in messages):
            raise InvalidRecord("no_assistant_turn", "the conversation has no assistant turn")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        if not isinstance(text, str):
            raise InvalidRecord("bad_type", f"text is {type(text).__name__}, not a string")
        if not text.strip():
            raise InvalidRecord("empty_text", "text is empty")
    content = content_of(messages, text)
    if has_invalid_utf8(content):
        raise InvalidRecord("invalid_utf8", "the content is not valid UTF-8")
    if max_chars is not None and len(content) > max_chars:
        raise InvalidRecord("too_long", f"{len(content):,} characters, over download.max_chars={max_chars:,}")
    return {
        "id": record_id(messages, text),
        "source": source,
        "category": category,
        "messages": messages,
        "text": text,
        "meta": dump_meta(meta or {}),
    }


def meta_field(meta: pa.Array | pa.ChunkedArray, key: str) -> pa.Array:
    """A top-level string field of every record's meta, null where absent, read
    from the JSON text without parsing it (meta is compact with sorted keys)."""
    return pc.struct_field(pc.extract_regex(meta, f'"{key}":"(?P<value>[^"\\\\]*)"'), "value")


def has_invalid_utf8(text: str) -> bool:
    """True for text decoded with errors='surrogateescape' from bytes that were
    not UTF-8: the bad bytes became lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class ParquetSink:
    """Appends rows to one Parquet file in fixed-size row groups, so output
    bytes depend only on the rows, not on how callers batched them. The file is
    written even when no row arrives, so DVC always finds the declared output."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self._rows: list[dict] = []
        self._writer = pq.ParquetWriter(self.path, schema, compression="zstd")
        self.count = 0

    def write(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= BATCH_ROWS:
            self._flush()

    def write_table(self, table: pa.Table) -> None:
        """Fast path for producers that build columns themselves."""
        self._flush()
        self._writer.write_table(table.cast(self.schema), row_group_size=BATCH_ROWS)
        self.count += table.num_rows

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema), row_group_size=BATCH_ROWS)
            self.count += len(self._rows)
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RecordWriter(ParquetSink):
    def __init__(self, path: str | os.PathLike):
        super().__init__(path, SCHEMA)


class ScoredWriter(ParquetSink):
    """Records with the quality stage's scores (SCORED_SCHEMA)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, SCORED_SCHEMA)


class RejectWriter(ParquetSink):
    """Keeps every rejected input for audit and counts rejections by reason."""

    def __init__(self, path: str | os.PathLike, source: str):
        super().__init__(path, REJECT_SCHEMA)
        self.source = source
        self.by_reason: Counter = Counter()

    def reject(self, reason: str, location: str, detail: str, raw: object) -> None:
        """``raw`` is the input as read: a line of text, or a parsed row (stored as JSON)."""
        self.by_reason[reason] += 1
        if raw is not None and not isinstance(raw, str):
            raw = json.dumps(raw, ensure_ascii=False, default=str)
        raw = None if raw is None else raw.encode("utf-8", "backslashreplace").decode("utf-8")
        self.write({"source": self.source, "reason": reason, "location": location, "detail": detail, "raw": raw})


def read_batches(path: str | os.PathLike, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[list[dict]]:
    """Yield the records of a Parquet file as lists of dicts, one batch at a time."""
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
        yield batch.to_pylist()


def write_metrics(path: str | os.PathLike, metrics: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
