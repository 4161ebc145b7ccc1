"""judges stage: the relevance and coherence micro-judges the eval stage uses.

    python -m stages.judges [--params FILE]

Trained on the pairs the quality stage kept and on real instruction files
(eval.judges.real_files), so every sample, mix and train experiment is judged
by the same judges. Writes models/judges/ and metrics/judges.json
(docs/evaluation.md).
"""

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.evaluation.judges import train_judges
from synthtrain.params import load_params


def main(argv=None) -> None:
    args = stage_arguments("Train the micro-judges").parse_args(argv)
    train_judges(load_params(args.params))


if __name__ == "__main__":
    run_stage(main)
