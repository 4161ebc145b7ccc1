"""Benchmark: the train stage's optimizer step, against a plain Hugging Face Llama step.

Target (issue: train stage): on this CPU, 25M preset at seq 512, tokens/s and
MFU against the measured bf16 matmul peak (goal >= 40 %), and our tokens/s over
the plain HF-Llama fp32 step for the same model.

Ours: ``synthtrain.training.train_step`` (masked loss over the global batch,
accumulation, clipping, AdamW) at the precision ``train.precision: auto``
chooses, on packed shards of random tokens in tokenize's layout, through an
``Accelerator`` as the stage runs it. Baselines, measured in the same run on the
same model, micro-batch and global batch: ``model(input_ids,
labels=input_ids).loss.backward()`` per micro-batch then ``AdamW.step()``, in
fp32 and under bf16 autocast. MFU is nanoGPT's (6N + 12·L·H·Q·T) × tokens/s
over a peak; both the bf16 and the fp32 matmul peaks are measured (2048²,
best single matmul in 3 s) and both MFUs shown.

Reading the MFU: on a CPU without AMX or AVX512-BF16 (see the machine's flags),
bf16 matmuls are emulated and run well below fp32, so an "MFU against the bf16
peak" is over 100 % for any fp32 run and says nothing. The train stage
therefore times both peaks at start-up, computes in the faster precision
(``train.precision: auto``) and reports MFU against that one's peak
(``peak_source`` in metrics/train/metrics.json); ``ours_mfu_vs_peak_in_use_pct``
is that figure here. Our step and the plain HF step differ in that ours runs
the model with ``use_cache=False`` and computes one summed loss per micro-batch
with no shifted copy of the labels (where the difference comes from is not
profiled). ``torch.compile`` gave no gain on the 2-core CPU for the 5M preset,
so it is off by default. The script is CPU-only; GPU throughput comes from the
train stage itself (``dvc exp run -S train.model=125M ...``, README: Training).
``tests/test_train.py`` checks that two processes (``accelerate launch
--multi_gpu --num_processes 2``, gloo on CPU) give the same per-step losses as
one at the same global batch.

    python bench/train_speed.py [--preset 25M] [--seq-len 512] [--micro-batch 8] [--accumulation 2] [--steps 4]
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from accelerate import Accelerator  # noqa: E402

from bench.machine import write_results  # noqa: E402
from synthtrain.model import build_model, flops_per_token, llama_config, parameter_count  # noqa: E402
from synthtrain.params import parse_params  # noqa: E402
from synthtrain.training import TokenSet, adamw, choose_precision, layout, matmul_flops, train_step  # noqa: E402

VOCAB = 8192


def shards(directory: Path, sequences: int, seq_len: int) -> TokenSet:
    rng = np.random.default_rng(0)
    np.save(directory / "tokens-00000.npy", rng.integers(3, VOCAB, (sequences, seq_len), dtype=np.uint16))
    np.save(directory / "mask-00000.npy", np.ones((sequences, seq_len), dtype=np.uint8))
    (directory / "index.json").write_text(json.dumps({"shards": [{"tokens": "tokens-00000.npy", "mask": "mask-00000.npy", "sequences": sequences}]}))
    return TokenSet(directory)


def time_steps(step, steps: int) -> float:
    """Seconds per step, the median of `steps` after one warm-up step."""
    step(0)
    times = []
    for number in range(1, steps + 1):
        started = time.perf_counter()
        step(number)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def hf_step(preset: str, seq_len: int, data: TokenSet, micro_batch: int, accumulation: int, bf16: bool):
    torch.manual_seed(0)
    model = build_model(llama_config(preset, VOCAB, seq_len, 0, 0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(number: int) -> None:
        for micro in range(accumulation):
            tokens, _ = data.batch((number * accumulation + micro) * micro_batch, micro_batch, torch.device("cpu"))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=tokens, labels=tokens).loss
            (loss / accumulation).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="25M")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    batch_tokens = args.seq_len * args.micro_batch * args.accumulation
    config = parse_params({"sources": {"builtin": {"kind": "builtin"}}, "tokenize": {"seq_len": args.seq_len},
                           "train": {"model": args.preset, "batch_tokens": batch_tokens, "micro_batch": args.micro_batch}}).train  # fmt: skip
    cpu = torch.device("cpu")
    peaks = {"bf16": matmul_flops(cpu, torch.bfloat16, seconds=3), "fp32": matmul_flops(cpu, torch.float32, seconds=3)}
    hardware = choose_precision(config, cpu)

    with tempfile.TemporaryDirectory() as tmp:
        data = shards(Path(tmp), (args.steps + 1) * args.micro_batch * args.accumulation, args.seq_len)
        accelerator = Accelerator(cpu=True)
        torch.manual_seed(0)
        model_config = llama_config(args.preset, VOCAB, args.seq_len, 0, 0)
        model = build_model(model_config)
        model.config.use_cache = False
        parameters = parameter_count(model)
        flops = flops_per_token(model_config, parameters, args.seq_len)
        optimizer = adamw(model, config, cpu)
        model, optimizer = accelerator.prepare(model, optimizer)
        plan = layout(config, args.seq_len, 1, data.sequences)
        bf16 = hardware["precision"] == "bf16"
        # (printed label, results-file prefix) -> seconds per step
        results = {(f"ours ({hardware['precision']}, train.precision: auto)", "ours"):
                   time_steps(lambda n: train_step(model, optimizer, accelerator, data, plan, n, args.micro_batch, bf16, 1.0), args.steps)}
        results[("plain HF Llama step, fp32", "hf_fp32")] = time_steps(
            hf_step(args.preset, args.seq_len, data, args.micro_batch, args.accumulation, False), args.steps)
        results[("plain HF Llama step, bf16 autocast", "hf_bf16_autocast")] = time_steps(
            hf_step(args.preset, args.seq_len, data, args.micro_batch, args.accumulation, True), args.steps)

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"matmul peaks (2048², best of 3 s): bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s, fp32 {peaks['fp32'] / 1e9:,.0f} GFLOP/s; "
          f"auto chooses {hardware['precision']}")
    print(f"{args.preset} preset: {parameters:,} parameters, {flops / 1e6:.1f} MFLOP/token; seq {args.seq_len}, "
          f"{args.accumulation} x {args.micro_batch} sequences = {batch_tokens:,} tokens per step, median of {args.steps} steps")
    baseline = results[("plain HF Llama step, fp32", "hf_fp32")]
    figures = {"bf16_peak_gflops": peaks["bf16"] / 1e9, "fp32_peak_gflops": peaks["fp32"] / 1e9}
    for (name, key), seconds in results.items():
        tokens_per_s = batch_tokens / seconds
        achieved = flops * tokens_per_s
        print(f"  {name:38s} {tokens_per_s:8,.0f} tokens/s  {achieved / 1e9:6,.0f} GFLOP/s  MFU vs bf16 peak {achieved / peaks['bf16']:6.1%}"
              f"  vs fp32 peak {achieved / peaks['fp32']:6.1%}  x{baseline / seconds:.2f} vs plain HF fp32")
        figures.update({f"{key}_tokens_per_s": tokens_per_s, f"{key}_gflops": achieved / 1e9,
                        f"{key}_mfu_vs_bf16_peak_pct": 100 * achieved / peaks["bf16"], f"{key}_mfu_vs_fp32_peak_pct": 100 * achieved / peaks["fp32"],
                        f"{key}_speedup_vs_hf_fp32": baseline / seconds})
    in_use = figures[f"ours_mfu_vs_{hardware['precision']}_peak_pct"]
    figures["ours_mfu_vs_peak_in_use_pct"] = in_use
    print(f"ours: MFU {in_use:.1f}% of the {hardware['precision']} peak (the precision in use); goal >= 40%")
    write_results(
        "train_speed", figures,
        settings={"preset": args.preset, "parameters": parameters, "mflop_per_token": flops / 1e6, "seq_len": args.seq_len,
                  "micro_batch": args.micro_batch, "accumulation": args.accumulation, "tokens_per_step": batch_tokens,
                  "timed_steps": args.steps, "precision_auto_chooses": hardware["precision"], "device": "cpu"},
    )


if __name__ == "__main__":
    main()
