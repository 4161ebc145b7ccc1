"""tokenize stage: render, tokenize and pack the training mix and the held-out sets.

    python -m stages.tokenize [--params FILE]

Writes data/tokens/, data/rejects/tokenize.parquet and metrics/tokenize.json
(docs/training.md).
"""

import logging

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.params import load_params
from synthtrain.records import write_metrics
from synthtrain.tokens.packing import METRICS, REJECTS, TOKENS, tokenize

log = logging.getLogger("tokenize")


def main(argv=None) -> None:
    args = stage_arguments("Render, tokenize and pack the mix and the held-out sets").parse_args(argv)
    params = load_params(args.params)
    metrics = tokenize(params)
    write_metrics(METRICS, metrics)
    train = metrics["train"]
    log.info("train: read %s; kept %s; rejected %s; %s tokens (%s in the loss) in %s sequences of %d; held out: %d sets; wrote %s/, %s, %s",
             f"{train['in']:,}", f"{train['kept']:,}", f"{train['rejected']:,}", f"{sum(train['tokens'].values()):,}",
             f"{sum(train['loss_tokens'].values()):,}", f"{train['sequences']:,}", params.tokenize.seq_len, len(metrics["heldout"]),
             TOKENS, REJECTS, METRICS)


if __name__ == "__main__":
    run_stage(main)
