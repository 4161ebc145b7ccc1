"""Benchmark: generation throughput of a ``kind: generate`` source, in records/s.

Ours: ``synthtrain.synthesis.generate.generate`` with method magpie (the teacher writes the
user turn, then the response) and ``--model`` as teacher, batched
(``--batch`` prompts, left padding, KV cache), sampling at temperature 1.0, at
most ``--max-new-tokens`` per turn. Records/s counts kept records; prompts/s
counts every attempt (rejects included).

Baselines, in the same run on the same teacher: the same source with batch 1
(one prompt at a time, still with the KV cache), and ours with bf16 autocast on
the CPU (the eval stage's Generator only uses bf16 on a GPU; this checks that
choice on this machine).

Batching gains less here than in the eval stage's greedy batches because a
sampled batch runs until its longest turn ends: one reply that runs to the cap
holds up all its neighbours. The Generator uses bf16 only on GPUs, and
``make collapse`` runs in fp32; a ``bf16_autocast_speed_vs_fp32`` below 1
confirms that choice for this CPU. The default ``models/current`` trains on
assistant turns only (``tokenize.assistant_only``), so it writes poor user
turns and many prompts are rejected (kept / read); that is why ``make
collapse`` trains its generations with ``assistant_only: false``. On a GPU the
script skips the bf16-on-CPU variant: ``python bench/generate_speed.py --model
<teacher> --batch 64``.

    python bench/generate_speed.py [--model models/current] [--records 64] [--batch 32] [--max-new-tokens 96]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import write_results  # noqa: E402
from synthtrain.synthesis.generate import generate  # noqa: E402
from synthtrain.params import GenerateSource  # noqa: E402
from synthtrain.records import RecordWriter, RejectWriter  # noqa: E402


def run(name: str, model: str, records: int, batch: int, max_new_tokens: int, bf16_cpu: bool = False) -> dict:
    """Prints one line and returns its figures: seconds, records/s, prompts/s, generated tokens/s, kept, read."""
    source = GenerateSource(kind="generate", teacher=model, method="magpie", n=records, shard_prompts=records,
                            sampling={"max_new_tokens": max_new_tokens, "batch_size": batch, "temperature": 1.0, "top_p": 1.0})
    with tempfile.TemporaryDirectory() as root:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_cpu)
        real_autocast = torch.autocast

        def cpu_bf16(device_type, *args, **kwargs):  # the Generator's own autocast, switched on for the CPU
            if bf16_cpu and device_type == "cpu":
                return autocast
            return real_autocast(device_type, *args, **kwargs)

        started = time.perf_counter()
        with RecordWriter(f"{root}/r.parquet") as out, RejectWriter(f"{root}/j.parquet", "bench") as rejects, \
                patch("synthtrain.generation.torch.autocast", cpu_bf16):
            counts = generate(source, "bench", 200_000, out, rejects, root)
        seconds = time.perf_counter() - started
    rate = counts["kept"] / seconds
    print(f"{name:<40} {seconds:7.1f} s  {rate:6.2f} records/s  {counts['read'] / seconds:6.2f} prompts/s  "
          f"{counts['generation_tokens_per_s']:7.0f} generated tokens/s  (kept {counts['kept']} of {counts['read']})")
    return {"seconds": seconds, "records_per_s": rate, "prompts_per_s": counts["read"] / seconds,
            "generated_tokens_per_s": counts["generation_tokens_per_s"], "kept": counts["kept"], "read": counts["read"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models/current"))
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"{device}; teacher {args.model}; magpie, {args.records} records, max_new_tokens {args.max_new_tokens}")
    ours = run(f"ours (batch {args.batch}, KV cache)", args.model, args.records, args.batch, args.max_new_tokens)
    single_records = max(8, args.records // 4)
    single = run("baseline: one prompt at a time", args.model, single_records, 1, args.max_new_tokens)
    print(f"ours / one at a time: x{ours['records_per_s'] / single['records_per_s']:.2f}")
    figures = {f"ours_{key}": value for key, value in ours.items()}
    figures.update({f"one_at_a_time_{key}": value for key, value in single.items()})
    figures["speedup_vs_one_at_a_time"] = ours["records_per_s"] / single["records_per_s"]
    if not torch.cuda.is_available():
        bf16 = run(f"variant: batch {args.batch}, bf16 autocast on CPU", args.model, args.records, args.batch, args.max_new_tokens, True)
        print(f"bf16 autocast / ours (fp32): x{bf16['records_per_s'] / ours['records_per_s']:.2f}")
        figures.update({f"bf16_autocast_{key}": value for key, value in bf16.items()})
        figures["bf16_autocast_speed_vs_fp32"] = bf16["records_per_s"] / ours["records_per_s"]
    write_results(
        "generate_speed", figures,
        settings={"model": os.path.relpath(args.model, REPO), "method": "magpie", "records": args.records,
                  "one_at_a_time_records": single_records, "batch": args.batch, "max_new_tokens": args.max_new_tokens,
                  "temperature": 1.0, "top_p": 1.0, "device": device},
    )


if __name__ == "__main__":
    main()
