"""Benchmark: the dedup stage on 1M built-in records, against datasketch.

Targets (issue: dedup and quality stages): 1M records in <= 120 s with peak RSS
<= 4 GB on this 2-core machine, and >= 5x the speed of a straightforward
datasketch MinHash + MinHashLSH dedup at equal or better F1.

Baseline, measured in the same run on a 100K subset: datasketch 2.0 with the
same shingles (5 folded words) and 128 permutations, the usual loop "query the
LSH index, insert if nothing similar is there" (no verification), one process.
Our side is the whole ``python -m stages.dedup`` (exact dedup, MinHash-LSH with
verification, held-out split, decontamination against the built-in eval and the
benchmark files, writing every output), timed as a subprocess, on the same
subset and on all ``--records``. Peak RSS is the sum over the stage and its
worker processes, sampled every 0.1 s; that sum counts the copy-on-write pages
the forked workers share with their parent once per process, so it overstates
the real use. F1 of both is measured on the same labelled pairs: real texts
from ../shared/data and copies edited to a Jaccard similarity drawn uniformly
from [0.5, 1] (``dedup.accuracy`` in params.yaml); a pair is a duplicate when
its true similarity is >= the threshold.

Why datasketch loses F1 (the banding and collision probabilities are printed):
datasketch picks bands x rows for the threshold with its own default weights,
which leaves a low probability that two records at the threshold share a band,
and it keeps whatever its index returns without checking the true similarity,
so pairs below the threshold get through. We verify every candidate, so our
precision is 1.0, and what F1 loses is recall: pairs just above the threshold
that share no band. Our banding minimises the weighted LSH error areas with
``dedup.near.false_positive_weight`` / ``false_negative_weight`` (a miss costs
more than a candidate, which verification removes).

    python bench/dedup_speed.py [--records 1000000] [--baseline-records 100000]
"""

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml
from datasketch import MinHash, MinHashLSH

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import write_results  # noqa: E402
from synthtrain.dedup import MinHasher, collision_probability, edited_copy, optimal_bands, jaccard, near_duplicate_roots, read_texts, scores, shingle_sets  # noqa: E402
from synthtrain.sources.download import download  # noqa: E402
from synthtrain.params import load_params, parse_params  # noqa: E402
from synthtrain.records import content_of  # noqa: E402
from synthtrain.text import normalize  # noqa: E402

PUNCTUATION = re.compile(r"[^\w\s]+|_")


def builtin_records(count: int, workdir: Path) -> None:
    """data/raw/builtin.parquet with `count` built-in records (reusing the
    pipeline's output when it has enough) and the built-in eval file."""
    raw = workdir / "data/raw"
    raw.mkdir(parents=True)
    existing = REPO / "data/raw/builtin.parquet"
    if existing.is_file() and pq.ParquetFile(existing).metadata.num_rows >= count:
        table = pq.read_table(existing).slice(0, count)
        pq.write_table(table, raw / "builtin.parquet", compression="zstd", row_group_size=10_000)
    else:
        params = parse_params({"sources": {"builtin": {"kind": "builtin", "max_samples": count}}})
        download(params, "builtin", workdir)
    if (REPO / "data/raw/builtin_eval.parquet").is_file():
        shutil.copy(REPO / "data/raw/builtin_eval.parquet", raw)


def process_tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as status:
                total += next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as children:
                    stack.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def run_stage(workdir: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (whole process tree) of `python -m stages.dedup`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sources"] = {"builtin": params["sources"]["builtin"]}
    params["dedup"]["accuracy"]["files"] = {}  # the stage alone, not its accuracy check
    for benchmark in params["dedup"]["decontaminate"]["benchmarks"].values():
        benchmark["path"] = str((REPO / benchmark["path"]).resolve())
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "stages.dedup"], cwd=workdir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0

    def watch():
        nonlocal peak
        while process.poll() is None:
            peak = max(peak, process_tree_rss(process.pid))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    output, _ = process.communicate()
    watcher.join()
    if process.returncode:
        raise SystemExit(f"dedup failed:\n{output}")
    return time.perf_counter() - started, peak


def datasketch_shingles(text: str, k: int) -> set[bytes]:
    words = PUNCTUATION.sub(" ", normalize(text)).split()
    return {" ".join(words[i : i + k]).encode() for i in range(max(1, len(words) - k + 1))}


def datasketch_dedup(texts, threshold: float, num_perm: int, k: int) -> list[int]:
    """The straightforward loop: each text joins the first indexed text LSH finds, else is indexed."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    roots = []
    for i, text in enumerate(texts):
        minhash = MinHash(num_perm=num_perm)
        minhash.update_batch(list(datasketch_shingles(text, k)))
        found = lsh.query(minhash)
        if found:
            roots.append(min(found))
        else:
            lsh.insert(i, minhash)
            roots.append(i)
    return roots


def labelled_pairs(params) -> tuple[list[str], np.ndarray]:
    """The real-text pairs of dedup.accuracy: texts, copies, and whether each pair is a duplicate."""
    config = params.dedup
    texts, _ = read_texts(config.accuracy.files, config.accuracy.min_words)
    rng = np.random.default_rng(config.accuracy.seed)
    bases = [texts[i] for i in rng.choice(len(texts), min(config.accuracy.pairs, len(texts)), replace=False)]
    vocabulary = sorted({w for t in bases for w in t.split()})
    copies = [" ".join(edited_copy(t.split(), rng.uniform(0.5, 1.0), config.near.shingle, vocabulary, rng)) for t in bases]
    everything = bases + copies
    shingles, owner, _ = MinHasher(config.near).shingles(__import__("pyarrow").array(everything))
    n = len(bases)
    similarity = jaccard(np.stack([np.arange(n), np.arange(n) + n], axis=1), shingle_sets(shingles, owner, range(2 * n)))
    return everything, similarity >= config.near.threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--baseline-records", type=int, default=100_000)
    args = parser.parse_args()
    os.chdir(REPO)  # params.yaml paths (../shared/data) are relative to the repository
    params = load_params(REPO / "params.yaml")
    near = params.dedup.near
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")

    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small", Path(tmp) / "large"
        builtin_records(args.records, large)
        small.mkdir()
        (small / "data/raw").mkdir(parents=True)
        table = pq.read_table(large / "data/raw/builtin.parquet").slice(0, args.baseline_records)
        pq.write_table(table, small / "data/raw/builtin.parquet", compression="zstd", row_group_size=10_000)
        shutil.copy(large / "data/raw/builtin_eval.parquet", small / "data/raw")
        texts = [content_of(m, t) for m, t in zip(table.column("messages").to_pylist(), table.column("text").to_pylist())]

        started = time.perf_counter()
        datasketch_dedup(texts, near.threshold, near.num_perm, near.shingle)
        baseline_seconds = time.perf_counter() - started
        ours_small, _ = run_stage(small)
        ours_large, peak = run_stage(large)

    everything, actual = labelled_pairs(params)
    n = len(actual)
    roots = near_duplicate_roots(everything, near)
    ours = scores(roots[:n] == roots[n:], actual)
    roots = np.array(datasketch_dedup(everything, near.threshold, near.num_perm, near.shingle))
    theirs = scores(roots[:n] == roots[n:], actual)

    bands, rows = optimal_bands(near)
    lsh = MinHashLSH(threshold=near.threshold, num_perm=near.num_perm)
    ours_p = float(collision_probability(np.float64(near.threshold), bands, rows))
    theirs_p = float(collision_probability(np.float64(near.threshold), lsh.b, lsh.r))
    extrapolated = baseline_seconds * args.records / args.baseline_records / ours_large
    print(f"baseline datasketch MinHash+MinHashLSH, 1 process, {args.baseline_records:,} records: {baseline_seconds:.1f} s "
          f"({args.baseline_records / baseline_seconds:,.0f} records/s)")
    print(f"dedup stage, {os.cpu_count()} processes, {args.baseline_records:,} records: {ours_small:.1f} s "
          f"({args.baseline_records / ours_small:,.0f} records/s)")
    print(f"speed ratio vs datasketch (same {args.baseline_records:,} records): {baseline_seconds / ours_small:.1f}x; target >= 5x")
    print(f"dedup stage, {args.records:,} records: {ours_large:.1f} s ({args.records / ours_large:,.0f} records/s), "
          f"peak RSS {peak / 2**30:.2f} GB (all processes); targets <= 120 s, <= 4 GB")
    print(f"speed ratio vs datasketch extrapolated to {args.records:,}: {extrapolated:.1f}x")
    print(f"F1 on {n:,} labelled real-text pairs at threshold {near.threshold}: ours {ours['f1']:.4f}, datasketch {theirs['f1']:.4f}")
    print(f"precision / recall: ours {ours['precision']:.4f} / {ours['recall']:.4f}, "
          f"datasketch {theirs['precision']:.4f} / {theirs['recall']:.4f}")
    print(f"LSH bands x rows: ours {bands} x {rows}, datasketch {lsh.b} x {lsh.r}; probability that a pair at similarity "
          f"{near.threshold} shares a band: ours {ours_p:.3f}, datasketch {theirs_p:.3f}")
    write_results(
        "dedup_speed",
        figures={"datasketch_seconds": baseline_seconds, "datasketch_records_per_s": args.baseline_records / baseline_seconds,
                 "ours_seconds_on_baseline_records": ours_small, "ours_records_per_s_on_baseline_records": args.baseline_records / ours_small,
                 "speedup_vs_datasketch": baseline_seconds / ours_small,
                 "ours_seconds": ours_large, "ours_records_per_s": args.records / ours_large,
                 "ours_peak_rss_gb_all_processes": peak / 2**30, "speedup_vs_datasketch_extrapolated": extrapolated,
                 "ours_f1": ours["f1"], "ours_precision": ours["precision"], "ours_recall": ours["recall"],
                 "datasketch_f1": theirs["f1"], "datasketch_precision": theirs["precision"], "datasketch_recall": theirs["recall"],
                 "ours_collision_probability_at_threshold": ours_p, "datasketch_collision_probability_at_threshold": theirs_p},
        settings={"records": args.records, "baseline_records": args.baseline_records, "processes": os.cpu_count(),
                  "threshold": near.threshold, "num_perm": near.num_perm, "shingle_words": near.shingle,
                  "ours_lsh_bands_x_rows": f"{bands} x {rows}", "datasketch_lsh_bands_x_rows": f"{lsh.b} x {lsh.r}",
                  "labelled_pairs": n, "labelled_positives": int(actual.sum())},
    )


if __name__ == "__main__":
    main()
