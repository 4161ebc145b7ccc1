"""eval stage: the zero-cost evaluation suite of a trained model.

    python -m stages.eval [--params FILE] [--model DIR]

Writes data/eval/, metrics/eval.json and plots/eval/ (docs/evaluation.md).
"""

from pathlib import Path

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.evaluation.suite import METRICS, MODEL, evaluate
from synthtrain.params import load_params
from synthtrain.records import write_metrics


def main(argv=None) -> None:
    parser = stage_arguments("Evaluate a trained model")
    parser.add_argument("--model", type=Path, default=MODEL, help=f"a save_pretrained directory (default: {MODEL})")
    args = parser.parse_args(argv)
    metrics = evaluate(load_params(args.params), args.model)
    # four decimals keep `dvc metrics diff` readable; lm-eval and sacrebleu give sixteen
    write_metrics(METRICS, {key: round(value, 4) if isinstance(value, float) else value for key, value in metrics.items()})


if __name__ == "__main__":
    run_stage(main)
