"""quality stage, the filter: ``python -m stages.quality [--params FILE]``.

Reads ``data/dedup/train.parquet`` and, row for row, the scores the
``quality_score`` stage (``enrich.py``) wrote to ``data/quality/scores.parquet``;
combines them into ``quality`` and a ``reject_reason`` with ``quality.threshold``,
``weights``, ``limits`` and ``rules`` (nothing else), and writes
``data/quality/scored.parquet``, ``data/rejects/quality.parquet``,
``metrics/quality.json`` and ``plots/quality/histogram.csv`` (docs/quality.md).
Retuning those params reruns only this stage, in seconds; the scores stay.
"""

import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from synthtrain.params import Params, Quality, StageError
from synthtrain.arrays import load_arrays
from synthtrain.quality.enrich import FILE_SCORES, INPUT, REFERENCE_LM, SCORES, score_stage
from synthtrain.quality.scorer import combine, components, judged, reject_reasons
from synthtrain.records import BATCH_ROWS, QUALITY_SCORES, SCHEMA, SCORED_SCHEMA, ScoredWriter, meta_field, open_parquet, write_metrics, write_output_text

log = logging.getLogger("quality")

# Copies of a clean record: quality cannot and should not tell them from their
# original (dedup removes them), so they are left out of the AUC and reported apart.
DUPLICATE_FLAWS = ("exact_duplicate", "near_duplicate")
HISTOGRAM_BINS = 20


class Tally:
    """Everything metrics and plots need, accumulated batch by batch."""

    def __init__(self):
        self.read = self.kept = 0
        self.by_reason = Counter()
        self.groups = defaultdict(lambda: defaultdict(float))
        self.histogram = defaultdict(lambda: np.zeros(HISTOGRAM_BINS, dtype=np.int64))
        self.flaw, self.quality, self.rejected = [], [], []

    def add(self, table: pa.Table, parts: dict[str, np.ndarray], quality: np.ndarray, reason: np.ndarray) -> None:
        rejected = reason != None  # noqa: E711 (element-wise)
        self.read += len(quality)
        self.kept += int((~rejected).sum())
        self.by_reason.update(reason[rejected].tolist())
        bins = np.minimum((quality * HISTOGRAM_BINS).astype(int), HISTOGRAM_BINS - 1)
        for column in ("source", "category"):
            values = table.column(column).to_numpy(zero_copy_only=False)
            for value in np.unique(values):
                mine = values == value
                group = self.groups[f"{column}:{value}"]
                group["records"] += mine.sum()
                group["kept"] += (mine & ~rejected).sum()
                group["quality"] += quality[mine].sum()
                for name, part in parts.items():
                    applies = mine & ~np.isnan(part)
                    group[name] += part[applies].sum()
                    group[f"{name}_records"] += applies.sum()
                self.histogram[f"{column}:{value}"] += np.bincount(bins[mine], minlength=HISTOGRAM_BINS)
        meta = table.column("meta")
        builtin = pc.fill_null(pc.equal(meta_field(meta, "generator"), "builtin"), False).to_numpy(zero_copy_only=False)
        if builtin.any():
            self.flaw.append(pc.fill_null(meta_field(meta, "flaw"), "clean").to_numpy(zero_copy_only=False)[builtin])
            self.quality.append(quality[builtin])
            self.rejected.append(rejected[builtin])

    def group_means(self, kind: str) -> dict:
        means = {}
        for key, group in sorted(self.groups.items()):
            if not key.startswith(kind + ":"):
                continue
            records = group["records"]
            means[key.split(":", 1)[1]] = {
                "records": int(records), "kept": int(group["kept"]), "mean_quality": round(group["quality"] / records, 4),
                **{f"mean_{name}": round(group[name] / group[f"{name}_records"], 4)
                   for name in ("heuristics", "refusal", "classifier", "reference_lm", "ifd") if group[f"{name}_records"] > 0}}
        return means

    def builtin_accuracy(self, threshold: float) -> dict | None:
        """How well quality separates the generator's clean records from its flawed ones."""
        if not self.flaw:
            return None
        flaw, quality, rejected = np.concatenate(self.flaw), np.concatenate(self.quality), np.concatenate(self.rejected)
        clean, duplicate = flaw == "clean", np.isin(flaw, DUPLICATE_FLAWS)
        flawed = ~clean & ~duplicate
        accuracy = {"records": len(flaw), "clean": int(clean.sum()), "content_flawed": int(flawed.sum()),
                    "note": "AUC of quality, clean (meta.flaw null) vs content flaws; exact/near duplicates are "
                            "copies of clean records, left out of the AUC and reported under duplicates"}
        both = clean | flawed
        if clean.any() and flawed.any():
            accuracy["auc"] = round(float(roc_auc_score(flawed[both], -quality[both])), 4)
        accuracy["clean_rejected_share"] = round(float(rejected[clean].mean()), 4) if clean.any() else None
        accuracy["recall_at_threshold"] = {name: round(float(rejected[flaw == name].mean()), 4)
                                           for name in sorted(set(flaw[flawed]))}
        accuracy["duplicates"] = {name: {"records": int((flaw == name).sum()), "rejected_share": round(float(rejected[flaw == name].mean()), 4),
                                         "mean_quality": round(float(quality[flaw == name].mean()), 4)}
                                  for name in DUPLICATE_FLAWS if (flaw == name).any()}
        accuracy["threshold"] = threshold
        return accuracy

    def write_histogram(self, path: Path) -> None:
        lines = ["group,quality,records"]
        for group, counts in sorted(self.histogram.items()):
            lines += [f"{group},{(i + 0.5) / HISTOGRAM_BINS:.3f},{count}" for i, count in enumerate(counts)]
        write_output_text(path, "\n".join(lines) + "\n")


def decide(params: Quality, calibration: dict[str, np.ndarray], category: np.ndarray, scores: dict[str, np.ndarray]):
    """The filter: components, quality and reject reason from score columns."""
    scores = judged(scores, category, calibration)
    parts = components(scores, params, calibration)
    quality = combine(parts, params)
    return parts, quality, reject_reasons(scores, quality, params)


def score_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """QUALITY_SCORES columns as float arrays, null becoming NaN."""
    return {field.name: pc.cast(table.column(field.name), pa.float64()).to_numpy(zero_copy_only=False) for field in QUALITY_SCORES}


def aligned(scores: pq.ParquetFile, sizes) -> Iterator[pa.Table]:
    """The rows of ``scores`` in consecutive tables of the given sizes."""
    batches = scores.iter_batches(batch_size=BATCH_ROWS)
    pending = QUALITY_SCORES.empty_table()
    for size in sizes:
        while pending.num_rows < size:
            pending = pa.concat_tables([pending, pa.Table.from_batches([next(batches)])])
        yield pending.slice(0, size)
        pending = pending.slice(size)


def scored_table(table: pa.Table, scores: pa.Table, quality: np.ndarray, reason: np.ndarray) -> pa.Table:
    columns = [table.column(name) for name in SCHEMA.names] + scores.columns
    columns += [pa.array(quality.astype(np.float32)), pa.array(reason.tolist(), pa.string())]
    return pa.Table.from_arrays(columns, schema=SCORED_SCHEMA)


def file_means(params: Quality, calibration: dict[str, np.ndarray], root: Path) -> dict:
    """Per file under ``quality.files`` that was scored: mean quality, share kept, rejections and mean components."""
    table = open_parquet(root / FILE_SCORES).read()
    results = {}
    for name in sorted(set(table.column("file").to_pylist())):
        rows = table.filter(pc.equal(table.column("file"), name))
        parts, quality, reason = decide(params, calibration, rows.column("category").to_numpy(zero_copy_only=False), score_arrays(rows))
        results[name] = {"records": rows.num_rows, "mean_quality": round(float(quality.mean()), 4),
                         "kept_share": round(float(np.mean(reason == None)), 4),  # noqa: E711
                         "rejected_by_reason": dict(sorted(Counter(reason[reason != None].tolist()).items())),  # noqa: E711
                         **{f"mean_{k}": round(float(np.nanmean(v)), 4) for k, v in parts.items() if not np.isnan(v).all()}}
        log.info("file %s: %d records, mean quality %.3f, kept %.1f%%", name, rows.num_rows, quality.mean(), 100 * results[name]["kept_share"])
    return results


def decide_stage(params: Params, input_path: str | os.PathLike = INPUT, root: str | os.PathLike = ".") -> dict:
    """Decide on every record of ``input_path`` from the scores under ``root``; returns the metrics."""
    q, root, started = params.quality, Path(root), time.perf_counter()
    for path in (Path(input_path), root / SCORES, root / REFERENCE_LM, root / FILE_SCORES):
        if not path.is_file():
            raise StageError(f"{path}: no such file (run the dedup and quality_score stages first)")
    parquet, scores = open_parquet(input_path), open_parquet(root / SCORES)
    if scores.metadata.num_rows != parquet.metadata.num_rows:
        raise StageError(f"{root / SCORES} has {scores.metadata.num_rows} rows for the {parquet.metadata.num_rows} of {input_path}; "
                         "rerun the quality_score stage")
    calibration = {k.removeprefix("calibration_"): v for k, v in load_arrays(root / REFERENCE_LM).items() if k.startswith("calibration_")}

    tally = Tally()
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    with ScoredWriter(root / "data/quality/scored.parquet") as scored, ScoredWriter(root / "data/rejects/quality.parquet") as rejects:
        for index, score_table in tqdm(zip(range(parquet.num_row_groups), aligned(scores, sizes)), total=len(sizes), desc="decide", unit="group"):
            table = parquet.read_row_group(index)
            values = score_arrays(score_table)
            parts, quality, reason = decide(q, calibration, table.column("category").to_numpy(zero_copy_only=False), values)
            out = scored_table(table, score_table, quality, reason)
            scored.write_table(out)
            rejects.write_table(out.filter(pa.array(reason != None)))  # noqa: E711
            tally.add(table, parts, quality, reason)

    rejected = sum(tally.by_reason.values())
    assert tally.read == tally.kept + rejected == parquet.metadata.num_rows, (tally.read, tally.kept, rejected)
    metrics = {"read": tally.read, "kept": tally.kept, "rejected": rejected, "read_equals_kept_plus_rejected": True,
               "rejected_by_reason": dict(sorted(tally.by_reason.items())), "threshold": q.threshold,
               "by_source": tally.group_means("source"), "by_category": tally.group_means("category"),
               "builtin_accuracy": tally.builtin_accuracy(q.threshold), "files": file_means(q, calibration, root)}
    write_metrics(root / "metrics/quality.json", metrics)
    tally.write_histogram(root / "plots/quality/histogram.csv")
    log.info("read %d, kept %d, rejected %d %s in %.1fs -> data/quality/scored.parquet, data/rejects/quality.parquet",
             tally.read, tally.kept, rejected, dict(sorted(tally.by_reason.items())), time.perf_counter() - started)
    if tally.kept == 0:
        by_rules = rejected - tally.by_reason["below_threshold"]
        if tally.by_reason["below_threshold"]:
            best = float(pc.max(open_parquet(root / "data/quality/scored.parquet").read(columns=["quality"]).column(0)).as_py())
            raise StageError(f"quality.threshold = {q.threshold} rejects all {tally.read} records ({by_rules} by hard rules, the rest "
                             f"below the threshold; the highest quality is {best:.3f}); lower it")
        raise StageError(f"every one of the {tally.read} records breaks a hard rule ({dict(sorted(tally.by_reason.items()))}); "
                         f"relax quality.limits or switch off some of quality.rules")
    return metrics


def quality_stage(params: Params, input_path: str | os.PathLike = INPUT, root: str | os.PathLike = ".") -> dict:
    """Both stages in a row, as ``dvc repro`` runs them (tests, benchmarks): the metrics of both."""
    return {**score_stage(params, input_path, root), **decide_stage(params, input_path, root)}
