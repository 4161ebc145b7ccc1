"""Benchmark: a teacher writing a ``kind: generate`` source, in records/s, fp32 against bf16.

Ours: ``synthtrain.synthesis.generate.generate``, as the download stage runs it, on
``--records`` records of ``--method`` (default self_instruct from the 175 human seed
tasks, the ``distilled`` source of exp1) with ``--model`` as teacher (default the
teacher stage's SmolLM2-135M-Instruct), batched (``--batch`` prompts, left padding,
KV cache), sampling as the source's defaults do (temperature 0.7, top-p 0.95), at most
``--max-new-tokens`` per reply. Records/s counts kept records; prompts/s counts every
attempt (rejects included).

Each precision is measured (``precision`` fp32 and bf16), and what the stage picks
(``synthtrain.generation.use_faster_precision``: the faster of the two in a timed
pass) is recorded; machines differ, so the choice is measured, not assumed. The
baseline, in the same run on the same teacher: one prompt at a time (batch 1, still
with the KV cache) in fp32, plain ``generate`` as transformers runs it by default.

Where the time goes: ``torch.profiler`` over one batch of the chosen precision, the
share of CPU time in the linear layers' matrix products, in attention, and in
everything else (sampling, cache updates, Python); the top operators are printed.
On a GPU the script skips nothing but the profile's interpretation is the same:
``python bench/generate_speed.py --batch 64``.

    python bench/generate_speed.py [--model smollm2-135m-instruct] [--records 48] [--batch 16] [--max-new-tokens 128]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import write_results  # noqa: E402
from synthtrain.generation import Generator, load_model, use_faster_precision  # noqa: E402
from synthtrain.params import GenerateSource  # noqa: E402
from synthtrain.records import RecordWriter, RejectWriter  # noqa: E402
from synthtrain.synthesis.generate import generate  # noqa: E402

SEED_FILE = REPO.parent / "shared/data/human/self-instruct-seed-tasks.jsonl"
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")
ATTENTION = ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::softmax", "aten::_softmax")


def source_for(model: str, method: str, records: int, batch: int, max_new_tokens: int) -> GenerateSource:
    return GenerateSource(kind="generate", teacher=model, method=method, n=records, shard_prompts=records,
                          seed_file=str(SEED_FILE) if method != "magpie" else None,
                          sampling={"max_new_tokens": max_new_tokens, "batch_size": batch})


def run(name: str, source: GenerateSource, precision: str) -> dict:
    """Prints one line and returns its figures: seconds, records/s, prompts/s, generated tokens/s, kept, read."""
    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        with RecordWriter(f"{root}/r.parquet") as out, RejectWriter(f"{root}/j.parquet", "bench") as rejects:
            counts = generate(source, "bench", 200_000, out, rejects, root, precision=precision)
        seconds = time.perf_counter() - started  # model loading and the precision cast included, as in the stage
    rate = counts["kept"] / seconds
    print(f"{name:<44} {seconds:7.1f} s  {rate:6.2f} records/s  {counts['read'] / seconds:6.2f} prompts/s  "
          f"{counts['generation_tokens_per_s']:7.0f} generated tokens/s  (kept {counts['kept']} of {counts['read']})")
    return {"seconds": seconds, "records_per_s": rate, "prompts_per_s": counts["read"] / seconds,
            "generated_tokens_per_s": counts["generation_tokens_per_s"], "kept": counts["kept"], "read": counts["read"]}


def profile(source: GenerateSource, precision: str) -> dict:
    """Shares of CPU time of one batch's generate by kind of operator, and the top operators."""
    model, tokenizer = load_model(source.teacher)
    use_faster_precision(model, source.sampling.batch_size, precision)
    generator = Generator(model, tokenizer, source.sampling, seed=0)
    prompts = [f"Write a short note about item {number}." for number in range(source.sampling.batch_size)]
    generator(prompts[:2])  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        generator(prompts)
        wall = time.perf_counter() - started
    events = profiler.key_averages()
    self_seconds = {event.key: event.self_cpu_time_total / 1e6 for event in events}
    total = sum(self_seconds.values())
    matmul = sum(seconds for key, seconds in self_seconds.items() if key in MATMUL)
    attention = sum(seconds for key, seconds in self_seconds.items() if key in ATTENTION)
    top = sorted(self_seconds.items(), key=lambda item: -item[1])[:8]
    print(f"profile ({precision}, one batch of {len(prompts)}, {wall:.1f} s): matmul {matmul / total:.0%}, attention "
          f"{attention / total:.0%}, other operators {1 - (matmul + attention) / total:.0%} of operator time; top: "
          + ", ".join(f"{key} {seconds / total:.0%}" for key, seconds in top))
    return {"profile_wall_seconds": wall, "profile_matmul_share": matmul / total, "profile_attention_share": attention / total,
            "profile_other_share": 1 - (matmul + attention) / total,
            "profile_top_operators": {key: round(seconds / total, 4) for key, seconds in top}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a teacher name or a save_pretrained folder")
    parser.add_argument("--method", default="self_instruct", choices=["self_instruct", "evol_instruct", "magpie"])
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"{device}; teacher {args.model}; {args.method}, {args.records} records, batch {args.batch}, max_new_tokens {args.max_new_tokens}")
    batched = source_for(args.model, args.method, args.records, args.batch, args.max_new_tokens)
    model, _ = load_model(args.model)
    chosen = use_faster_precision(model, args.batch)
    del model
    print(f"the stage's choice on this machine (precision auto): {chosen}")
    figures = {"precision_chosen": chosen}
    for precision in ("fp32", "bf16"):
        result = run(f"ours: batch {args.batch}, {precision}", batched, precision)
        figures.update({f"ours_{precision}_{key}": value for key, value in result.items()})
    single_records = max(8, args.records // 4)
    single = run("baseline: one prompt at a time, fp32", source_for(args.model, args.method, single_records, 1, args.max_new_tokens), "fp32")
    figures.update({f"one_at_a_time_{key}": value for key, value in single.items()})
    figures["bf16_speed_vs_fp32"] = figures["ours_bf16_records_per_s"] / figures["ours_fp32_records_per_s"]
    figures["speedup_vs_one_at_a_time"] = figures[f"ours_{chosen}_records_per_s"] / single["records_per_s"]
    figures["tokens_speedup_vs_one_at_a_time"] = figures[f"ours_{chosen}_generated_tokens_per_s"] / single["generated_tokens_per_s"]
    print(f"bf16 / fp32: x{figures['bf16_speed_vs_fp32']:.2f} records/s; ours ({chosen}) / one at a time: "
          f"x{figures['speedup_vs_one_at_a_time']:.2f} records/s, x{figures['tokens_speedup_vs_one_at_a_time']:.2f} generated tokens/s")
    figures.update(profile(batched, chosen))
    write_results(
        "generate_speed", figures,
        settings={"model": args.model if not os.path.isdir(args.model) else os.path.relpath(args.model, REPO), "method": args.method,
                  "records": args.records, "one_at_a_time_records": single_records, "batch": args.batch,
                  "max_new_tokens": args.max_new_tokens, "temperature": batched.sampling.temperature, "top_p": batched.sampling.top_p,
                  "device": device},
    )


if __name__ == "__main__":
    main()
