"""preferences stage: DPO pairs from the prompts of kind: generate sources with a preferences: section.

    python -m stages.preferences [--params FILE]

Writes data/preferences/, data/rejects/preferences.parquet and
metrics/preferences.json (docs/sources.md).
"""

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.params import load_params
from synthtrain.synthesis.preferences import preferences


def main(argv=None) -> None:
    args = stage_arguments("Make DPO preference pairs").parse_args(argv)
    preferences(load_params(args.params))


if __name__ == "__main__":
    run_stage(main)
