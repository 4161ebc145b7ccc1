"""dedup stage: exact, near and (optionally) semantic duplicate removal, the held-out split and decontamination.

    python -m stages.dedup [--params FILE]

Writes data/dedup/train.parquet, data/heldout/, data/rejects/dedup.parquet and
metrics/dedup.json (docs/quality.md).
"""

import logging
import time

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.dedup import HELDOUT, METRICS, REJECTS, TRAIN, dedup
from synthtrain.params import load_params
from synthtrain.records import write_metrics

log = logging.getLogger("dedup")


def main(argv=None) -> None:
    args = stage_arguments("Exact, near and semantic duplicate removal, held-out split, decontamination").parse_args(argv)
    started = time.time()
    metrics = dedup(load_params(args.params))
    write_metrics(METRICS, metrics)
    log.info("read %s; kept %s; held out %s; removed %s exact, %s near and %s semantic duplicates (%s clusters), %s contaminated; "
             "wrote %s, %s/, %s in %.1f s", f"{metrics['in']:,}", f"{metrics['kept']:,}", f"{metrics['heldout']:,}",
             f"{metrics['exact_duplicates']:,}", f"{metrics['near_duplicates']:,}", f"{metrics['semantic_duplicates']:,}", f"{metrics['clusters']:,}",
             f"{metrics['decontaminated']:,}", TRAIN, HELDOUT, REJECTS, time.time() - started)


if __name__ == "__main__":
    run_stage(main)
