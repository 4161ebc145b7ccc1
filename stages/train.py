"""train stage: a Llama model from scratch on data/tokens, or fine-tuned from train.init.

    python -m stages.train [--params FILE]
    accelerate launch --multi_gpu --num_processes N -m stages.train

Writes models/current/ (save_pretrained), models/checkpoint/ (resumable state)
and metrics/train/ (dvclive) (docs/training.md).
"""

import logging

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.params import load_params
from synthtrain.training import LIVE, OUTPUT, train

log = logging.getLogger("train")


def main(argv=None) -> None:
    args = stage_arguments("Train a Llama model from scratch (or from train.init) on data/tokens").parse_args(argv)
    summary = train(load_params(args.params))
    if summary:
        log.info("%s (%s parameters), %s steps, %s tokens; train loss %.4f, held-out loss %.4f; %s tokens/s, MFU %.1f%%; %.0f s, $%.2f; "
                 "wrote %s/, %s/", summary["init"] or summary["model"], f"{summary['parameters']:,}", f"{summary['steps']:,}", f"{summary['tokens']:,}",
                 summary["train_loss"], summary["heldout_loss"] or float("nan"), f"{summary['tokens_per_s']:,.0f}",
                 100 * (summary["mfu"] or float("nan")), summary["wall_time_s"], summary["cost_usd"], OUTPUT, LIVE)


if __name__ == "__main__":
    run_stage(main)
