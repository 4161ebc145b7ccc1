"""Benchmark: the train stage's optimizer step per preset, against a plain Hugging Face Llama step.

It also checks the stability of the MFU the stage reports when another job shares the cores.

Target (issue: training throughput): the 5M and 25M presets at >= 40 % of the
quiet bf16 matmul peak, or the profile that says what bounds them; the speed-up
over the plain HF step printed; the reported MFU moving by < 5 points when a
competing CPU job runs during start-up.

Per preset (1M, 5M, 25M at the CPU experiments' shape: seq 256, 2 x 16
sequences = 8,192 tokens per optimizer step), on the first sequences of
``data/tokens/train`` (random tokens where the pipeline has not run), four
steps are built on the same initial weights and timed in turns, one step each
per round, so that a busy moment of the shared machine hits all of them
(``compile_s`` is the first step's time: short when inductor's on-disk cache
already holds the graphs, 30-80 s on a fresh machine):
- ``ours``: ``synthtrain.training.train_step`` as the stage runs a long run
  (``train.compile: auto`` compiles runs of 100 steps or more:
  ``training.compiled``, eager attention, fused AdamW) at the precision
  ``train.precision: auto`` chooses;
- ``ours_uncompiled``: the same step without torch.compile (SDPA attention),
  the stage's step before this benchmark's issue bar the fused AdamW;
- ``hf_fp32`` and ``hf_bf16_autocast``: ``model(input_ids, labels=input_ids)
  .loss.backward()`` per micro-batch, then ``torch.optim.AdamW.step()``.
The compiled and uncompiled steps see the same batches from the same weights,
so their per-step losses show what compiling does to the numerics
(``loss_max_abs_diff``, goal < 0.02 nats over the timed steps).

MFU is nanoGPT's (6N + 12·L·H·Q·T) x tokens/s over the matmul peak as the
stage takes it: the best of the one measured at start
(``synthtrain.hardware.matmul_peak``) and this machine's record
(``recorded_peak``). The
``matmul_bound`` line times the preset's own forward and backward GEMMs alone
(each linear layer's three products, attention's four batched ones, at the
precision in use): the MFU the step would reach if everything else took no
time. It says what bounds a preset whose MFU stays low, with the profile of
one of our steps (share of CPU time per operator; inductor's fused
elementwise, norm, softmax and loss kernels counted together).

The load check runs the stage's measurement (``choose_precision`` at start-up,
``sample_peak`` at each held-out evaluation, ``final_peak`` after training)
around 12 uncompiled 5M steps twice: alone, then with a two-thread matmul job
started just before start-up and stopped when the start-up peak is taken. It
prints the MFU the stage reports (over the best of the measured peaks and this
machine's record, as on any machine that has trained before), the MFU over the
run's own measurements only (a first run on a new machine), and over the
start-up peak only, as the stage computed it before. On a shared virtual
machine whose speed drifts with its neighbours, only the first of the three is
stable: a run's own measurements follow the drift.

    python bench/train_speed.py [--presets 1M 5M 25M] [--rounds 5] [--no-load-check]
"""

import argparse
import json
import subprocess
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
from synthtrain.hardware import cpu_info, matmul_peaks, recorded_peak  # noqa: E402
from synthtrain.model import PRESETS, build_model, flops_per_token, llama_config, parameter_count  # noqa: E402
from synthtrain.params import parse_params  # noqa: E402
from synthtrain.training import LossSum, TokenSet, adamw, choose_precision, compiled, final_peak, layout, sample_peak, train_step  # noqa: E402

VOCAB = 8192
SEQ_LEN = 256
MICRO_BATCH = 16
ACCUMULATION = 2
BATCH_TOKENS = SEQ_LEN * MICRO_BATCH * ACCUMULATION
CPU = torch.device("cpu")
# A competing job for the load check: two threads of fp32 matmuls until killed.
EVAL_EVERY = 4  # the load check's steps between held-out evaluations, where the stage measures the peak again
COMPETITOR = "import torch; torch.set_num_threads(2); a = torch.randn(1024, 1024)\nwhile True: a @ a"


def token_set(directory: Path, sequences: int) -> tuple[TokenSet, str]:
    """data/tokens/train when the pipeline has made it (at seq 256), else random tokens in its layout."""
    real = REPO / "data/tokens/train"
    if (real / "index.json").is_file() and json.loads((REPO / "data/tokens/metadata.json").read_text())["seq_len"] == SEQ_LEN:
        return TokenSet(real), "data/tokens/train"
    rng = np.random.default_rng(0)
    np.save(directory / "tokens-00000.npy", rng.integers(3, VOCAB, (sequences, SEQ_LEN), dtype=np.uint16))
    np.save(directory / "mask-00000.npy", np.ones((sequences, SEQ_LEN), dtype=np.uint8))
    (directory / "index.json").write_text(json.dumps({"shards": [{"tokens": "tokens-00000.npy", "mask": "mask-00000.npy", "sequences": sequences}]}))
    return TokenSet(directory), "random tokens"


def model_for(preset: str):
    torch.manual_seed(0)
    model = build_model(llama_config(preset, VOCAB, SEQ_LEN, 0, 0))
    model.config.use_cache = False
    return model


def our_step(preset: str, data: TokenSet, bf16: bool, compile_it: bool):
    config = parse_params({"sources": {"builtin": {"kind": "builtin"}}, "tokenize": {"seq_len": SEQ_LEN},
                           "train": {"model": preset, "batch_tokens": BATCH_TOKENS, "micro_batch": MICRO_BATCH}}).train  # fmt: skip
    accelerator = Accelerator(cpu=True)
    model = model_for(preset)
    model, optimizer = accelerator.prepare(model, adamw(model, config, CPU))
    loss_sum_of = compiled(model, bf16) if compile_it else LossSum(model, bf16)
    plan = layout(config, SEQ_LEN, 1, data.sequences)
    return lambda number: train_step(model, optimizer, accelerator, data, plan, number, MICRO_BATCH, loss_sum_of, config.grad_clip)[0]


def hf_step(preset: str, data: TokenSet, bf16: bool):
    model = model_for(preset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(number: int) -> float:
        total = 0.0
        for micro in range(ACCUMULATION):
            tokens, _ = data.batch((number * ACCUMULATION + micro) * MICRO_BATCH, MICRO_BATCH, CPU)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=tokens, labels=tokens).loss
            (loss / ACCUMULATION).backward()
            total += loss.item() / ACCUMULATION
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    return step


def matmul_bound_seconds(preset: str, dtype: torch.dtype) -> float:
    """Seconds per optimizer step of the preset's GEMMs alone, forward and backward, each timed at its best."""
    shape = PRESETS[preset]
    head_dim, tokens, sequences = shape.hidden // shape.heads, MICRO_BATCH * SEQ_LEN, MICRO_BATCH
    linears = [(shape.hidden, shape.hidden), (shape.hidden, shape.kv_heads * head_dim), (shape.hidden, shape.kv_heads * head_dim),
               (shape.hidden, shape.hidden), (shape.hidden, shape.intermediate), (shape.hidden, shape.intermediate),
               (shape.intermediate, shape.hidden)]  # fmt: skip
    per_layer = 0.0
    for k, n in linears:  # forward X·Wᵀ, backward dY·W and dYᵀ·X
        per_layer += sum(_best_matmul_seconds_of(m, kk, nn, dtype) for m, kk, nn in ((tokens, k, n), (tokens, n, k), (n, tokens, k)))
    # attention: scores Q·Kᵀ and weighted sum P·V forward, two products each backward, over batch x heads
    attention = 3 * (_best_bmm_seconds(sequences * shape.heads, SEQ_LEN, head_dim, SEQ_LEN, dtype)
                     + _best_bmm_seconds(sequences * shape.heads, SEQ_LEN, SEQ_LEN, head_dim, dtype))
    head = sum(_best_matmul_seconds_of(m, k, n, dtype) for m, k, n in ((tokens, shape.hidden, VOCAB), (tokens, VOCAB, shape.hidden),
                                                                       (VOCAB, tokens, shape.hidden)))
    return ACCUMULATION * (shape.layers * (per_layer + attention) + head)


def _best_matmul_seconds_of(m: int, k: int, n: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return _best_of(lambda: a @ b)


def _best_bmm_seconds(batch: int, m: int, k: int, n: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(batch, m, k, dtype=dtype), torch.randn(batch, k, n, dtype=dtype)
    return _best_of(lambda: torch.bmm(a, b))


def _best_of(run, repeats: int = 5) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def bench_preset(preset: str, data: TokenSet, bf16: bool, peak: float, rounds: int) -> dict:
    variants = {"ours": our_step(preset, data, bf16, True), "ours_uncompiled": our_step(preset, data, bf16, False),
                "hf_fp32": hf_step(preset, data, False), "hf_bf16_autocast": hf_step(preset, data, True)}  # fmt: skip
    warmup = {}
    for name, step in variants.items():  # step 0: allocation and, for ours, compiling
        started = time.perf_counter()
        step(0)
        warmup[name] = time.perf_counter() - started
    times = {name: [] for name in variants}
    losses = {name: [] for name in variants}
    for number in range(1, rounds + 1):
        for name, step in variants.items():
            started = time.perf_counter()
            losses[name].append(step(number))
            times[name].append(time.perf_counter() - started)
    model = model_for(preset)
    flops = flops_per_token(model.config, parameter_count(model), SEQ_LEN)
    bound = matmul_bound_seconds(preset, torch.bfloat16 if bf16 else torch.float32)
    seconds = {name: float(np.median(values)) for name, values in times.items()} | {"matmul_bound": bound}
    figures = {"parameters": parameter_count(model), "mflop_per_token": flops / 1e6, "compile_s": warmup["ours"],
               "loss_max_abs_diff": float(np.max(np.abs(np.array(losses["ours"]) - np.array(losses["ours_uncompiled"]))))}
    for name, value in seconds.items():
        tokens_per_s = BATCH_TOKENS / value
        figures |= {f"{name}_tokens_per_s": tokens_per_s, f"{name}_mfu_pct": 100 * flops * tokens_per_s / peak,
                    f"{name}_speedup_vs_hf_fp32": seconds["hf_fp32"] / value,
                    f"{name}_speedup_vs_hf_bf16_autocast": seconds["hf_bf16_autocast"] / value}  # fmt: skip
    figures["profile_ours_pct"] = profile(variants["ours"], rounds + 1)
    return figures


def profile(step, number: int, top: int = 6) -> dict[str, float]:
    """Share of one step's CPU time per operator (self time; inductor's fused kernels under their graph's name)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        step(number)
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    shares = {}
    for event in sorted(events, key=lambda event: -event.self_cpu_time_total):
        name = "inductor fused kernels" if event.key.startswith("## Call CompiledFxGraph") else event.key
        shares[name] = shares.get(name, 0.0) + 100 * event.self_cpu_time_total / total
    return dict(sorted(shares.items(), key=lambda item: -item[1])[:top])


def load_check(data: TokenSet, steps: int = 12) -> dict:
    """The stage's MFU for uncompiled 5M steps, alone and with a competing job during start-up."""
    config = parse_params({"sources": {"builtin": {"kind": "builtin"}}, "tokenize": {"seq_len": SEQ_LEN},
                           "train": {"model": "5M", "batch_tokens": BATCH_TOKENS, "micro_batch": MICRO_BATCH}}).train  # fmt: skip
    model = model_for("5M")
    flops_per_token_5m = flops_per_token(model.config, parameter_count(model), SEQ_LEN)
    results = {}
    for label in ("alone", "competing_job_at_start"):
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if label != "alone" else None
        if competitor:
            time.sleep(1.0)  # the job is running when start-up begins
        hardware = choose_precision(config, CPU)
        if competitor:
            competitor.kill()
            competitor.wait()
        step = our_step("5M", data, hardware["precision"] == "bf16", False)
        step(0)
        seconds = 0.0
        for number in range(1, steps + 1):
            started = time.perf_counter()
            step(number)
            seconds += time.perf_counter() - started
            if number % EVAL_EVERY == 0 and number < steps:
                sample_peak(hardware, CPU, config)  # as the stage does at each held-out evaluation
        tokens_per_s = steps * BATCH_TOKENS / seconds
        flops = flops_per_token_5m * tokens_per_s
        start = hardware["matmul_tflops"][hardware["precision"]] * 1e12
        peaks = final_peak(hardware, CPU, config)
        results[label] = {"tokens_per_s": tokens_per_s, "peak_tflops_start": peaks["peak_tflops_start"], "peak_tflops_end": peaks["peak_tflops_end"],
                          "mfu_pct": 100 * flops / peaks["peak_flops"], "mfu_this_run_peaks_only_pct": 100 * flops / (peaks["peak_tflops_this_run"] * 1e12),
                          "mfu_start_peak_only_pct": 100 * flops / start}  # fmt: skip
    for figure in ("mfu", "mfu_this_run_peaks_only", "mfu_start_peak_only"):
        results[f"{figure}_difference_points"] = abs(results["alone"][f"{figure}_pct"] - results["competing_job_at_start"][f"{figure}_pct"])
    return results


def flat(figures: dict, prefix: str = "") -> dict:
    """One row per figure in the results table: nested names joined by '.'."""
    rows = {}
    for name, value in figures.items():
        rows |= flat(value, f"{prefix}{name}.") if isinstance(value, dict) else {f"{prefix}{name}": value}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["1M", "5M", "25M"], choices=["1M", "5M", "25M"])
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per variant, one of each per round")
    parser.add_argument("--no-load-check", action="store_true")
    args = parser.parse_args()
    peaks = matmul_peaks(CPU)
    precision = max(peaks, key=peaks.get)  # what train.precision: auto chooses
    bf16 = precision == "bf16"
    record = recorded_peak(precision) or 0.0
    peak = max(peaks[precision], record)  # as the stage divides: this machine's best
    machine = cpu_info()
    print(f"machine: {machine['cpu']} ({', '.join(machine['cpu_flags'])}), {machine['cores']} cores, torch {torch.__version__}")
    print(f"matmul peaks (stage's measurement): bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s, fp32 {peaks['fp32'] / 1e9:,.0f} GFLOP/s; "
          f"auto chooses {precision}; this machine's record {record / 1e9:,.0f} GFLOP/s; MFU below is against {peak / 1e9:,.0f} GFLOP/s")
    figures = {"bf16_peak_gflops": peaks["bf16"] / 1e9, "fp32_peak_gflops": peaks["fp32"] / 1e9, "precision": precision,
               "recorded_peak_gflops": record / 1e9, "mfu_peak_gflops": peak / 1e9}
    with tempfile.TemporaryDirectory() as tmp:
        data, source = token_set(Path(tmp), (args.rounds + 2) * MICRO_BATCH * ACCUMULATION)
        for preset in args.presets:
            result = bench_preset(preset, data, bf16, peak, args.rounds)
            figures[preset] = result
            print(f"\n{preset}: {result['parameters']:,} parameters, {result['mflop_per_token']:.1f} MFLOP/token; seq {SEQ_LEN}, "
                  f"{ACCUMULATION} x {MICRO_BATCH} sequences per step, median of {args.rounds} steps in turns; compile {result['compile_s']:.0f} s")
            for name in ("ours", "ours_uncompiled", "hf_fp32", "hf_bf16_autocast", "matmul_bound"):
                print(f"  {name:18s} {result[f'{name}_tokens_per_s']:8,.0f} tokens/s  MFU {result[f'{name}_mfu_pct']:5.1f}%  "
                      f"x{result[f'{name}_speedup_vs_hf_fp32']:.2f} vs plain HF fp32, x{result[f'{name}_speedup_vs_hf_bf16_autocast']:.2f} vs HF bf16")
            print(f"  compiled vs uncompiled loss, max |difference| over the timed steps: {result['loss_max_abs_diff']:.4f} nats")
            print("  ours, share of a step's CPU time: " + ", ".join(f"{name} {share:.0f}%" for name, share in result["profile_ours_pct"].items()))
        if not args.no_load_check:
            check = load_check(data)
            figures["load_check"] = check
            for label in ("alone", "competing_job_at_start"):
                row = check[label]
                print(f"load check, {label}: peak {row['peak_tflops_start']:.3f} TFLOP/s at start, {row['peak_tflops_end']:.3f} at the end; "
                      f"{row['tokens_per_s']:,.0f} tokens/s; MFU reported {row['mfu_pct']:.1f}% (this run's peaks only: "
                      f"{row['mfu_this_run_peaks_only_pct']:.1f}%, start-up peak only: {row['mfu_start_peak_only_pct']:.1f}%)")
            print(f"load check: reported MFU differs by {check['mfu_difference_points']:.1f} points (goal < 5); with this run's peaks only by "
                  f"{check['mfu_this_run_peaks_only_difference_points']:.1f}, with the start-up peak only by {check['mfu_start_peak_only_difference_points']:.1f}")
    write_results("train_speed", flat(figures), settings={"presets": args.presets, "seq_len": SEQ_LEN, "micro_batch": MICRO_BATCH,
                                                    "accumulation": ACCUMULATION, "tokens_per_step": BATCH_TOKENS,
                                                    "timed_steps": args.rounds, "data": source, "device": "cpu"})  # fmt: skip


if __name__ == "__main__":
    main()
