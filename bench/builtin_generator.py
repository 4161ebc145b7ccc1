"""Benchmark: the built-in generator's records/s.

Target (issue: download stage): 1.2M records in <= 60 s on a 2-core machine,
using both cores. Baseline, measured in the same run: the same generator in one
process, so the ratio shows what the worker pool adds.

Peak memory: the largest resident set of the bench process or of any one
worker. The download stage writes records in 10,000-row batches, so its memory
stays flat as ``max_samples`` grows; a local JSON array is parsed whole, while
JSONL and Parquet files stream.

    python bench/builtin_generator.py [--records 1200000] [--baseline-records 200000]
"""

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import write_results  # noqa: E402
from synthtrain.world.corpus import generate  # noqa: E402
from synthtrain.params import load_params, parse_params  # noqa: E402
from synthtrain.records import RecordWriter  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def rate(records: int, workers: int) -> float:
    raw = load_params(REPO / "params.yaml").model_dump()
    raw["sources"] = {"builtin": {**raw["sources"]["builtin"], "max_samples": records}}
    params = parse_params(raw)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with RecordWriter(Path(tmp) / "builtin.parquet") as sink:
            generate(params, "builtin", sink, workers)
        return records / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_200_000)
    parser.add_argument("--baseline-records", type=int, default=200_000)
    args = parser.parse_args()
    cores = os.cpu_count()
    baseline = rate(args.baseline_records, workers=1)
    parallel = rate(args.records, workers=0)
    seconds = args.records / parallel
    projected = 1_200_000 / parallel
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, Python {platform.python_version()}")
    print(f"baseline  (1 process, {args.baseline_records:,} records): {baseline:,.0f} records/s")
    print(f"generator ({cores} processes, {args.records:,} records): {parallel:,.0f} records/s, {seconds:.1f} s")
    print(f"speed-up vs baseline: {parallel / baseline:.2f}x")
    print(f"1.2M records in {projected:.1f} s; target <= 60 s: {'met' if projected <= 60 else 'MISSED'}")
    print(f"peak RSS (largest single process): {peak_mb:,.0f} MB")
    write_results(
        "builtin_generator",
        figures={"one_process_records_per_s": baseline, "generator_records_per_s": parallel, "generator_seconds": seconds,
                 "speedup_vs_one_process": parallel / baseline, "seconds_for_1_2M_records": projected,
                 "target_1_2M_in_60s_met": projected <= 60, "peak_rss_mb_largest_process": peak_mb},
        settings={"records": args.records, "baseline_records": args.baseline_records, "generator_processes": cores},
    )


if __name__ == "__main__":
    main()
