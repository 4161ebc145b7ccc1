"""Print the trained model's completions for prompts, one prompt per line.

    python -m research.print_samples [--model models/current] [--prompts FILE] [--raw]
    echo "What is the capital of Veloria?" | python -m research.print_samples

Each prompt is sent as a user turn through the model's chat template (``--raw``:
as plain text to continue). Greedy decoding unless ``--temperature`` is above 0;
generation stops at the generation config's end tokens (``<|im_end|>``,
``<|endoftext|>``) or after ``--max-new-tokens``.
"""

import argparse
import sys
from pathlib import Path

from synthtrain.generation import Generator, load_model
from synthtrain.params import EvalGeneration, StageError
from synthtrain.cli import run_stage


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Print the model's completions for prompts, one per line")
    parser.add_argument("--model", default="models/current", help="a save_pretrained directory (default: models/current)")
    parser.add_argument("--prompts", type=Path, help="a text file, one prompt per line (default: stdin)")
    parser.add_argument("--raw", action="store_true", help="continue the text instead of answering it as a chat turn")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.prompts and not args.prompts.is_file():
        raise StageError(f"--prompts {args.prompts}: no such file")
    lines = args.prompts.read_text().splitlines() if args.prompts else sys.stdin.read().splitlines()
    prompts = [line.strip() for line in lines if line.strip()]
    model, tokenizer = load_model(args.model, fix="run `dvc repro train` first, or pass --model")
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {"do_sample": False}
    generator = Generator(model, tokenizer, EvalGeneration(max_new_tokens=args.max_new_tokens, batch_size=1, **sampling), args.seed)
    for prompt in prompts:  # one at a time, so each completion prints as soon as it is ready
        reply = generator.complete([prompt])[0] if args.raw else generator([prompt])[0]
        print(f"### {prompt}\n{reply.text}\n", flush=True)


if __name__ == "__main__":
    run_stage(main)
