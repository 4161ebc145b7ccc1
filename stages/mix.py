"""mix stage: the training set, mixed from a sample by token shares.

    python -m stages.mix [--params FILE]

Writes data/mix/train.parquet and metrics/mix.json (docs/training.md).
"""

import logging

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.mixing import OUTPUT, mix
from synthtrain.params import load_params
from synthtrain.records import write_metrics

log = logging.getLogger("mix")


def main(argv=None) -> None:
    args = stage_arguments("Mix the training set from a sample, by token shares").parse_args(argv)
    metrics = mix(load_params(args.params))
    write_metrics("metrics/mix.json", metrics)
    shares = ", ".join(f"{c} {e['effective_share']:.3f} ({e['tokens']:,} tokens, {e['records']:,} records, {e['passes']} passes)"
                       for c, e in metrics["by_category"].items())
    log.info("%s from %s: %s tokens (asked %s), %s records -> %s; shares: %s", metrics["strategy"], metrics["pool"],
             f"{metrics['tokens']:,}", f"{metrics['requested_tokens']:,}", f"{metrics['records']:,}", OUTPUT, shares)


if __name__ == "__main__":
    run_stage(main)
