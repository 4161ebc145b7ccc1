"""Benchmark: the teacher's batch size, static batches against continuous batching, in useful tokens/s.

Two workloads of SmolLM2-135M-Instruct (the teacher stage's model) in the precision
the stages pick (``use_faster_precision``), sampling as ``kind: generate`` does by default:

- **Replies** (Self-Instruct's response turns, where a ``distilled`` source spends
  most of its tokens): the first ``--prompts`` of the 175 human seed tasks as user
  turns, at most ``--max-new-tokens`` each, so replies end at different lengths.
  Static batches through ``synthtrain.generation.Generator`` (left padding, KV
  cache, as the download stage runs it) at each of ``--batches``, and transformers'
  continuous batching (``generate_batch``: a finished reply's slot takes the next
  prompt at once). Useful tokens count each reply up to its end; a static batch
  computes until its longest reply ends.
- **Blocks** (``make collapse``: every prompt a 64-token block of its Wikipedia
  text, every continuation exactly 64 tokens): static batches only, as every row runs to the end anyway.

The baseline is the ``kind: generate`` default batch size, 32 (``TeacherSampling``),
in the same run; ratios are against it. Sampling is seeded per batch, so the
replies, and their lengths, differ between batch sizes: one run each.

    python bench/generate_batching.py [--prompts 64] [--batches 8,16,32,64] [--max-new-tokens 256]
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers.generation import GenerationConfig

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import write_results  # noqa: E402
from synthtrain.generation import Generator, load_model, use_faster_precision  # noqa: E402
from synthtrain.params import GenerateSource, TeacherSampling  # noqa: E402
from synthtrain.synthesis.generate import read_seeds  # noqa: E402

TEACHER = "smollm2-135m-instruct"
SEED_FILE = REPO.parent / "shared/data/human/self-instruct-seed-tasks.jsonl"
HUMAN_TEXT = REPO.parent / "shared/data/human/wiki-sample.txt"  # make collapse's text
SAMPLING = TeacherSampling()  # the kind: generate defaults: batch size (the baseline), temperature, top-p
DEFAULT_BATCH = SAMPLING.batch_size
BLOCK_TOKENS = 64


def static(model, tokenizer, prompts: list[str], batch: int, max_new_tokens: int, fixed: bool) -> dict:
    generator = Generator(model, tokenizer, TeacherSampling(batch_size=batch, max_new_tokens=max_new_tokens), seed=0)
    started = time.perf_counter()
    replies = generator.complete(prompts, desc=f"batch {batch}", min_new_tokens=max_new_tokens if fixed else 0)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "useful_tokens": generator.new_tokens, "useful_tokens_per_s": generator.new_tokens / seconds,
            "capped": sum(not reply.stopped for reply in replies)}


def continuous(model, tokenizer, prompts: list[str], max_new_tokens: int) -> dict:
    ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=SAMPLING.temperature, top_p=SAMPLING.top_p,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    started = time.perf_counter()
    outputs = model.generate_batch(inputs=ids, generation_config=config, progress_bar=True)
    seconds = time.perf_counter() - started
    tokens = sum(len(output.generated_tokens) for output in outputs.values())
    return {"seconds": seconds, "useful_tokens": tokens, "useful_tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batches", default="8,16,32,64")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    batches = sorted({int(size) for size in args.batches.split(",")} | {DEFAULT_BATCH})
    model, tokenizer = load_model(TEACHER)
    precision = use_faster_precision(model, DEFAULT_BATCH)
    source = GenerateSource(kind="generate", teacher=TEACHER, method="self_instruct", n=1, seed_file=str(SEED_FILE))
    generator = Generator(model, tokenizer, SAMPLING, seed=0)
    replies = [generator.chat_prompt(task) for task in read_seeds(source)[: args.prompts]]
    generator.complete(replies[:2], desc="warm-up")
    print(f"{TEACHER} in {precision}; replies to {len(replies)} seed tasks, at most {args.max_new_tokens} new tokens")
    figures = {"precision": precision}
    for batch in batches:
        result = static(model, tokenizer, replies, batch, args.max_new_tokens, fixed=False)
        figures.update({f"replies_static_{batch}_{key}": value for key, value in result.items()})
        print(f"replies, static batch {batch:>3}: {result['seconds']:6.1f} s, {result['useful_tokens_per_s']:6.1f} useful tokens/s, "
              f"{result['capped']} of {len(replies)} replies capped", flush=True)
    result = continuous(model, tokenizer, replies, args.max_new_tokens)
    figures.update({f"replies_continuous_{key}": value for key, value in result.items()})
    print(f"replies, continuous batching: {result['seconds']:6.1f} s, {result['useful_tokens_per_s']:6.1f} useful tokens/s", flush=True)
    baseline = figures[f"replies_static_{DEFAULT_BATCH}_useful_tokens_per_s"]
    for batch in batches:
        figures[f"replies_static_{batch}_vs_batch_{DEFAULT_BATCH}"] = figures[f"replies_static_{batch}_useful_tokens_per_s"] / baseline
    figures[f"replies_continuous_vs_batch_{DEFAULT_BATCH}"] = figures["replies_continuous_useful_tokens_per_s"] / baseline

    ids = tokenizer(HUMAN_TEXT.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    blocks = [tokenizer.decode(ids[start : start + BLOCK_TOKENS]) for start in range(0, BLOCK_TOKENS * args.prompts, BLOCK_TOKENS)]
    block_batches = [size for size in batches if size >= 16]
    for batch in block_batches:
        result = static(model, tokenizer, blocks, batch, BLOCK_TOKENS, fixed=True)
        figures.update({f"blocks_static_{batch}_{key}": value for key, value in result.items() if key != "capped"})
        print(f"blocks, static batch {batch:>3}: {result['seconds']:6.1f} s, {result['useful_tokens_per_s']:6.1f} tokens/s", flush=True)
    for batch in block_batches:
        figures[f"blocks_static_{batch}_vs_batch_{DEFAULT_BATCH}"] = (figures[f"blocks_static_{batch}_useful_tokens_per_s"]
                                                                       / figures[f"blocks_static_{DEFAULT_BATCH}_useful_tokens_per_s"])
    write_results("generate_batching", figures,
                  settings={"model": TEACHER, "prompts": len(replies), "max_new_tokens": args.max_new_tokens, "block_tokens": BLOCK_TOKENS,
                            "temperature": SAMPLING.temperature, "top_p": SAMPLING.top_p, "baseline_batch": DEFAULT_BATCH})


if __name__ == "__main__":
    main()
