"""The command line every stage shares: ``python -m stages.NAME [--params FILE]``,
logging to stderr, and one line (no traceback) for a problem the user can fix."""

import argparse
import logging

from synthtrain.params import StageError
from synthtrain.records import output_transaction


def stage_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def run_stage(main, argv=None) -> None:
    """Run a stage's main(argv) with logging set up; a StageError ends it with
    one line ``error: ...`` and exit code 1. The stage's outputs are renamed into
    place only when main returns (records.output_transaction), so a failed or
    killed stage leaves the previous ones intact."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        with output_transaction():
            main(argv)
    except StageError as exc:
        logging.getLogger("error").error("%s", exc)
        raise SystemExit(1) from None
