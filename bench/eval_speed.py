"""Benchmark: the eval stage's batched generation and its held-out scoring.

Target (issue: eval stage): the default CPU eval of the 5M model in at most 3
minutes on this 2-core machine, with batched, left-padded, KV-cached generation.

Generation. Ours: ``synthtrain.generation.Generator`` (batches of
``eval.generation.batch_size``, the model's SDPA attention) on ``--prompts`` held-out
problems, greedy, ``eval.generation.max_new_tokens``. Baselines, in the same run
on the same prompts: one prompt at a time with ``model.generate`` (what
``research.print_samples`` does), and the same batches under eager attention
(which an earlier, contended measurement suggested was faster on CPU). Both baselines must produce the same replies as ours
(greedy decoding; checked).

Held-out scoring: ``synthtrain.evaluation.heldout.heldout_metrics`` on the first
``--records`` held-out records, in tokens per second.

The eval stage uses transformers' default attention (SDPA) because, measured
alone, it was the faster; a speed-up below 1 over eager attention here would
say otherwise. A model that never ends a turn before ``max_new_tokens`` (as a
barely trained default model does) is the slowest case for generation: a model
that ends its turns cuts that time. The whole stage's own timings are in
metrics/eval.json (``seconds_*``; section "The default pipeline").

    python bench/eval_speed.py [--model models/current] [--prompts 64] [--records 300]
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import write_results  # noqa: E402
from synthtrain.generation import Generator, load_model  # noqa: E402
from synthtrain.evaluation.heldout import heldout_metrics  # noqa: E402
from synthtrain.evaluation.ngram import NgramBaselines  # noqa: E402
from synthtrain.params import load_params  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models/current"))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--records", type=int, default=300)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    config = params.eval.generation
    model, tokenizer = load_model(args.model)
    prompts = [m[0]["content"] for m in pq.read_table(REPO / "data/raw/builtin_eval.parquet", columns=["messages"]).column("messages").to_pylist()]
    prompts = prompts[:: max(1, len(prompts) // args.prompts)][: args.prompts]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; {len(prompts)} prompts, "
          f"max_new_tokens {config.max_new_tokens}, batch {config.batch_size}")

    figures = {}

    def run(name: str, key: str, generator: Generator, batch_size: int | None = None) -> tuple[float, list[str]]:
        if batch_size is not None:
            generator.config = config.model_copy(update={"batch_size": batch_size})
        started = time.perf_counter()
        replies = [r.text for r in generator(prompts)]
        seconds = time.perf_counter() - started
        print(f"{name:<34} {seconds:7.1f} s  {len(prompts) / seconds:6.2f} prompts/s  {generator.new_tokens / seconds:7.0f} tokens/s")
        figures.update({f"{key}_seconds": seconds, f"{key}_prompts_per_s": len(prompts) / seconds,
                        f"{key}_generated_tokens_per_s": generator.new_tokens / seconds})
        return seconds, replies

    ours, replies = run("ours: batched, SDPA attention", "ours", Generator(model, tokenizer, config, 0))
    one_by_one, single = run("baseline: one prompt at a time", "one_at_a_time", Generator(model, tokenizer, config, 0), batch_size=1)
    eager = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True, attn_implementation="eager").eval()
    batched_eager, eager_replies = run("baseline: batched, eager attention", "batched_eager", Generator(eager, tokenizer, config, 0))
    print(f"speed-up: {one_by_one / ours:.2f}x over one at a time, {batched_eager / ours:.2f}x over eager attention; "
          f"same replies: {replies == single}, {replies == eager_replies}")
    figures.update({"speedup_vs_one_at_a_time": one_by_one / ours, "speedup_vs_batched_eager": batched_eager / ours,
                    "same_replies_as_one_at_a_time": replies == single, "same_replies_as_batched_eager": replies == eager_replies})

    heldout = sorted((REPO / "data/heldout").glob("*.parquet"))
    started = time.perf_counter()
    metrics = heldout_metrics(model, tokenizer, heldout, args.records, params.tokenize.seq_len, params.eval.batch_size,
                              params.tokenize.assistant_only, NgramBaselines.fit(REPO / "data/tokens/train", len(tokenizer)))
    seconds = time.perf_counter() - started
    print(f"held-out scoring: {metrics['heldout_tokens']:,} tokens in {seconds:.1f} s, {metrics['heldout_tokens'] / seconds:,.0f} tokens/s")
    figures.update({"heldout_tokens": metrics["heldout_tokens"], "heldout_seconds": seconds,
                    "heldout_tokens_per_s": metrics["heldout_tokens"] / seconds})
    write_results(
        "eval_speed", figures,
        settings={"model": os.path.relpath(args.model, REPO), "prompts": len(prompts), "heldout_records": args.records,
                  "max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size, "decoding": "greedy"},
    )


if __name__ == "__main__":
    main()
