"""The research experiments as DVC experiments: queue a definition's runs.

    python -m research.experiments queue exp1 [exp2 ...] [--profile cpu] [--dry-run] [--force]
    python -m research.experiments list [--profile cpu]
    python -m research.experiments estimate [--profile gpu]

``queue`` turns each run of ``experiments/<profile>.yaml`` into ``dvc exp run
--queue -n <experiment>-<run>-s<seed> -S ...``, skipping names that exist, and
links the sibling directories params refer to (``../shared``) next to the
queue's temporary workspaces; ``estimate`` prints each experiment's training
cost on the profile's GPU (docs/experiments.md).
"""

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from synthtrain.experiments import Definition, Estimate, ExperimentRun, check_keys, expand, load_definition
from synthtrain.params import Params, StageError, load_params

from synthtrain.cli import run_stage

EXECUTOR_DIR = Path(".dvc/tmp/exps")  # where DVC's queue makes each run's temporary workspace


def strings(node: Any):
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def link_siblings(params_path: Path, runs: list[ExperimentRun]) -> list[Path]:
    """Link each ``../<name>`` directory that params or runs refer to into EXECUTOR_DIR, so it resolves from a queued run too."""
    values = [*strings(yaml.safe_load(params_path.read_text())), *strings([run.sets for run in runs])]
    names = {value.split("/")[1] for value in values if value.startswith("../") and value.count("/") >= 1}
    links = []
    for name in sorted(names):
        target, link = (Path.cwd().parent / name).resolve(), EXECUTOR_DIR / name
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


def training_cost(run: ExperimentRun, params: Params, estimate: Estimate) -> tuple[int, float, float]:
    """(tokens, hours, USD) of a run's training on the estimate's GPU at its assumed MFU."""
    import torch

    from synthtrain.model import build_model, flops_per_token, llama_config, parameter_count
    from synthtrain.hardware import GPU_PEAK_TFLOPS

    model = run.sets.get("train.model", params.train.model)
    seq_len = run.sets.get("tokenize.seq_len", params.tokenize.seq_len)
    tokens = run.sets.get("train.tokens", params.train.tokens) or estimate.tokens.get(run.config)
    if tokens is None:
        raise StageError(f"run {run.name} trains one epoch (train.tokens: null): give its tokens in estimate.tokens.{run.config}")
    peak = dict(GPU_PEAK_TFLOPS).get(estimate.gpu)
    if peak is None:
        raise StageError(f"estimate.gpu = {estimate.gpu!r}: not one of {', '.join(name for name, _ in GPU_PEAK_TFLOPS)}")
    config = llama_config(model, params.tokenizer.vocab_size, seq_len, eos_id=0, pad_id=0)  # ids do not change the FLOPs
    with torch.device("meta"):  # shapes only: no memory, no time
        parameters = parameter_count(build_model(config))
    seconds = tokens * flops_per_token(config, parameters, seq_len) / (peak * 1e12 * estimate.mfu)
    hours = seconds / 3600
    return tokens, hours, hours * estimate.price_per_hour


def print_estimate(definition: Definition, runs: list[ExperimentRun], params: Params) -> float:
    if definition.estimate is None:
        raise StageError("this profile has no `estimate` section (gpu, mfu, price_per_hour, budget_usd)")
    estimate = definition.estimate
    print(f"training cost on {estimate.gpu} at {estimate.mfu:.0%} MFU and ${estimate.price_per_hour:.2f}/h "
          "(the train stage's budget guard re-checks each run from its timed steps):")
    total = 0.0
    for experiment in definition.experiments:
        costs = [training_cost(run, params, estimate) for run in runs if run.experiment == experiment]
        tokens, hours, usd = (sum(c[i] for c in costs) for i in range(3))
        total += usd
        print(f"  {experiment}: {len(costs)} runs, {tokens / 1e9:.2f}B tokens, {hours:.1f} GPU-h, ${usd:.2f}")
    verdict = "within" if total <= estimate.budget_usd else "OVER"
    print(f"  total: ${total:.2f}, {verdict} the plan's ${estimate.budget_usd:.0f}")
    return total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Queue the research experiments as DVC experiments")
    parser.add_argument("command", choices=["queue", "list", "estimate"])
    parser.add_argument("experiments", nargs="*", help="experiment names (default: all)")
    parser.add_argument("--profile", default="cpu", help="experiments/<profile>.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--force", action="store_true", help="queue runs that exist already (dvc exp run --force)")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc commands only")
    args = parser.parse_args(argv)
    definition = load_definition(args.profile)
    runs = expand(definition, args.experiments)
    params = load_params(args.params)
    check_keys(runs, params)
    if args.command == "list":
        for run in runs:
            print(run.name)
    elif args.command == "estimate":
        total = print_estimate(definition, runs, params)
        if total > definition.estimate.budget_usd:
            sys.exit(1)
    else:
        for link in link_siblings(args.params, runs) if not args.dry_run else []:
            print(f"experiments: linked {link} -> {link.resolve()} (queued runs resolve ../{link.name} from there)")
        print(f"experiments: queued {queue(runs, args.force, args.dry_run)} of {len(runs)} runs "
              f"({'dry run' if args.dry_run else 'run them: dvc exp run --run-all'})")


if __name__ == "__main__":
    run_stage(main)
