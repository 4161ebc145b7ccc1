"""quality stage: ``python -m stages.quality [--params FILE]``.

Reads ``data/dedup/train.parquet``, trains the classifier and the reference LM
on a seeded sample of it, scores every record on all cores, and writes

- ``data/quality/scored.parquet``: every record with its scores, ``quality`` and ``reject_reason``;
- ``data/rejects/quality.parquet``: the rejected rows, for audit;
- ``data/quality/classifier.npz``, ``data/quality/reference_lm.npz``: the trained scorers;
- ``metrics/quality.json``: counts (read = kept + rejected), means per source and
  category, the classifier's held-out accuracy, accuracy against the built-in
  generator's ground truth, and the mean quality of the files under ``quality.files``;
- ``plots/quality/histogram.csv``: quality histograms per source and per category.
"""

import contextlib
import glob
import logging
import multiprocessing
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from stages.download import local
from stages.download.formats import Rejected
from stages.params import LocalSource, Params, Quality, StageError, load_params, run_stage, stage_arguments
from stages.quality.npz import save_arrays
from stages.quality.scorer import Scorer, combine, components, judged, reject_reasons, sample_rows, score_columns, train
from stages.records import SCHEMA, SCORED_SCHEMA, InvalidRecord, ScoredWriter, make_record, meta_field, write_metrics

log = logging.getLogger("quality")

INPUT = "data/dedup/train.parquet"
# Copies of a clean record: quality cannot and should not tell them from their
# original (dedup removes them), so they are left out of the AUC and reported apart.
DUPLICATE_FLAWS = ("exact_duplicate", "near_duplicate")
HISTOGRAM_BINS = 20

_SCORER: Scorer | None = None
_PARQUET: pq.ParquetFile | None = None


def _init_worker(scorer: Scorer, path: str) -> None:
    global _SCORER, _PARQUET
    _SCORER, _PARQUET = scorer, pq.ParquetFile(path)


def _score_row_group(index: int) -> dict[str, np.ndarray]:
    return _SCORER.score(_PARQUET.read_row_group(index, columns=["messages", "text"]))


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
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["group,quality,records"]
        for group, counts in sorted(self.histogram.items()):
            lines += [f"{group},{(i + 0.5) / HISTOGRAM_BINS:.3f},{count}" for i, count in enumerate(counts)]
        path.write_text("\n".join(lines) + "\n")


def decide(scorer: Scorer, table: pa.Table, scores: dict[str, np.ndarray]):
    """The filter half: components, quality and reject reason from score columns."""
    scores = judged(scores, table.column("category").to_numpy(zero_copy_only=False), scorer.calibration)
    parts = components(scores, scorer.params, scorer.calibration)
    quality = combine(parts, scorer.params)
    return parts, quality, reject_reasons(scores, quality, scorer.params)


def scored_table(table: pa.Table, scores: dict[str, np.ndarray], quality: np.ndarray, reason: np.ndarray) -> pa.Table:
    columns = [table.column(name) for name in SCHEMA.names] + score_columns(scores)
    columns += [pa.array(quality.astype(np.float32)), pa.array(reason.tolist(), pa.string())]
    return pa.Table.from_arrays(columns, schema=SCORED_SCHEMA)


def score_files(scorer: Scorer, params: Quality) -> dict:
    """Mean quality of each file under ``quality.files``, scored with the trained scorers."""
    results = {}
    for name, spec in params.files.items():
        if not glob.glob(spec.path):
            if spec.required:
                raise StageError(f"quality.files.{name}.path: {spec.path}: no such file")
            log.warning("quality.files.%s: %s not found, skipped (required: false)", name, spec.path)
            results[name] = {"path": spec.path, "missing": True}
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
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        scores = scorer.score(table)
        parts, quality, reason = decide(scorer, table, scores)
        results[name] = {"path": spec.path, "category": spec.category, "records": len(rows), "invalid": invalid,
                         "mean_quality": round(float(quality.mean()), 4), "kept_share": round(float(np.mean(reason == None)), 4),  # noqa: E711
                         "rejected_by_reason": dict(sorted(Counter(reason[reason != None].tolist()).items())),  # noqa: E711
                         **{f"mean_{k}": round(float(np.nanmean(v)), 4) for k, v in parts.items() if not np.isnan(v).all()}}
        log.info("file %s (%s): %d records, mean quality %.3f, kept %.1f%%", name, spec.path, len(rows), quality.mean(),
                 100 * results[name]["kept_share"])
    return results


def quality_stage(params: Params, input_path: str | os.PathLike = INPUT, root: str | os.PathLike = ".") -> dict:
    """Score ``input_path`` and write the outputs under ``root``; returns the metrics."""
    q, root, started = params.quality, Path(root), time.perf_counter()
    if not Path(input_path).is_file():
        raise StageError(f"{input_path}: no such file (run the dedup stage first)")
    parquet = pq.ParquetFile(input_path)
    if parquet.metadata.num_rows == 0:
        raise StageError(f"{input_path}: no records to score (the input is empty)")
    log.info("read %s: %d records in %d row groups", input_path, parquet.metadata.num_rows, parquet.num_row_groups)

    scorer, training = train_scorer(parquet, q)
    save_arrays(root / "data/quality/classifier.npz", **scorer.classifier.arrays)
    save_arrays(root / "data/quality/reference_lm.npz", **scorer.lm.arrays, **{f"calibration_{k}": v for k, v in scorer.calibration.items()})
    log.info("trained on a sample: classifier held-out accuracy %s; reference LM of %d tokens",
             training["classifier"]["heldout_accuracy"], training["reference_lm"]["tokens"])

    tally = Tally()
    workers = min(q.workers or os.cpu_count() or 1, parquet.num_row_groups)
    with contextlib.ExitStack() as stack, tqdm(total=parquet.metadata.num_rows, unit="rec", desc="quality", mininterval=1) as bar:
        scored = stack.enter_context(ScoredWriter(root / "data/quality/scored.parquet"))
        rejects = stack.enter_context(ScoredWriter(root / "data/rejects/quality.parquet"))
        jobs = range(parquet.num_row_groups)
        if workers == 1:
            _init_worker(scorer, str(input_path))
            results = map(_score_row_group, jobs)
        else:
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(workers, _init_worker, (scorer, str(input_path))))
            results = pool.imap(_score_row_group, jobs)
        for index, scores in zip(jobs, results):
            table = parquet.read_row_group(index)
            parts, quality, reason = decide(scorer, table, scores)
            out = scored_table(table, scores, quality, reason)
            scored.write_table(out)
            rejects.write_table(out.filter(pa.array(reason != None)))  # noqa: E711
            tally.add(table, parts, quality, reason)
            bar.update(table.num_rows)

    rejected = sum(tally.by_reason.values())
    assert tally.read == tally.kept + rejected == parquet.metadata.num_rows, (tally.read, tally.kept, rejected)
    metrics = {"read": tally.read, "kept": tally.kept, "rejected": rejected, "read_equals_kept_plus_rejected": True,
               "rejected_by_reason": dict(sorted(tally.by_reason.items())), "threshold": q.threshold,
               "by_source": tally.group_means("source"), "by_category": tally.group_means("category"), **training,
               "builtin_accuracy": tally.builtin_accuracy(q.threshold), "files": score_files(scorer, q)}
    seconds = time.perf_counter() - started
    metrics["seconds"] = round(seconds, 1)
    write_metrics(root / "metrics/quality.json", metrics)
    tally.write_histogram(root / "plots/quality/histogram.csv")
    log.info("read %d, kept %d, rejected %d %s in %.1fs (%.0f records/s) -> data/quality/scored.parquet, data/rejects/quality.parquet",
             tally.read, tally.kept, rejected, dict(sorted(tally.by_reason.items())), seconds, tally.read / max(seconds, 1e-9))
    if tally.kept == 0:
        by_rules = rejected - tally.by_reason["below_threshold"]
        if tally.by_reason["below_threshold"]:
            best = float(pc.max(pq.read_table(root / "data/quality/scored.parquet", columns=["quality"]).column(0)).as_py())
            raise StageError(f"quality.threshold = {q.threshold} rejects all {tally.read} records ({by_rules} by hard rules, the rest "
                             f"below the threshold; the highest quality is {best:.3f}); lower it")
        raise StageError(f"every one of the {tally.read} records breaks a hard rule ({dict(sorted(tally.by_reason.items()))}); "
                         f"relax quality.limits or switch off some of quality.rules")
    return metrics


def main(argv=None) -> None:
    args = stage_arguments(__doc__.splitlines()[0]).parse_args(argv)
    quality_stage(load_params(args.params))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run_stage(main)
