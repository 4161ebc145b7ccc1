"""builtin_eval stage: the built-in world's held-out evaluation problems.

    python -m stages.builtin_eval [--params FILE]

Writes data/raw/builtin_eval.parquet and metrics/builtin_eval.json (docs/evaluation.md).
"""

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.params import load_params
from synthtrain.records import write_metrics
from synthtrain.world.problems import write_problems


def main(argv=None) -> None:
    args = stage_arguments("Write the built-in world's held-out problems").parse_args(argv)
    write_metrics("metrics/builtin_eval.json", write_problems(load_params(args.params)))


if __name__ == "__main__":
    run_stage(main)
