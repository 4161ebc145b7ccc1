"""teacher stage: the teachers packaged in pip packages, converted into save_pretrained folders.

    python -m stages.teacher [--params FILE]

Writes models/teachers/<name>/ and metrics/teacher.json (docs/sources.md).
"""

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.params import load_params
from synthtrain.records import write_metrics
from synthtrain.teacher import convert_all


def main(argv=None) -> None:
    args = stage_arguments("Convert the packaged teachers into models/teachers/<name>/").parse_args(argv)
    load_params(args.params)  # validated like every stage's, though no param changes what it writes
    write_metrics("metrics/teacher.json", convert_all())


if __name__ == "__main__":
    run_stage(main)
