"""Benchmark: the quality stage's records/s on the built-in data.

Target (issue: quality stage): score 1M records in <= 120 s on a 2-core
machine. Runs the stage core (train the scorers, score on all cores, decide,
write Parquet, metrics and the real-file scores) on the first --records rows of
data/raw/builtin.parquet. Baseline, measured in the same run: a straightforward
per-record pure-Python implementation of the text heuristics alone (split,
dicts, ``re``) on --baseline-records records, extrapolated.

The stage timed here is both halves, ``quality_score`` and ``quality``, one
after the other; in ``make repro`` a change of ``quality.threshold``,
``weights``, ``limits`` or ``rules`` reruns only the deciding half. The stage
computes far more than the baseline (classifier, trigram reference LM, IFD,
answer re-check).

Accuracy on the generator's ground truth (the AUC leaves out exact and near
duplicates, copies of clean records that the dedup stage removes): refusals,
mojibake, gibberish, boilerplate-only pages and repetition loops are caught
almost entirely; truncated replies by a connective at the end or an end the
reference LM finds improbable; wrong answers by re-checking the working of
arithmetic and word problems and the letters of sorted lists (wrong counts and
wrong facts with a number are not caught); off-topic replies only weakly by
IFD with a question cache, because most answers share few words with their
question. The trigram reference LM knows only the fictional world; real
sources and files are read by the LM scorer (``quality.lm_scorer``), which this
benchmark leaves out: bench/lm_quality.py measures it.

    python bench/quality_speed.py [--records 1000000] [--baseline-records 20000]
"""

import argparse
import json
import os
import platform
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import write_results  # noqa: E402
from synthtrain.params import load_params  # noqa: E402
from synthtrain.quality.decide import quality_stage  # noqa: E402
from synthtrain.quality.heuristics import BOILERPLATE, MOJIBAKE, REFUSAL  # noqa: E402
from synthtrain.records import content_of  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORD = re.compile(r"[^\W_]+")
BOILERPLATE_RE = re.compile(BOILERPLATE, re.IGNORECASE)
MOJIBAKE_RE = re.compile(MOJIBAKE.replace(r"\x{80}-\x{BF}", "\x80-\xbf").replace(r"\x{FFFD}", "\ufffd"))
REFUSAL_RE = re.compile(REFUSAL, re.IGNORECASE)


def python_heuristics(record: dict) -> dict:
    """The per-record way: one Python pass per statistic."""
    text = content_of(record["messages"], record["text"])
    words = WORD.findall(text.casefold())
    visible = [c for c in text if not c.isspace()]
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    ngrams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    replies = [m["content"] for m in record["messages"] or [] if m["role"] == "assistant"]
    return {
        "words": len(words),
        "mean_word_length": sum(map(len, words)) / max(len(words), 1),
        "alpha_ratio": sum(c.isalpha() for c in visible) / max(len(visible), 1),
        "symbol_ratio": sum(not (c.isalnum() or c in ".,;:!?'\"()-") for c in visible) / max(len(visible), 1),
        "dup_line_fraction": (len(lines) - len(set(lines))) / max(len(lines), 1),
        "dup_ngram_fraction": (len(ngrams) - len(set(ngrams))) / max(len(ngrams), 1),
        "boilerplate_fraction": sum(len(line) for line in lines if BOILERPLATE_RE.search(line)) / max(sum(map(len, lines)), 1),
        "mojibake": len(MOJIBAKE_RE.findall(text)),
        "refusal": sum(len(REFUSAL_RE.findall(reply)) for reply in replies),
    }


def baseline_rate(path: str, records: int) -> float:
    rows = pq.ParquetFile(path).read_row_groups(range(0, 1 + records // 5000)).slice(0, records).to_pylist()
    started = time.perf_counter()
    for row in rows:
        python_heuristics(row)
    return len(rows) / (time.perf_counter() - started)


def peak_rss_mb() -> float:
    """Largest resident set of this process or of any of its (worker) children."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--baseline-records", type=int, default=20_000)
    parser.add_argument("--metrics", help="also copy the stage's metrics JSON here")
    args = parser.parse_args()
    source = pq.ParquetFile(REPO / "data/raw/builtin.parquet")
    params = load_params(REPO / "params.yaml")
    # without the LM scorer: its minutes on the files would swamp the figure; bench/lm_quality.py times it
    quality = params.quality.model_copy(update={"lm_scorer": params.quality.lm_scorer.model_copy(update={"model": None})})
    params = params.model_copy(update={"quality": quality})
    os.chdir(REPO)  # quality.files paths are relative to the repository, as under dvc repro
    with tempfile.TemporaryDirectory() as tmp:
        input_path = f"{tmp}/input.parquet"
        with pq.ParquetWriter(input_path, source.schema_arrow, compression="zstd") as writer:
            copied = 0
            for group in range(source.num_row_groups):
                if copied >= args.records:
                    break
                table = source.read_row_group(group).slice(0, args.records - copied)
                writer.write_table(table)
                copied += table.num_rows
        baseline = baseline_rate(input_path, args.baseline_records)
        started = time.perf_counter()
        metrics = quality_stage(params, input_path, f"{tmp}/out")
        seconds = time.perf_counter() - started
    if args.metrics:
        Path(args.metrics).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    rate = copied / seconds
    projected = 1_000_000 / rate
    peak = peak_rss_mb()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"baseline (pure-Python per-record heuristics only, {args.baseline_records:,} records): {baseline:,.0f} records/s "
          f"-> {copied / baseline:.1f} s for {copied:,}")
    print(f"quality stage ({copied:,} records, all scores, training and writing included): {seconds:.1f} s, {rate:,.0f} records/s, "
          f"peak RSS {peak:,.0f} MB")
    print(f"speed-up vs baseline: {rate / baseline:.2f}x")
    print(f"1M records in {projected:.1f} s; target <= 120 s: {'met' if projected <= 120 else 'MISSED'}")
    accuracy = metrics["builtin_accuracy"] or {}
    print(f"AUC {accuracy.get('auc')}, recall {json.dumps(accuracy.get('recall_at_threshold'))}, "
          f"clean rejected {accuracy.get('clean_rejected_share')}, classifier held-out accuracy {metrics['classifier']['heldout_accuracy']}")
    print("mean quality of the real files: " + ", ".join(f"{name} {score}" for name, score in real_file_scores(metrics).items()))
    figures = {"baseline_records_per_s": baseline, "baseline_seconds_extrapolated": copied / baseline,
               "ours_seconds": seconds, "ours_records_per_s": rate, "ours_peak_rss_mb_largest_process": peak,
               "speedup_vs_baseline": rate / baseline, "seconds_for_1M_records": projected, "target_1M_in_120s_met": projected <= 120,
               "builtin_auc": accuracy.get("auc"), "clean_rejected_share": accuracy.get("clean_rejected_share"),
               "classifier_heldout_accuracy": metrics["classifier"]["heldout_accuracy"]}
    figures.update({f"recall_{flaw}": value for flaw, value in (accuracy.get("recall_at_threshold") or {}).items()})
    figures.update({f"mean_quality_{name}": score for name, score in real_file_scores(metrics).items()})
    write_results("quality_speed", figures,
                  settings={"records": copied, "baseline_records": args.baseline_records, "threshold": params.quality.threshold})


def real_file_scores(metrics: dict) -> dict:
    """Mean quality score of each real file the stage scores (``quality.files``)."""
    return {name: entry.get("mean_quality") for name, entry in (metrics.get("files") or {}).items() if isinstance(entry, dict)}


if __name__ == "__main__":
    main()
