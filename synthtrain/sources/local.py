"""``kind: local``: the user's own files (a path or a glob) as JSON, JSONL,
Parquet or plain text, in any of the formats of ``formats.py``. With
``format: text`` a file of any other extension is plain text too.

Bytes are decoded with ``surrogateescape`` so that invalid UTF-8 reaches the
record check (and is rejected there, with its line) instead of aborting the read.
A UTF-8 byte-order mark at the start of a file is skipped. A problem with a
whole file (unreadable, not JSON, not Parquet) fails the stage with one line
naming the file; a problem with one line or row is a counted reject. A file of
prompts without answers (``PROMPT_FORMATS``) is such a whole-file problem where
records are made, and read only where prompts are wanted (``read(prompts=True)``:
a generate source's seed file).
"""

import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from synthtrain.sources.formats import FORMATS, PROMPT_FORMATS, Parsed, Rejected, detect, parse_row
from synthtrain.params import LocalSource, StageError
from synthtrain.records import InvalidRecord, open_parquet

FILE_TYPES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "text", ".md": "text"}
BOM = "\ufeff"  # the UTF-8 byte-order mark some editors put first in a file


def resolve(pattern: str) -> list[Path]:
    matches = [Path(p) for p in glob.glob(pattern, recursive=True)]
    paths = sorted(p for p in matches if p.is_file())
    if not paths and matches:
        what = "is a directory" if len(matches) == 1 and str(matches[0]) == pattern else "matches only directories"
        raise StageError(f"{pattern}: {what}; give a file or a glob of files (e.g. {pattern.rstrip('/')}/*.jsonl)")
    if not paths:
        raise StageError(f"{pattern}: no such file")
    return paths


def file_type(path: Path, fmt: str) -> str:
    """The file type of ``path`` by its extension; any other extension is plain text with ``format: text``."""
    if path.suffix.lower() in FILE_TYPES:
        return FILE_TYPES[path.suffix.lower()]
    if fmt == "text":
        return "text"
    extension = f"'{path.suffix}'" if path.suffix else "(no extension)"
    raise StageError(f"{path}: unknown file type {extension} (expected one of {', '.join(FILE_TYPES)}; "
                     "format: text reads any file as plain text)")


def parse_json(text: str) -> object:
    """json.loads, with the two errors it raises besides JSONDecodeError made
    ValueErrors that say what is wrong in a few words."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deep") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits; use ..."
        raise ValueError(str(exc).split(";")[0]) from None


def json_rows(path: Path) -> Iterator[tuple[str, object, object] | Rejected]:
    """A JSON array, or JSON Lines saved as .json."""
    content = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix(BOM)
    if not content.lstrip().startswith("["):
        if content.lstrip().startswith("{") and "\n" in content.strip():
            # One object spread over several lines parses whole: say what .json
            # holds instead of rejecting each of its lines as malformed.
            try:
                parse_json(content)
            except ValueError:
                pass  # JSON Lines (or broken): read line by line
            else:
                raise StageError(f"{path}: one JSON object over several lines; a .json file must hold a JSON array of records "
                                 "([{...}, {...}]) or JSON Lines (one record per line)")
        yield from jsonl_rows(path)
        return
    try:
        rows = parse_json(content)
    except json.JSONDecodeError as exc:
        raise StageError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
    except ValueError as exc:
        raise StageError(f"{path}: cannot read the JSON array ({exc})") from None
    # Items of an array have no line of their own; locate them by index.
    for index, row in enumerate(rows):
        yield f"{path}[{index}]", row, row


def jsonl_rows(path: Path) -> Iterator[tuple[str, object, object] | Rejected]:
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            raw = line.decode("utf-8", errors="surrogateescape").rstrip("\r\n")
            if number == 1:
                raw = raw.removeprefix(BOM)
            if not raw.strip():
                continue
            try:
                row = parse_json(raw)
            except json.JSONDecodeError as exc:
                yield Rejected(f"{path}:{number}", "malformed_json", f"not valid JSON: {exc.msg} at column {exc.colno}", raw)
                continue
            except ValueError as exc:
                yield Rejected(f"{path}:{number}", "malformed_json", f"cannot read this JSON: {exc}", raw)
                continue
            yield f"{path}:{number}", row, raw


# What converting Parquet values to Python can raise: invalid UTF-8 in a string
# column (UnicodeDecodeError), a date out of Python's range, an unknown type.
UNCONVERTIBLE = (ValueError, OverflowError, pa.ArrowException)


def parquet_rows(path: Path) -> Iterator[tuple[str, object, object] | Rejected]:
    number = 0
    batches = open_parquet(path).iter_batches(batch_size=2_000)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError, ValueError) as exc:  # a damaged page
            raise StageError(f"{path}: cannot read the rows from {number} on ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        try:
            rows = batch.to_pylist()
        except UNCONVERTIBLE:
            rows = [python_row(batch.slice(i, 1)) for i in range(batch.num_rows)]  # one by one: only the bad rows are rejected
        for row in rows:
            location = f"{path}#row{number}"
            number += 1
            yield Rejected(location, *row, None) if isinstance(row, tuple) else (location, row, row)


def python_row(row: pa.RecordBatch) -> dict | tuple[str, str]:
    """A one-row batch as a dict, or (reason, detail) naming the column Python cannot read."""
    try:
        return row.to_pylist()[0]
    except UNCONVERTIBLE:
        for name in row.schema.names:
            try:
                row.column(name).to_pylist()
            except UNCONVERTIBLE as exc:
                reason = "invalid_utf8" if isinstance(exc, UnicodeDecodeError) else "bad_type"
                return reason, f"column {name!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        raise


def text_rows(path: Path, split: str) -> Iterator[tuple[str, object, str]]:
    """One document per blank-line-separated block, or per line."""
    block, start = [], 1
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            line = line.decode("utf-8", errors="surrogateescape").rstrip("\r\n")
            if number == 1:
                line = line.removeprefix(BOM)
            if split == "line":
                if line.strip():
                    yield f"{path}:{number}", {"text": line}, line
                continue
            if line.strip():
                if not block:
                    start = number
                block.append(line)
            elif block:
                yield f"{path}:{start}", {"text": "\n".join(block)}, "\n".join(block)
                block = []
    if block:
        yield f"{path}:{start}", {"text": "\n".join(block)}, "\n".join(block)


def read(source: LocalSource, prompts: bool = False) -> Iterator[Parsed | Rejected]:
    """The rows of every file of ``source``. ``prompts``: the rows are prompts for
    generation, so a file of prompts without answers (PROMPT_FORMATS) is read too;
    elsewhere it fails, as it makes no record."""
    for path in resolve(source.path):
        try:
            yield from read_file(path, source, prompts)
        except OSError as exc:  # unreadable, or gone since resolve()
            raise StageError(f"{path}: cannot read it ({os.strerror(exc.errno) if exc.errno else exc})") from None


def read_file(path: Path, source: LocalSource, prompts: bool = False) -> Iterator[Parsed | Rejected]:
    kind = file_type(path, source.format)
    rows = {"json": lambda: json_rows(path), "jsonl": lambda: jsonl_rows(path), "parquet": lambda: parquet_rows(path),
            "text": lambda: text_rows(path, source.split)}[kind]()
    fmt = "text" if kind == "text" else (None if source.format == "auto" else source.format)
    valid = 0
    for item in rows:
        if isinstance(item, Rejected):
            yield item
            continue
        location, row, raw = item
        if fmt is None:
            fmt = detect(row) if isinstance(row, dict) else None
            if fmt is None:
                # The keys are the input's: escaped, so that the message stays one line.
                names = [json.dumps(k, ensure_ascii=False)[1:-1] for k in sorted(row)] if isinstance(row, dict) else [type(row).__name__]
                keys = ", ".join(names[:20] + ["..."] * (len(names) > 20))
                raise StageError(f"{location}: cannot tell the format from the fields ({keys}); set format: in the source "
                                 f"(supported formats: {', '.join(FORMATS)}; docs/sources.md lists their fields)")
        if fmt in PROMPT_FORMATS and not prompts:
            raise StageError(f"{path}: a file of prompts without answers (format {fmt}, as MT-bench's question.jsonl), which "
                             "makes no training record; use it as the seed_file of a kind: generate source")
        try:
            parsed = parse_row(row, fmt, location, raw, {"file": str(path), "format": fmt}, source.pairs)
        except InvalidRecord as exc:
            yield Rejected(location, exc.reason, str(exc), raw)
            continue
        valid += 1
        yield from parsed
    if valid == 0:
        raise StageError(f"{path}: no valid records in this file")
