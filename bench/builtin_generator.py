"""Benchmark: the built-in generator's records/s.

Target (issue: download stage): 1.2M records in <= 60 s on a 2-core machine,
using both cores. Baseline, measured in the same run: the same generator in one
process, so the ratio shows what the worker pool adds.

    python bench/builtin_generator.py [--records 1200000] [--baseline-records 200000]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, Python {platform.python_version()}")
    print(f"baseline  (1 process, {args.baseline_records:,} records): {baseline:,.0f} records/s")
    print(f"generator ({cores} processes, {args.records:,} records): {parallel:,.0f} records/s, {seconds:.1f} s")
    print(f"speed-up vs baseline: {parallel / baseline:.2f}x")
    print(f"1.2M records in {1_200_000 / parallel:.1f} s; target <= 60 s: {'met' if 1_200_000 / parallel <= 60 else 'MISSED'}")


if __name__ == "__main__":
    main()
