"""Benchmarks. Each script measures one part of the pipeline against a baseline
timed in the same run, prints its figures and writes them, with the machine it
ran on, to ``bench/results/<name>.json`` (``bench.machine.write_results``);
``python -m bench.report`` writes docs/benchmarks.md from those files."""
