"""download stage: ``python -m stages.download SOURCE [--params FILE]``.

Reads the source named SOURCE under ``sources:`` (kind builtin, local, hub or
generate: a teacher model's records, ``synthtrain/synthesis/generate.py``)
and writes ``data/raw/SOURCE.parquet`` in the record schema, the rejected
input to ``data/rejects/download-SOURCE.parquet``, and the counts to
``metrics/download/SOURCE.json`` (read = kept + rejected, rejected by reason).
The kinds and their settings: docs/sources.md.
"""

import logging
import time
from collections import Counter

from tqdm import tqdm

from synthtrain.sources import hub, local
from synthtrain.world import corpus as builtin
from synthtrain.sources.formats import Rejected
from synthtrain.params import BuiltinSource, GenerateSource, HubSource, Params, StageError
from synthtrain.records import InvalidRecord, RecordWriter, RejectWriter, make_record, write_metrics

log = logging.getLogger("download")


def ingest(items, name: str, category: str, max_samples: int, max_chars: int, records: RecordWriter, rejects: RejectWriter,
           origin: str) -> dict:
    """Validate parsed rows into records until ``max_samples`` are kept; ``origin``
    (the path or dataset read) is named when none is valid. Kept records made from
    preference pairs are counted, and so are those whose rejected reply was left
    out on purpose (LocalSource.pairs: chosen)."""
    read = kept = 0
    pairs = Counter()
    with tqdm(total=max_samples, unit="rec", desc=f"download {name}", mininterval=1) as bar:
        for item in items:
            read += 1
            if isinstance(item, Rejected):
                rejects.reject(item.reason, item.location, item.detail, item.raw)
                continue
            try:
                record = make_record(name, category, messages=item.messages, text=item.text, meta=item.meta, max_chars=max_chars)
                if item.pair == "keep":  # the rejected reply, kept in meta, counts too
                    both = sum(len(turn["content"]) for turn in [*item.messages, *item.meta["rejected"]])
                    if both > max_chars:
                        raise InvalidRecord("too_long", f"the pair holds {both:,} characters with both replies, over download.max_chars={max_chars:,}")
            except InvalidRecord as exc:
                rejects.reject(exc.reason, item.location, str(exc), item.raw)
                continue
            records.write(record)
            kept += 1
            if item.pair:
                pairs[item.pair] += 1
            bar.update()
            if kept >= max_samples:
                break
    if kept == 0:
        raise StageError(f"source '{name}' ({origin}): no valid records (rejected {dict(rejects.by_reason)})")
    counts = {"read": read, "kept": kept, "by_category": {category: kept}}
    if pairs:
        counts.update(pairs=pairs.total(), pairs_rejected_dropped=pairs["chosen"])
    return counts


def download(params: Params, name: str, root: str = ".") -> dict:
    if name not in params.sources:
        raise StageError(f"no source named '{name}' under sources: (have {', '.join(params.sources)})")
    source = params.sources[name]
    started = time.perf_counter()
    with RecordWriter(f"{root}/data/raw/{name}.parquet") as records, RejectWriter(f"{root}/data/rejects/download-{name}.parquet", name) as rejects:
        if isinstance(source, BuiltinSource):
            categories, flaws = builtin.generate(params, name, records, params.download.workers)
            counts = {"read": source.max_samples, "kept": source.max_samples, "by_category": dict(sorted(categories.items())),
                      "flaws": dict(sorted(flaws.items()))}
        elif isinstance(source, GenerateSource):
            from synthtrain.synthesis.generate import generate  # torch and transformers: only generate sources pay for importing them

            counts = generate(source, name, params.download.max_chars, records, rejects, root)
        elif isinstance(source, HubSource):
            counts = ingest(hub.read(source, params.download.hub_timeout_s), name, hub.category_for(source), source.max_samples,
                            params.download.max_chars, records, rejects, source.name)
        else:
            counts = ingest(local.read(source), name, source.category, source.max_samples, params.download.max_chars, records, rejects,
                            source.path)
    metrics = {"source": name, "kind": source.kind, **counts, "rejected": sum(rejects.by_reason.values()),
               "rejected_by_reason": dict(sorted(rejects.by_reason.items()))}
    assert metrics["read"] == metrics["kept"] + metrics["rejected"], metrics
    write_metrics(f"{root}/metrics/download/{name}.json", metrics)
    seconds = time.perf_counter() - started
    log.info("%s: read %d, kept %d, rejected %d %s in %.1fs (%.0f records/s) -> data/raw/%s.parquet",
             name, metrics["read"], metrics["kept"], metrics["rejected"], metrics["rejected_by_reason"] or "", seconds,
             metrics["read"] / max(seconds, 1e-9), name)
    return metrics
