"""quality stage: decide from the scores which records to keep.

    python -m stages.quality [--params FILE]

Writes data/quality/scored.parquet, data/rejects/quality.parquet,
metrics/quality.json and plots/quality/ (docs/quality.md).
"""

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.params import load_params
from synthtrain.quality.decide import decide_stage


def main(argv=None) -> None:
    args = stage_arguments("Keep or reject each scored record").parse_args(argv)
    decide_stage(load_params(args.params))


if __name__ == "__main__":
    run_stage(main)
