"""The research experiments as DVC experiments: check, run or queue a definition's runs.

    python -m research.experiments check [exp1 ...] [--profile gpu]
    python -m research.experiments run exp1 [exp2 ...] [--profile cpu] [--commit] [--dry-run]
    python -m research.experiments queue exp1 [exp2 ...] [--profile cpu] [--dry-run] [--force]
    python -m research.experiments list [--profile cpu]
    python -m research.experiments estimate [--profile gpu]

``check`` validates every run of ``experiments/<profile>.yaml`` in seconds, before
anything trains: the passes over its pool that mix allows, its GPU's memory, the
cost. ``run`` runs each run that has no row in the profile's ``runs.csv`` yet, one
at a time (``dvc exp run --temp -n <experiment>-<run>-s<seed> -S ...``), and adds
its row as soon as it finishes (``--commit``: and commits it), so a clone on
another machine continues where this one stopped; a ``kind: generate`` source's
shards go to this workspace's ``data/generate/``, so that a run killed with its
temporary workspace resumes its generation in the next. ``queue`` puts the runs in DVC's
queue instead, for ``dvc exp run --run-all -j N``. Both link the sibling
directories params refer to (``../shared``) next to DVC's temporary workspaces;
``estimate`` prints each experiment's training cost on the profile's GPU
(docs/experiments.md).
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from synthtrain.cli import run_stage
from synthtrain.experiments import (GIB, MEMORY_HEADROOM, Definition, ExperimentRun, check_keys, check_run, commit_rows, curves_path, expand,
                                    unique_runs, load_definition, recorded_runs, report_dir, run_params, training_cost, unrecorded)
from synthtrain.hardware import GPU_MEMORY_GIB
from synthtrain.params import Params, StageError, load_params
from synthtrain.synthesis.generate import SHARDS, SHARDS_ENV

EXECUTOR_DIR = Path(".dvc/tmp/exps")  # where DVC's queue makes each run's temporary workspace
STANDALONE_DIR = EXECUTOR_DIR / "standalone"  # where `dvc exp run --temp` makes it


def strings(node: Any):
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def link_siblings(params_path: Path, runs: list[ExperimentRun], directory: Path = EXECUTOR_DIR) -> list[Path]:
    """Link each ``../<name>`` directory that params or runs refer to into ``directory``, so it resolves from a run's temporary workspace too."""
    values = [*strings(yaml.safe_load(params_path.read_text())), *strings([run.sets for run in runs])]
    names = {value.split("/")[1] for value in values if value.startswith("../") and value.count("/") >= 1}
    links = []
    for name in sorted(names):
        target, link = (Path.cwd().parent / name).resolve(), directory / name
        if target.is_dir() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target, target_is_directory=True)
            links.append(link)
    return links


def existing_experiments() -> set[str]:
    listing = subprocess.run(["dvc", "exp", "list", "--all-commits", "--name-only"], capture_output=True, text=True, check=True)
    return set(listing.stdout.split())


def queue(runs: list[ExperimentRun], force: bool, dry_run: bool) -> int:
    existing = set() if force or dry_run else existing_experiments()
    queued = 0
    for run in runs:
        if run.name in existing:
            print(f"experiments: {run.name} exists, skipped (--force queues it again)")
            continue
        command = run.command() + (["--force"] if force else [])
        print(" ".join(command))
        if not dry_run:
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        queued += 1
    return queued


# --- run: one at a time, each row recorded as its run finishes ------------------------------------
def head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def record_rows(profile: str, baseline: str) -> None:
    """Add the rows of the runs based on ``baseline`` to runs.csv (research.report owns its columns): the commit a
    run started from, which is no longer HEAD when something was committed while it ran."""
    done = subprocess.run([sys.executable, "-m", "research.report", "--profile", profile, "--runs-only", "--rev", baseline])
    if done.returncode != 0:
        raise StageError("python -m research.report --runs-only failed (its error is above)")


def run_all(runs: list[ExperimentRun], profile: str, params_path: Path, commit: bool, dry_run: bool) -> None:
    """Run each run without a row in the profile's runs.csv, in a temporary workspace (one run's -S sets must not
    stay for the next), and record its row as soon as it finishes. A run that finished here as a DVC experiment
    but has no row is not run again: ``python -m research.report`` (the last step of ``make experiments``) adds it."""
    path = report_dir(profile) / "runs.csv"
    todo = unrecorded(runs, path)
    print(f"experiments: {len(runs) - len(todo)} of {len(runs)} runs have a row in {path}, skipped")
    if dry_run or not todo:
        for run in todo:
            print(" ".join(run.command("--temp")))
        return
    finished = existing_experiments()
    for link in link_siblings(params_path, todo, STANDALONE_DIR):
        print(f"experiments: linked {link} -> {link.resolve()} (runs resolve ../{link.name} from there)")
    failed = []
    for number, run in enumerate(todo, 1):
        if run.name in finished:
            print(f"experiments: {run.name} finished here already; the report adds its row")
            continue
        print(f"experiments: run {number} of {len(todo)}: {run.name}", flush=True)
        baseline = head()
        if subprocess.run(run.command("--temp"), env=dict(os.environ, **{SHARDS_ENV: str(SHARDS.resolve())})).returncode != 0:
            failed.append(run.name)
            continue
        record_rows(profile, baseline)
        if run.name not in recorded_runs(path):
            failed.append(run.name)  # it ran but left no metrics for a row: research.report says why
            continue
        if commit:
            commit_rows([path, curves_path(path)], run.name)
    if failed:
        raise StageError(f"{len(failed)} of {len(todo)} runs failed: {', '.join(failed)} (their errors are above)")


# --- check and estimate: before anything trains ---------------------------------------------------
def print_estimate(definition: Definition, runs: list[ExperimentRun], params: Params) -> float:
    if definition.estimate is None:
        raise StageError("this profile has no `estimate` section (gpu, mfu, price_per_hour, budget_usd)")
    estimate = definition.estimate
    print(f"training cost on {estimate.gpu} at {estimate.mfu:.0%} MFU (assumed: not measured on this GPU) and "
          f"${estimate.price_per_hour:.2f}/h (the train stage's budget guard re-checks each run from its timed steps):")
    total = 0.0
    for experiment in dict.fromkeys(run.experiment for run in runs):
        costs = [training_cost(run, run_params(run, params), estimate) for run in runs if run.experiment == experiment]
        tokens, hours, usd = (sum(c[i] for c in costs) for i in range(3))
        total += usd
        print(f"  {experiment}: {len(costs)} runs, {tokens / 1e9:.2f}B tokens, {hours:.1f} GPU-h, ${usd:.2f}")
    verdict = "within" if total <= estimate.budget_usd else "OVER"
    print(f"  total: ${total:.2f}, {verdict} the plan's ${estimate.budget_usd:.0f}")
    return total


def check(definition: Definition, runs: list[ExperimentRun], params: Params, metrics: Path = Path("metrics")) -> list[str]:
    """Check every run; print where each pool's tokens come from and, per experiment, the most passes over a
    pool and the most memory a run needs, then the cost (print_estimate). Returns the problems, one line each."""
    estimate = definition.estimate
    own = {run.name: run_params(run, params) for run in runs}
    checks = {run.name: check_run(run, own[run.name], estimate, metrics) for run in runs}
    pools = lambda mix: f"sources {'+'.join(mix.sources)}" if mix.sources else f"pool {mix.pool}"
    for pool, source in sorted({(pools(own[name].mix), result.pool_source) for name, result in checks.items()}):
        print(f"{pool}: {source}")
    memory = f"most memory on the {estimate.gpu} ({MEMORY_HEADROOM:.0%} of {dict(GPU_MEMORY_GIB)[estimate.gpu]} GiB usable)" if estimate else ""
    print(f"{'experiment':<12}{'runs':>5}  {'most passes (mix.max_epochs)':<31}{memory}".rstrip())
    for experiment in dict.fromkeys(run.experiment for run in runs):
        mine = [run.name for run in runs if run.experiment == experiment]
        passes = max(((checks[name].passes, own[name].mix.max_epochs) for name in mine if checks[name].passes is not None), default=None)
        needs = max((checks[name].memory for name in mine if checks[name].memory is not None), default=None)
        print(f"{experiment:<12}{len(mine):>5}  {f'{passes[0]:.1f} ({passes[1]:g})' if passes else 'not checked':<31}"
              f"{f'{needs / GIB:.1f} GiB' if needs is not None else ''}".rstrip())
    problems = [problem for result in checks.values() for problem in result.problems]
    if estimate is not None:
        total = print_estimate(definition, runs, params)
        if total > estimate.budget_usd:
            problems.append(f"the runs cost ${total:.2f}, over the plan's ${estimate.budget_usd:.0f} (estimate.budget_usd)")
    return problems


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Check, run or queue the research experiments as DVC experiments")
    parser.add_argument("command", choices=["check", "run", "queue", "list", "estimate"])
    parser.add_argument("experiments", nargs="*", help="experiment names (default: all)")
    parser.add_argument("--profile", default="cpu", help="experiments/<profile>.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--commit", action="store_true", help="run: commit runs.csv after each run")
    parser.add_argument("--force", action="store_true", help="queue: queue runs that exist already (dvc exp run --force)")
    parser.add_argument("--dry-run", action="store_true", help="run, queue: print the dvc commands only")
    args = parser.parse_args(argv)
    definition = load_definition(args.profile)
    runs = unique_runs(expand(definition, args.experiments))  # a run two experiments share is listed, checked and run once
    params = load_params(args.params)
    check_keys(runs, params)
    if args.command == "list":
        for run in runs:
            print(run.name)
    elif args.command == "estimate":
        total = print_estimate(definition, runs, params)
        if total > definition.estimate.budget_usd:
            sys.exit(1)
    elif args.command == "check":
        problems = check(definition, runs, params)
        for problem in problems:
            print(f"check: {problem}", file=sys.stderr)
        if problems:
            raise StageError(f"{len(problems)} problems above; nothing has run")
        print(f"check: the {len(runs)} runs of experiments/{args.profile}.yaml can run as defined")
    elif args.command == "run":
        run_all(runs, args.profile, args.params, args.commit, args.dry_run)
    else:
        runs = runs if args.force else unrecorded(runs, report_dir(args.profile) / "runs.csv")
        for link in link_siblings(args.params, runs) if not args.dry_run else []:
            print(f"experiments: linked {link} -> {link.resolve()} (queued runs resolve ../{link.name} from there)")
        print(f"experiments: queued {queue(runs, args.force, args.dry_run)} of {len(runs)} runs without a row in runs.csv "
              f"({'dry run' if args.dry_run else 'run them: dvc exp run --run-all'})")


if __name__ == "__main__":
    run_stage(main)
