"""The one record schema of synth-train (``id``, ``source``, ``category``,
``messages``, ``text``, ``meta``: docs/sources.md) and the Parquet I/O every
stage uses.

``meta`` is stored as a JSON string with sorted keys, so that sources with
different metadata share one Parquet schema and the bytes are deterministic.
Records are written and read in batches (BATCH_ROWS), so a stage's memory does
not grow with the number of records. Rejected input goes to a reject file with
its own schema (reason, location, detail, raw input), so nothing is lost
silently.

Every output file is written under a temporary name next to its final one and
renamed into place only when complete (``ParquetSink``, ``write_metrics``,
``output_file``, ``write_output_text``); an output directory (token shards, a
saved model) is written whole into a temporary directory and swapped for the
old one (``output_directory``). Inside ``output_transaction()`` (which
``synthtrain.cli.run_stage`` enters around each stage) all of a stage's outputs
are renamed together when the stage succeeds, so a failed or killed stage leaves
the previous outputs as they were.
"""

import contextlib
import glob
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synthtrain.text import normalize

CATEGORIES = ("instruction", "knowledge", "web")
ROLES = ("system", "user", "assistant")
BATCH_ROWS = 10_000
# The kept records of each source with pool: false (written by dedup, read by mix with mix.sources)
OUTSIDE_POOL = Path("data/dedup/sources")

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
        pa.field("lm_perplexity", pa.float32()),  # the LM scorer's (quality.lm_scorer); null where it did not read the record
        pa.field("lm_ifd", pa.float32()),
        pa.field("lm_end_surprisal", pa.float32()),
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


def shown(value: object) -> str:
    """A value in a message: its repr when it is a scalar, else its type (a
    nested list or object may be huge, or too deep to repr)."""
    return repr(value) if isinstance(value, (str, int, float, bool, type(None))) else f"a {type(value).__name__}"


def content_of(messages: list[dict] | None, text: str | None) -> str:
    """The text a record's id and length are computed from."""
    if messages is not None:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return text


def record_id(messages: list[dict] | None = None, text: str | None = None) -> str:
    return hashlib.blake2b(normalize(content_of(messages, text)).encode(), digest_size=16).hexdigest()


def dump_meta(meta: dict) -> str:
    # default=str: a Parquet input's dates, decimals or bytes in meta become their text instead of a TypeError.
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def invalid_utf8_field(value: object, name: str) -> str | None:
    """The first field under ``value`` (called ``name``) holding text that is not
    valid UTF-8 (a key or a string, at any depth), or None. Iterative, so that a
    deeply nested value cannot exhaust the stack."""
    stack = [(name, value)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, str):
            if has_invalid_utf8(value):
                return name
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                key = str(key)
                label = f"{name}.{key}" if key.isidentifier() else f"{name}[{json.dumps(key)}]"
                if has_invalid_utf8(key):
                    return label
                stack.append((label, item))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{name}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def check_turns(messages: list[dict], name: str) -> None:
    """Raise InvalidRecord naming the first turn of ``messages`` (called ``name``)
    whose role is unknown or whose content is not a non-empty string."""
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise InvalidRecord("bad_role", f"{name}[{i}].role is {shown(message.get('role'))}, not one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise InvalidRecord("bad_type", f"{name}[{i}].content is {type(message.get('content')).__name__}, not a string")
        if not message["content"].strip():
            raise InvalidRecord("empty_text", f"{name}[{i}].content is empty")


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
        check_turns(messages, "messages")
        if not any(m["role"] == "assistant" for m in messages):
            raise InvalidRecord("no_assistant_turn", "the conversation has no assistant turn")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        if not isinstance(text, str):
            raise InvalidRecord("bad_type", f"text is {type(text).__name__}, not a string")
        if not text.strip():
            raise InvalidRecord("empty_text", "text is empty")
    content = content_of(messages, text)
    try:
        meta_json = dump_meta(meta or {})
    except (RecursionError, ValueError) as exc:  # nesting deeper than the stack allows; an integer of over 4,300 digits
        raise InvalidRecord("bad_meta", f"meta cannot be stored as JSON ({'nested too deep' if isinstance(exc, RecursionError) else exc})") from None
    # Every string goes to Parquet, which refuses text that is not UTF-8 (bytes
    # decoded with surrogateescape, a "\ud800" escape) and would fail the whole
    # batch: check all of it at once, and only on failure look for the field.
    if has_invalid_utf8(content) or has_invalid_utf8(meta_json):
        field = invalid_utf8_field({"messages": messages, "text": text, "meta": meta or {}}, "record")
        raise InvalidRecord("invalid_utf8", f"{(field or 'record').removeprefix('record.')} is not valid UTF-8 (invalid bytes or a lone surrogate)")
    if max_chars is not None and len(content) > max_chars:
        raise InvalidRecord("too_long", f"{len(content):,} characters, over download.max_chars={max_chars:,}")
    return {
        "id": record_id(messages, text),
        "source": source,
        "category": category,
        "messages": messages,
        "text": text,
        "meta": meta_json,
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


# --- atomic outputs -------------------------------------------------------------
# A file is written as "<name>.tmp-<pid>" in its final directory (so the rename
# stays on one filesystem and is atomic) and renamed when complete. Inside a
# transaction the renames wait until the stage has succeeded, so its outputs,
# rejects and metrics change together or not at all: a failed stage cannot
# leave an empty output and a partial rejects file next to the old metrics,
# and a killed one leaves at most a temporary file, never a Parquet without a
# footer under the name the next stage reads.
# A directory is written the same way, as a "<name>.tmp-<pid>" directory, and
# swapped in by two renames: the old one to "<name>.old-<pid>", the new one into
# place; then the old one is deleted. A run killed between the two renames
# leaves no "<name>" but a whole "<name>.old-<pid>": the next start of that
# output puts it back. Directories a transaction creates for its outputs are
# removed again, when empty, if it fails.

def _stage_error(message: str) -> Exception:
    from synthtrain.params import StageError  # imported here: params imports this module

    return StageError(message)


def _cannot_write(path: Path, exc: OSError) -> Exception:
    reason = os.strerror(exc.errno) if exc.errno else str(exc).splitlines()[0]
    return _stage_error(f"{path}: cannot write it in {path.parent} ({reason})")


class _Transaction:
    def __init__(self):
        self.pid = os.getpid()
        self.temporaries: list[Path] = []  # every file or directory started, deleted if the stage fails
        self.renames: dict[Path, Path] = {}  # final path -> its complete temporary, in the order finished
        self.created: list[Path] = []  # directories made to hold outputs, outermost first: removed when empty if the stage fails


_active: _Transaction | None = None


def _transaction() -> _Transaction | None:
    # A forked worker inherits the variable but not the duty to commit: its files rename at close.
    return _active if _active is not None and _active.pid == os.getpid() else None


def _remove(path: Path) -> None:
    """Delete a file, a link or a whole directory, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _publish(final: Path, temporary: Path) -> None:
    """Put a complete temporary in place of ``final``: a file by one rename, a directory by a swap."""
    if not temporary.is_dir():
        os.replace(temporary, final)
        return
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if os.path.lexists(final):
        os.rename(final, old)  # os.replace cannot put a directory over a non-empty one
    try:
        os.rename(temporary, final)
    except OSError:
        if os.path.lexists(old):
            os.rename(old, final)
        raise
    _remove(old)


@contextlib.contextmanager
def output_transaction():
    """Hold back the renames of every output finished inside the block until it
    ends without an exception; on an exception (a StageError, Ctrl-C) delete the
    temporaries instead. Nested use joins the outer transaction."""
    global _active
    if _transaction() is not None:
        yield
        return
    transaction = _active = _Transaction()
    try:
        yield
    except BaseException:
        for temporary in transaction.temporaries:
            _remove(temporary)
        for directory in reversed(transaction.created):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty: it may hold files from before, or another process's
        raise
    finally:
        _active = None
    # Files written inside an output directory finished before it, so they are renamed before it is swapped in.
    for final, temporary in transaction.renames.items():
        try:
            _publish(final, temporary)
        except OSError as exc:
            for left in transaction.temporaries:
                _remove(left)
            raise _cannot_write(final, exc) from None
    for unfinished in set(transaction.temporaries) - set(transaction.renames.values()):
        _remove(unfinished)  # a writer never closed: incomplete, so not published


def _dead(path: Path) -> bool:
    """Whether a "<name>.tmp-<pid>" or "<name>.old-<pid>" belongs to a process that is gone."""
    pid = path.name.rpartition("-")[2]
    return pid.isdigit() and not _running(int(pid))


def _start_output(final: Path) -> Path:
    """The temporary to write ``final`` to; removes the ones a killed run of it left
    and puts back a directory a killed swap left aside."""
    transaction = _transaction()
    try:
        missing = [parent for parent in final.absolute().parents if not os.path.lexists(parent)]
        final.parent.mkdir(parents=True, exist_ok=True)
        if transaction is not None:
            transaction.created += reversed(missing)
        for old in final.parent.glob(f"{glob.escape(final.name)}.old-*"):
            if _dead(old):
                if os.path.lexists(final):
                    _remove(old)
                else:
                    old.rename(final)  # killed between the two renames of a swap: the old directory is whole
        for left in final.parent.glob(f"{glob.escape(final.name)}.tmp-*"):
            if _dead(left):
                _remove(left)
    except OSError as exc:
        raise _cannot_write(final, exc) from None
    temporary = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if transaction is not None:
        transaction.temporaries.append(temporary.absolute())
    return temporary


def _finish_output(final: Path, temporary: Path) -> None:
    """Publish a complete temporary: now, or when the transaction ends."""
    if (transaction := _transaction()) is not None:
        transaction.renames.pop(final.absolute(), None)  # written again: renamed after what was finished before it
        transaction.renames[final.absolute()] = temporary.absolute()
        return
    try:
        _publish(final, temporary)
    except OSError as exc:
        _remove(temporary)
        raise _cannot_write(final, exc) from None


def _discard_output(temporary: Path) -> None:
    """Drop an unfinished temporary (and a finished one of the same output this transaction would publish)."""
    _remove(temporary)
    if (transaction := _transaction()) is not None:
        absolute = temporary.absolute()
        transaction.renames = {final: done for final, done in transaction.renames.items() if done != absolute}


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def current_path(path: str | os.PathLike) -> Path:
    """Where ``path`` can be read now: within a transaction, a file this stage has
    finished but not yet renamed, or a file in such a directory, is read from its
    temporary."""
    transaction = _transaction()
    if transaction is None:
        return Path(path)
    absolute = Path(path).absolute()
    for final in (absolute, *absolute.parents):
        if final in transaction.renames:
            return current_path(transaction.renames[final] / absolute.relative_to(final))  # a file of the directory may be pending too
    return Path(path)


@contextlib.contextmanager
def output_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """An open file (text in UTF-8, or binary with mode "wb") to write ``path``:
    its temporary, published when the block ends without an exception (at the end
    of the transaction, inside one) and deleted when it ends by one."""
    final = Path(path)
    temporary = _start_output(final)
    try:
        handle = open(temporary, mode, encoding=None if "b" in mode else "utf-8")
    except OSError as exc:
        raise _cannot_write(final, exc) from None
    try:
        yield handle
    except BaseException:
        with contextlib.suppress(OSError):
            handle.close()
        _discard_output(temporary)
        raise
    try:
        handle.close()  # flushes: a full disk shows here
    except OSError as exc:
        _discard_output(temporary)
        raise _cannot_write(final, exc) from None
    _finish_output(final, temporary)


def write_output_text(path: str | os.PathLike, text: str) -> None:
    """Write a text output (CSV, JSON, JSONL) atomically, with the stage's other outputs."""
    with output_file(path) as handle:
        try:
            handle.write(text)
        except OSError as exc:
            raise _cannot_write(Path(path), exc) from None


@contextlib.contextmanager
def output_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A new, empty directory to write all of directory ``path`` into. When the
    block ends without an exception it replaces ``path`` whole (at the end of the
    transaction, inside one): ``path`` then holds exactly what the block wrote, no
    file of the old content. When the block ends by an exception it is deleted and
    ``path`` stays as it was. Files inside need no temporary names of their own."""
    final = Path(path)
    temporary = _start_output(final)
    try:
        _remove(temporary)  # an earlier write of the same directory in this transaction: replaced
        temporary.mkdir()
    except OSError as exc:
        raise _cannot_write(final, exc) from None
    try:
        yield temporary
    except BaseException:
        _discard_output(temporary)
        raise
    _finish_output(final, temporary)


def open_parquet(path: str | os.PathLike) -> pq.ParquetFile:
    """A Parquet input, or a StageError naming the file when it is missing or
    unreadable (empty, not Parquet, no footer after a killed write)."""
    try:
        return pq.ParquetFile(current_path(path))
    except FileNotFoundError:
        raise _stage_error(f"{path}: no such file") from None
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: a damaged footer can hold names that are not UTF-8
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _stage_error(f"{path}: not a readable Parquet file ({reason})") from None


class ParquetSink:
    """Appends rows to one Parquet file in fixed-size row groups, so output
    bytes depend only on the rows, not on how callers batched them. The file is
    written even when no row arrives, so DVC always finds the declared output.
    Rows go to a temporary file that close() renames to ``path`` (at the end of
    the transaction, inside one); leaving the ``with`` block by an exception
    deletes it."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema):
        self.path = Path(path)
        self.schema = schema
        self._rows: list[dict] = []
        self._temporary = _start_output(self.path)
        try:
            self._writer = pq.ParquetWriter(self._temporary, schema, compression="zstd")
        except OSError as exc:
            raise _cannot_write(self.path, exc) from None
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
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._writer = None
        _finish_output(self.path, self._temporary)

    def discard(self) -> None:
        """Drop what was written; ``path`` keeps its previous content."""
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the error that brought us here is the one to report
                self._writer.close()
            self._writer = None
        _discard_output(self._temporary)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.close()
        else:
            self.discard()


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
            try:
                raw = json.dumps(raw, ensure_ascii=False, default=str)
            except (RecursionError, ValueError):  # too deep for the stack: the reason and location still say what it was
                raw = None
        # Invalid UTF-8 is why some inputs are here; escape it so Parquet can store them.
        location, detail, raw = (None if v is None else v.encode("utf-8", "backslashreplace").decode("utf-8") for v in (location, detail, raw))
        self.write({"source": self.source, "reason": reason, "location": location, "detail": detail, "raw": raw})


def read_batches(path: str | os.PathLike, columns: list[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[list[dict]]:
    """Yield the records of a Parquet file as lists of dicts, one batch at a time."""
    parquet = open_parquet(path)
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
        yield batch.to_pylist()


def write_metrics(path: str | os.PathLike, metrics: dict) -> None:
    """Write the metrics JSON atomically (with the stage's other outputs, inside a transaction)."""
    write_output_text(path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
