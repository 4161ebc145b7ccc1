"""What the real teacher wrote: samples of the ``distilled`` source of exp1 with its rejection statistics.

    python -m research.distilled [--profile cpu] [--run exp1-distilled-s0] [--samples 5]

exp1's ``distilled`` arm generates the source once (``experiments/cpu.yaml``: SmolLM2-135M-Instruct,
Self-Instruct from the 175 human seed tasks). This reads that run's commit (its ``rev`` in
``reports/<profile>/runs.csv`` or ``reports/runs.csv``): the download metrics from git, the kept and
rejected records from the DVC cache by the md5 in the run's ``dvc.lock``. It writes
``reports/distilled.md`` (the statistics, an example of each rejection reason and random kept records)
and the README's section between ``<!-- distilled -->`` and ``<!-- /distilled -->``.
"""

import argparse
import csv
import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from synthtrain.cli import run_stage
from synthtrain.experiments import report_dir
from synthtrain.params import StageError
from synthtrain.records import write_output_text

SOURCE = "distilled"
REPORT = Path("reports/distilled.md")
README = Path("README.md")
MARKERS = ("<!-- distilled -->", "<!-- /distilled -->")
CACHE = Path(".dvc/cache/files/md5")


def git_show(rev: str, path: str) -> str:
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise StageError(f"git show {rev}:{path} failed: {shown.stderr.strip()} (the run's experiment ref is on the machine that ran it)")
    return shown.stdout


def run_rev(runs_csv: Path, name: str) -> str:
    if not runs_csv.is_file():
        raise StageError(f"{runs_csv} is missing: run exp1 first (make exp1)")
    rows = {row["name"]: row for row in csv.DictReader(runs_csv.open())}
    if name not in rows:
        raise StageError(f"{runs_csv} has no row {name}: run it first (make exp1)")
    return rows[name]["rev"]


def cached_table(rev: str, path: str):
    """An output of the run, from the DVC cache by its md5 in the run's dvc.lock."""
    for stage in yaml.safe_load(git_show(rev, "dvc.lock"))["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] == path:
                cached = CACHE / out["md5"][:2] / out["md5"][2:]
                if not cached.is_file():
                    raise StageError(f"{path} of {rev} ({cached}) is not in the DVC cache")
                return pq.read_table(cached)
    raise StageError(f"{rev}: dvc.lock has no output {path}")


def shown_record(messages: list[dict], width: int = 600) -> str:
    return "\n".join(f"> **{m['role']}**: {textwrap.shorten(m['content'], width)}" for m in messages)


def markdown(name: str, rev: str, teacher: str, metrics: dict, kept: list[dict], rejects: list[dict], samples: int,
             seed: int = 0) -> tuple[str, str]:
    """The report, and the README's shorter section (statistics and two kept records)."""
    rng = np.random.default_rng(seed)
    chosen = [kept[i] for i in sorted(rng.choice(len(kept), min(samples, len(kept)), replace=False))]
    reasons = sorted(metrics["rejected_by_reason"].items(), key=lambda item: -item[1])
    stats = [f"The teacher `{teacher}` wrote {metrics['read']:,} candidates and {metrics['kept']:,} were kept "
             f"({metrics['kept'] / max(metrics['read'], 1):.0%}); {metrics['rejected']:,} were rejected, by reason: "
             + ", ".join(f"{reason} {count:,}" for reason, count in reasons) + "."]
    if "generation_tokens_per_s" in metrics:
        stats.append(f"It generated {metrics['generation_tokens_per_s']:,.0f} tokens/s and kept {metrics['records_per_s']:.2f} records/s "
                     f"(`metrics/download/{SOURCE}.json` of run `{name}`, commit `{rev[:10]}`).")
    report = ["# What SmolLM2-135M-Instruct wrote: the `distilled` source", "",
              f"Written by `python -m research.distilled` from exp1's run `{name}`. " + " ".join(stats), "",
              "## One rejected candidate per reason", ""]
    for reason, _ in reasons:
        example = next((row for row in rejects if row["reason"] == reason), None)
        if example is not None:
            report += [f"- **{reason}** ({example['detail']}): {textwrap.shorten(example['raw'] or '', 300)}"]
    report += ["", f"## {len(chosen)} kept records, drawn at random (seed {seed})", ""]
    for record in chosen:
        report += [shown_record(record["messages"]), ""]
    readme = [" ".join(stats), "", *shown_record(chosen[0]["messages"], 300).splitlines(), "",
              f"More samples and an example of each rejection: [{REPORT}]({REPORT})."]
    return "\n".join(report).rstrip() + "\n", "\n".join(readme)


def replace_section(text: str, section: str) -> str:
    start, end = (text.find(marker) for marker in MARKERS)
    if start < 0 or end < start:
        raise StageError(f"{README} lacks the markers {MARKERS[0]} ... {MARKERS[1]}")
    return text[: start + len(MARKERS[0])] + "\n" + section + "\n" + text[end:]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Samples and rejection statistics of exp1's distilled source")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--run", default="exp1-distilled-s0")
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args(argv)
    rev = run_rev(report_dir(args.profile) / "runs.csv", args.run)
    metrics = json.loads(git_show(rev, f"metrics/download/{SOURCE}.json"))
    teacher = yaml.safe_load(git_show(rev, "params.yaml"))["sources"][SOURCE]["teacher"]
    kept = cached_table(rev, f"data/raw/{SOURCE}.parquet").to_pylist()
    rejects = cached_table(rev, f"data/rejects/download-{SOURCE}.parquet").to_pylist()
    report, section = markdown(args.run, rev, teacher, metrics, kept, rejects, args.samples)
    write_output_text(REPORT, report)
    write_output_text(README, replace_section(README.read_text(), section))
    print(f"distilled: wrote {REPORT} and the README's section from {args.run} ({rev[:10]})")


if __name__ == "__main__":
    run_stage(main)
