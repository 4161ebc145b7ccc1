"""quality_score stage, the enricher: ``python -m stages.quality_score [--params FILE]``.

Trains the classifier and the reference LM on a seeded sample of
``data/dedup/train.parquet`` and scores every record on all cores into
``data/quality/scores.parquet``: the QUALITY_SCORES columns, row for row and
row group for row group with the input, no decision in it. Also scores the real
files under ``quality.files``. Then the LM scorer (``quality.lm_scorer``, a real
small LM) reads the records of every source that is not built in, when they are at
most ``max_records`` in all, and every file record, and fills its columns
(``lm_score``); built-in records keep them null: the trigram reference LM was
trained on their world and the LM scorer would take hours over a 1M-record pool on
a CPU. Only ``quality.seed``, ``workers``, ``dup_ngram``, ``classifier``,
``reference_lm``, ``files`` and ``lm_scorer``'s model, max_records, max_tokens,
batch_tokens and precision matter here; the outputs and metrics: docs/quality.md.
"""

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from synthtrain.sources import local
from synthtrain.sources.formats import Rejected
from synthtrain.parallel import parallel_map
from synthtrain.params import LocalSource, Params, Quality, StageError
from synthtrain.arrays import load_arrays, save_arrays
from synthtrain.quality.classifier import QualityClassifier
from synthtrain.quality.lm_scorer import LMScorer, items_of
from synthtrain.quality.reference_lm import ReferenceLM
from synthtrain.quality.scorer import LM_SCORER_COLUMNS, Scorer, score_columns, sample_rows, train
from synthtrain.records import FILE_SCORES_SCHEMA, QUALITY_SCORES, SCHEMA, InvalidRecord, ParquetSink, make_record, open_parquet, write_metrics

log = logging.getLogger("quality")

INPUT = "data/dedup/train.parquet"
SCORES = "data/quality/scores.parquet"
FILE_SCORES = "data/quality/files.parquet"
CLASSIFIER = "data/quality/classifier.npz"
REFERENCE_LM = "data/quality/reference_lm.npz"

def read_rows(parquet: pq.ParquetFile, rows: np.ndarray) -> pa.Table:
    """The given rows (sorted indices) of a Parquet file, reading only the row groups that hold them."""
    starts = np.cumsum([0] + [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)])
    parts = []
    for group in np.unique(np.searchsorted(starts, rows, side="right") - 1):
        local_rows = rows[(rows >= starts[group]) & (rows < starts[group + 1])] - starts[group]
        parts.append(parquet.read_row_group(int(group)).take(pa.array(local_rows)))
    return pa.concat_tables(parts) if parts else SCHEMA.empty_table()


def train_scorer(parquet: pq.ParquetFile, params: Quality) -> tuple[Scorer, dict]:
    """Train the classifier and the reference LM on a seeded sample of the input."""
    roles = sample_rows(parquet.read(columns=["source", "category"]), params)
    sampled = np.unique(np.concatenate(list(roles.values())))
    return train(read_rows(parquet, sampled), {role: np.searchsorted(sampled, rows) for role, rows in roles.items()}, params)


def load_scorer(params: Quality, root: str | os.PathLike = ".") -> Scorer:
    """The scorers the quality_score stage trained and saved under ``root``."""
    classifier, lm = load_arrays(Path(root) / CLASSIFIER), load_arrays(Path(root) / REFERENCE_LM)
    calibration = {k.removeprefix("calibration_"): v for k, v in lm.items() if k.startswith("calibration_")}
    return Scorer(params, QualityClassifier(classifier), ReferenceLM({k: v for k, v in lm.items() if not k.startswith("calibration_")}),
                  calibration)


def lm_items(table: pa.Table) -> list:
    """What the LM scorer reads of each record (None: nothing to read)."""
    return [items_of(messages, text) for messages, text in zip(table.column("messages").to_pylist(), table.column("text").to_pylist())]


def real_rows(parquet: pq.ParquetFile, params: Params) -> np.ndarray:
    """Rows of the records whose source is not built in."""
    builtin = [name for name, source in params.sources.items() if source.kind == "builtin"]
    sources = parquet.read(columns=["source"]).column("source")
    return np.flatnonzero(~pc.is_in(sources, pa.array(builtin, pa.string())).to_numpy(zero_copy_only=False))


@dataclass
class LMScores:
    """What the LM scorer read: the pool's ``rows`` (sorted) and their values, the file records' values, its metrics."""

    rows: np.ndarray
    pool: dict[str, np.ndarray]
    files: dict[str, np.ndarray]
    report: dict

    def fill(self, scores: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
        """``scores`` of the pool's rows from ``start`` on, with the LM's values where it read them."""
        mine = (self.rows >= start) & (self.rows < start + len(scores["words"]))
        for name in LM_SCORER_COLUMNS:
            scores[name][self.rows[mine] - start] = self.pool[name][mine]
        return scores


def lm_score(params: Params, parquet: pq.ParquetFile, files: pa.Table) -> LMScores:
    """The LM scorer's pass over the real records of ``parquet`` and the ``files`` records. It runs
    before the trigram scoring forks its workers, and frees the model: torch's threads do not fork well."""
    lm = params.quality.lm_scorer
    rows = real_rows(parquet, params) if lm.model else np.empty(0, dtype=np.int64)
    report = {"model": lm.model, "real_records": len(rows), "max_records": lm.max_records}
    if len(rows) > lm.max_records:
        log.warning("quality.lm_scorer: %d records of real sources, more than max_records = %d; they are scored "
                    "without the LM scorer (raise quality.lm_scorer.max_records to read them)", len(rows), lm.max_records)
        rows = rows[:0]
    report["pool_records_read"] = len(rows)
    empty = {name: np.empty(0) for name in LM_SCORER_COLUMNS}
    if lm.model is None or (not len(rows) and not files.num_rows):
        return LMScores(rows, empty, {name: np.full(files.num_rows, np.nan) for name in LM_SCORER_COLUMNS}, report)
    scorer = LMScorer(lm.model, lm.max_tokens, lm.batch_tokens, lm.precision)
    started = time.perf_counter()
    pool = scorer(lm_items(read_rows(parquet, rows))) if len(rows) else empty
    read_files = scorer(lm_items(files))
    seconds = time.perf_counter() - started
    report.update({"file_records_read": files.num_rows, **scorer.speed(),
                   "records_per_s": round((len(rows) + files.num_rows) / seconds, 2), "wall_seconds": round(seconds, 1)})
    log.info("LM scorer %s (%s): %d pool and %d file records, %.1f records/s", lm.model, report["precision"], len(rows),
             files.num_rows, report["records_per_s"])
    return LMScores(rows, pool, read_files, report)


def file_records(params: Quality) -> tuple[pa.Table, dict]:
    """The records of the files under ``quality.files`` (file name as source),
    and per file what was read, or that it is missing."""
    tables, report = [], {}
    for name, spec in params.files.items():
        if not spec.files(f"quality.files.{name}"):
            report[name] = {"path": spec.path, "missing": True}
            continue
        source = LocalSource(kind="local", path=spec.path, category=spec.category, max_samples=spec.max_records,
                             format=spec.format, split=spec.split)
        rows, invalid = [], 0
        for item in local.read(source):
            if len(rows) >= spec.max_records:
                break
            try:
                if isinstance(item, Rejected):
                    raise InvalidRecord(item.reason, item.detail)
                rows.append(make_record(name, spec.category, messages=item.messages, text=item.text, meta=item.meta))
            except InvalidRecord:
                invalid += 1
        tables.append(pa.Table.from_pylist(rows, schema=SCHEMA))
        report[name] = {"path": spec.path, "category": spec.category, "records": len(rows), "invalid": invalid}
    return (pa.concat_tables(tables) if tables else SCHEMA.empty_table()), report


def score_stage(params: Params, input_path: str | os.PathLike = INPUT, root: str | os.PathLike = ".") -> dict:
    """Train, score ``input_path`` and the listed files, write the outputs under ``root``; returns the metrics."""
    q, root = params.quality, Path(root)
    if not Path(input_path).is_file():
        raise StageError(f"{input_path}: no such file (run the dedup stage first)")
    parquet = open_parquet(input_path)
    if parquet.metadata.num_rows == 0:
        raise StageError(f"{input_path}: no records to score (the input is empty)")
    log.info("read %s: %d records in %d row groups", input_path, parquet.metadata.num_rows, parquet.num_row_groups)

    scorer, training = train_scorer(parquet, q)
    save_arrays(root / CLASSIFIER, **scorer.classifier.arrays)
    save_arrays(root / REFERENCE_LM, **scorer.lm.arrays, **{f"calibration_{k}": v for k, v in scorer.calibration.items()})
    log.info("trained on a sample: classifier held-out accuracy %s; reference LM of %d tokens",
             training["classifier"]["heldout_accuracy"], training["reference_lm"]["tokens"])

    files, report = file_records(q)
    read = lm_score(params, parquet, files)
    workers = min(q.workers or os.cpu_count() or 1, parquet.num_row_groups)
    def score_row_group(index: int) -> dict[str, np.ndarray]:
        return scorer.score(pq.ParquetFile(input_path).read_row_group(index, columns=["messages", "text"]))

    with ParquetSink(root / SCORES, QUALITY_SCORES) as writer, tqdm(total=parquet.metadata.num_rows, unit="rec", desc="score", mininterval=1) as bar:
        jobs, start = range(parquet.num_row_groups), 0
        for index, scores in zip(jobs, parallel_map(score_row_group, jobs, workers)):
            writer.write_table(pa.Table.from_arrays(score_columns(read.fill(scores, start)), schema=writer.schema))  # one row group per input row group
            start += parquet.metadata.row_group(index).num_rows
            bar.update(parquet.metadata.row_group(index).num_rows)

    with ParquetSink(root / FILE_SCORES, FILE_SCORES_SCHEMA) as writer:
        if files.num_rows:
            columns = [files.column("source"), files.column("category")] + score_columns({**scorer.score(files), **read.files})
            writer.write_table(pa.Table.from_arrays(columns, schema=FILE_SCORES_SCHEMA))
    metrics = {"scored": parquet.metadata.num_rows, **training, "files": report, "lm_scorer": read.report}
    write_metrics(root / "metrics/quality_scores.json", metrics)
    log.info("scored %d records -> %s; %d records of %d files -> %s", parquet.metadata.num_rows, SCORES, files.num_rows,
             len(report), FILE_SCORES)
    return metrics
