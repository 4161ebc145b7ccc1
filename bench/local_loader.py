"""Benchmark: the local loader's records/s on GPTeacher-Toolformer.

Measured: ``kind: local`` end to end (read, detect format, normalise, validate,
hash, write Parquet and metrics). Baseline, in the same run: ``json.load`` of the
same file and a loop over its rows, the floor any JSON loader pays.

    python bench/local_loader.py [--file ../shared/data/synthetic/gpteacher-toolformer.json] [--repeats 5]
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import write_results  # noqa: E402
from synthtrain.sources.download import download  # noqa: E402
from synthtrain.params import parse_params  # noqa: E402


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=str(REPO.parent / "shared/data/synthetic/gpteacher-toolformer.json"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    count = len(json.loads(Path(args.file).read_text()))

    def baseline():
        for row in json.loads(Path(args.file).read_text()):
            (row["instruction"], row.get("input"), row["response"])

    params = parse_params({"sources": {"src": {"kind": "local", "path": args.file, "category": "instruction", "max_samples": 10**9}}})
    with tempfile.TemporaryDirectory() as tmp:
        loader = best_of(args.repeats, lambda: download(params, "src", tmp))
    base = best_of(args.repeats, baseline)
    print(f"file: {args.file} ({count:,} records), best of {args.repeats}")
    print(f"baseline (json.load + row loop): {count / base:,.0f} records/s")
    print(f"local loader (to Parquet):       {count / loader:,.0f} records/s")
    print(f"loader / baseline: {base / loader:.2f}x the speed ({loader / base:.1f}x the time)")
    write_results(
        "local_loader",
        figures={"json_load_records_per_s": count / base, "loader_records_per_s": count / loader,
                 "loader_speed_vs_json_load": base / loader, "loader_time_vs_json_load": loader / base},
        settings={"file": os.path.relpath(args.file, REPO), "records": count, "repeats": args.repeats, "timing": "best of repeats"},
    )


if __name__ == "__main__":
    main()
