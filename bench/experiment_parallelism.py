"""Benchmark: two experiments at a time (one torch thread each) against one experiment on every core.

Are two runs at a time (`dvc exp run --run-all -j 2`, one torch thread each) faster than
one run using every core, as `make experiments` runs them? Baseline: one process training
the CPU profile's model with all cores, measured in the same run.

    python bench/experiment_parallelism.py [--model 1M] [--steps 8]

Times AdamW training steps of the model preset on random tokens (micro-batch 16 ×
256, fp32, as the train stage runs it on a CPU without AMX) in one process with
all threads, then in one process per core with one thread each, all at once, and
prints the total tokens/s of each and their ratio.

Why two at a time can pay: the 1M model's matmuls are too small for two threads
to share well, and each experiment spends most of its non-training time in
single-threaded Python (imports, tokenizing, generation loops, DVC's checkout and
commit of the temporary workspace, and, on the first run of each new
(sample.strategy, seed) pair, the three sample stages), which a second experiment
overlaps. `make experiments` runs one at a time all the same, so that each run's
row in runs.csv is recorded as it finishes; two at a time remain a choice by hand
(docs/experiments.md).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import write_results  # noqa: E402


def train_steps(model_name: str, steps: int) -> float:
    """Tokens per second of `steps` training steps after 2 warm-up steps, in this process."""
    import torch

    from synthtrain.model import build_model, llama_config

    torch.manual_seed(0)
    model = build_model(llama_config(model_name, 8192, 256, eos_id=0, pad_id=0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 8192, (16, 256))
    for step in range(steps + 2):
        if step == 2:
            start = time.perf_counter()
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return steps * tokens.numel() / (time.perf_counter() - start)


def in_processes(model_name: str, steps: int, processes: int, threads: int) -> float:
    """Total tokens/s of `processes` concurrent processes with `threads` torch threads each."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--model", model_name, "--steps", str(steps), "--child"]
    children = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return sum(float(child.communicate()[0]) for child in children)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="1M")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(train_steps(args.model, args.steps))
        return
    cores = os.cpu_count() or 1
    together = in_processes(args.model, args.steps, 1, cores)
    apart = in_processes(args.model, args.steps, cores, 1)
    print(f"model {args.model}, {cores} cores, {args.steps} steps of 16 x 256 tokens")
    print(f"baseline: 1 process x {cores} threads: {together:,.0f} tokens/s")
    print(f"{cores} processes x 1 thread (J={cores}): {apart:,.0f} tokens/s in total, {apart / together:.2f}x the baseline")
    write_results(
        "experiment_parallelism",
        figures={"one_process_all_threads_tokens_per_s": together, "one_process_per_core_total_tokens_per_s": apart,
                 "speedup_vs_one_process": apart / together},
        settings={"model": args.model, "steps": args.steps, "cores": cores, "micro_batch": 16, "seq_len": 256, "precision": "fp32"},
    )


if __name__ == "__main__":
    main()
