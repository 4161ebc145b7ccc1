"""``kind: local``: the user's own files (a path or a glob) as JSON, JSONL,
Parquet or plain text, in any of the formats of ``formats.py``.

Bytes are decoded with ``surrogateescape`` so that invalid UTF-8 reaches the
record check (and is rejected there, with its line) instead of aborting the read.
"""

import glob
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from synthtrain.sources.formats import Parsed, Rejected, detect, parse_row
from synthtrain.params import LocalSource, StageError
from synthtrain.records import InvalidRecord

FILE_TYPES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "text", ".md": "text"}


def resolve(pattern: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not paths:
        raise StageError(f"{pattern}: no such file")
    return paths


def file_type(path: Path) -> str:
    if path.suffix.lower() not in FILE_TYPES:
        raise StageError(f"{path}: unknown file type '{path.suffix}' (expected one of {', '.join(FILE_TYPES)})")
    return FILE_TYPES[path.suffix.lower()]


def json_rows(path: Path) -> Iterator[tuple[str, object, object] | Rejected]:
    """A JSON array, or JSON Lines saved as .json."""
    content = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if not content.lstrip().startswith("["):
        yield from jsonl_rows(path)
        return
    try:
        rows = json.loads(content)
    except json.JSONDecodeError as exc:
        raise StageError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
    # Items of an array have no line of their own; locate them by index.
    for index, row in enumerate(rows):
        yield f"{path}[{index}]", row, row


def jsonl_rows(path: Path) -> Iterator[tuple[str, object, object] | Rejected]:
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            raw = line.decode("utf-8", errors="surrogateescape").rstrip("\r\n")
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield Rejected(f"{path}:{number}", "malformed_json", f"not valid JSON: {exc.msg} at column {exc.colno}", raw)
                continue
            yield f"{path}:{number}", row, raw


def parquet_rows(path: Path) -> Iterator[tuple[str, object, object]]:
    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=2_000):
        for row in batch.to_pylist():
            yield f"{path}#row{number}", row, row
            number += 1


def text_rows(path: Path, split: str) -> Iterator[tuple[str, object, str]]:
    """One document per blank-line-separated block, or per line."""
    block, start = [], 1
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            line = line.decode("utf-8", errors="surrogateescape").rstrip("\r\n")
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


def read(source: LocalSource) -> Iterator[Parsed | Rejected]:
    for path in resolve(source.path):
        kind = file_type(path)
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
                fmt = detect(set(row)) if isinstance(row, dict) else None
                if fmt is None:
                    keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                    raise StageError(f"{location}: cannot tell the format from the fields ({keys}); set format: in the source")
            try:
                parsed = parse_row(row, fmt, location, raw, {"file": str(path), "format": fmt})
            except InvalidRecord as exc:
                yield Rejected(location, exc.reason, str(exc), raw)
                continue
            valid += 1
            yield from parsed
        if valid == 0:
            raise StageError(f"{path}: no valid records in this file")
