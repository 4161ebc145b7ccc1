"""Print the trained model's completions for prompts, one prompt per line.

    python -m stages.generate_samples [--model models/current] [--prompts FILE] [--raw]
    echo "What is the capital of Veloria?" | python -m stages.generate_samples

Each prompt is sent as a user turn through the model's chat template (``--raw``:
as plain text to continue). Greedy decoding unless ``--temperature`` is above 0;
generation stops at the generation config's end tokens (``<|im_end|>``,
``<|endoftext|>``) or after ``--max-new-tokens``.
"""

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stages.params import StageError, run_stage


def complete(model, tokenizer, prompt: str, raw: bool, max_new_tokens: int, temperature: float) -> str:
    if raw:
        inputs = tokenizer(prompt, return_tensors="pt")
    else:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)  # fmt: skip
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Print the model's completions for prompts, one per line")
    parser.add_argument("--model", default="models/current", help="a save_pretrained directory (default: models/current)")
    parser.add_argument("--prompts", type=Path, help="a text file, one prompt per line (default: stdin)")
    parser.add_argument("--raw", action="store_true", help="continue the text instead of answering it as a chat turn")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        raise StageError(f"{args.model} holds no model: run `dvc repro train` first")
    if args.prompts and not args.prompts.is_file():
        raise StageError(f"--prompts {args.prompts}: no such file")
    lines = args.prompts.read_text().splitlines() if args.prompts else sys.stdin.read().splitlines()
    prompts = [line.strip() for line in lines if line.strip()]
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True).eval()
    for prompt in prompts:
        print(f"### {prompt}\n{complete(model, tokenizer, prompt, args.raw, args.max_new_tokens, args.temperature)}\n", flush=True)


if __name__ == "__main__":
    run_stage(main)
