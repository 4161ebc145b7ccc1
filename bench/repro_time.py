"""Benchmark: a fresh `make repro`, stage by stage, against its 20-minute target.

    python bench/repro_time.py [--target-minutes 20] [--cache-dir .dvc/cache]

Clones this repository's HEAD into a temporary folder with ../shared beside it,
so there is no DVC cache, run cache or output and every stage runs, links the
project's .venv into it (installing the packages is not timed: that depends on
the registry) and runs `dvc repro` there. A stage's time runs from DVC's
"Running stage" line to the next one (the last to the end), so it includes
DVC's own hashing and caching of the stage's outputs. Prints each stage's
minutes and the total against the target; writes bench/results/repro_time.json
with the machine. On a machine whose project cache is still empty (a new clone),
--cache-dir .dvc/cache runs the clone on that cache, so the timed run's outputs
stay for the project's own `dvc checkout` / `dvc repro` instead of being thrown away.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import REPO, write_results  # noqa: E402

STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def timed_repro(clone: Path) -> tuple[dict[str, float], float]:
    """Seconds per stage and in all of `dvc repro` in ``clone``."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    stages, current, current_start = {}, None, started
    with subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=clone, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as repro:
        for line in repro.stdout:  # text mode: tqdm's carriage returns end lines too
            if match := STAGE_LINE.search(line):
                now = time.perf_counter()
                if current:
                    stages[current] = now - current_start
                current, current_start = match.group(1), now
                print(f"{(now - started) / 60:5.1f} min  {current}", flush=True)
        if repro.wait():
            raise SystemExit(f"dvc repro failed (exit {repro.returncode}) in stage {current}")
    total = time.perf_counter() - started
    if current:
        stages[current] = started + total - current_start
    return stages, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-minutes", type=float, default=20.0)
    parser.add_argument("--cache-dir", type=Path, help="an empty DVC cache for the clone to fill (default: its own)")
    args = parser.parse_args()
    if args.cache_dir and any(args.cache_dir.resolve().glob("*/*")):
        raise SystemExit(f"--cache-dir {args.cache_dir} is not empty: a fresh repro needs an empty cache and run cache")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="repro_time-") as folder:
        clone = Path(folder) / REPO.name
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
        (Path(folder) / "shared").symlink_to((REPO.parent / "shared").resolve())
        (clone / ".venv").symlink_to(REPO / ".venv")
        if args.cache_dir:
            subprocess.run([sys.executable, "-m", "dvc", "cache", "dir", "--local", str(args.cache_dir.resolve())], cwd=clone, check=True)
        stages, total = timed_repro(clone)
    minutes = {name: seconds / 60 for name, seconds in sorted(stages.items(), key=lambda item: -item[1])}
    for name, value in minutes.items():
        print(f"{value:6.2f} min  {name}")
    print(f"fresh dvc repro: {total / 60:.1f} min, {total / 60 / args.target_minutes:.2f} x the {args.target_minutes:g}-minute target")
    write_results("repro_time", {"total_minutes": total / 60, "ratio_to_target": total / 60 / args.target_minutes, "stage_minutes": minutes},
                  {"target_minutes": args.target_minutes, "commit": commit, "packages": "the project's .venv, linked (not timed)"})


if __name__ == "__main__":
    main()
