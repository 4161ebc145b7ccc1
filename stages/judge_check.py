"""judge_check stage: every zero-cost metric against real chat models judged by GPT-4.

    python -m stages.judge_check [--params FILE]

Scores the replies of judge_check.reference (AlpacaEval 2.0: 112 models, their
GPT-4-turbo win rates and per-prompt preferences) with each cheap metric and
with the learned preference judge, scored only on models it never saw (folds
grouped by family and by model). Writes metrics/judge_check.json,
plots/judge_check.png and models/preference_judge/ (trained on all models),
which the eval stage uses (docs/evaluation.md).
"""

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.evaluation.judge_check import run_judge_check
from synthtrain.params import load_params


def main(argv=None) -> None:
    args = stage_arguments("Check the zero-cost metrics against GPT-4's judgements").parse_args(argv)
    run_judge_check(load_params(args.params))


if __name__ == "__main__":
    run_stage(main)
