"""download stage: one source's records in the record schema.

    python -m stages.download SOURCE [--params FILE]

Writes data/raw/SOURCE.parquet, data/rejects/download-SOURCE.parquet and
metrics/download/SOURCE.json (docs/sources.md).
"""

from synthtrain.cli import run_stage, stage_arguments
from synthtrain.params import load_params
from synthtrain.sources.download import download


def main(argv=None) -> None:
    parser = stage_arguments("Download one source's records")
    parser.add_argument("source", help="a name under sources: in params.yaml")
    args = parser.parse_args(argv)
    download(load_params(args.params), args.source)


if __name__ == "__main__":
    run_stage(main)
