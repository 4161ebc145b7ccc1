"""train_tokenizer stage: the tokenizer every later stage and model uses.

    python -m stages.train_tokenizer [--params FILE]

Trains a byte-level BPE on a sample of the deduplicated pool (or loads
tokenizer.pretrained) and writes models/tokenizer/ and metrics/tokenizer.json
(docs/training.md).
"""

import logging

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.params import load_params
from synthtrain.records import write_metrics
from synthtrain.tokens.bpe import METRICS, MODEL, build_tokenizer

log = logging.getLogger("train_tokenizer")


def main(argv=None) -> None:
    args = stage_arguments("Train (or load) the tokenizer").parse_args(argv)
    metrics = build_tokenizer(load_params(args.params))
    write_metrics(METRICS, metrics)
    tokens = sum(m["tokens"] for m in metrics["sample"].values())
    characters = sum(m["characters"] for m in metrics["sample"].values())
    log.info("the %s-record sample is %s tokens (%.2f characters per token); wrote %s/, %s",
             f"{sum(m['records'] for m in metrics['sample'].values()):,}", f"{tokens:,}", characters / max(tokens, 1), MODEL, METRICS)


if __name__ == "__main__":
    run_stage(main)
