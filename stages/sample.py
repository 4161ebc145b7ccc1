"""sample stage: a sample of the quality-scored pool.

    python -m stages.sample NAME [--params FILE]

Writes data/sample/NAME.parquet and metrics/sample/NAME.json (docs/quality.md).
"""

import logging

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.params import load_params
from synthtrain.records import write_metrics
from synthtrain.sampling import sample

log = logging.getLogger("sample")


def main(argv=None) -> None:
    parser = stage_arguments("A sample of the quality-scored pool")
    parser.add_argument("name", help="a key of sample.sizes")
    args = parser.parse_args(argv)
    metrics = sample(load_params(args.params), args.name)
    write_metrics(f"metrics/sample/{args.name}.json", metrics)
    shares = ", ".join(f"{c} {e['records']:,} records / {e['tokens']:,} tokens" for c, e in metrics["by_category"].items())
    log.info("%s: wrote %s records (%s) to data/sample/%s.parquet: %s; flaw rate %s",
             args.name, f"{metrics['records']:,}", metrics["strategy"], args.name, shares, metrics["flaw_rate"])


if __name__ == "__main__":
    run_stage(main)
