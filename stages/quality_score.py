"""quality_score stage: score every deduplicated record (and the comparison files).

    python -m stages.quality_score [--params FILE]

Writes data/quality/scores.parquet, files.parquet, the trained scorers and
metrics/quality_scores.json (docs/quality.md).
"""

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.params import load_params
from synthtrain.quality.enrich import score_stage


def main(argv=None) -> None:
    args = stage_arguments("Score every deduplicated record").parse_args(argv)
    score_stage(load_params(args.params))


if __name__ == "__main__":
    run_stage(main)
