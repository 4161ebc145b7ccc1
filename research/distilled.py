"""What the real teacher wrote: samples of the ``distilled`` source of exp1 with its rejection statistics.

    python -m research.distilled [--profile cpu] [--run exp1-distilled-s0] [--samples 5]

exp1's ``distilled`` arm generates the source once (``experiments/cpu.yaml``: SmolLM2-135M-Instruct,
Self-Instruct from the 175 human seed tasks). This reads that run's commit (its ``rev`` in
``reports/<profile>/runs.csv`` or ``reports/runs.csv``) with ``dvc.api``: the download, dedup, mix and train
metrics from git, the kept and rejected records from the DVC cache. It writes ``reports/distilled.md``
(the statistics, an example of each rejection reason and random kept records)
and the README's section between ``<!-- distilled -->`` and ``<!-- /distilled -->``.
"""

import argparse
import csv
import io
import json
import textwrap
from pathlib import Path

import dvc.api
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


def read_at(rev: str, path: str, mode: str = "r"):
    """A file of the run's commit: git-tracked, or a DVC output from the cache (dvc.api resolves both)."""
    try:
        return dvc.api.read(path, repo=".", rev=rev, mode=mode)
    except Exception as exc:  # dvc raises its own errors for a missing revision, path or cache entry
        raise StageError(f"{path} of {rev[:10]} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                         "the run's experiment and its outputs are on the machine that ran it") from None


def run_rev(runs_csv: Path, name: str) -> str:
    if not runs_csv.is_file():
        raise StageError(f"{runs_csv} is missing: run exp1 first (make exp1)")
    rows = {row["name"]: row for row in csv.DictReader(runs_csv.open())}
    if name not in rows:
        raise StageError(f"{runs_csv} has no row {name}: run it first (make exp1)")
    return rows[name]["rev"]


def table_at(rev: str, path: str, **read):
    return pq.read_table(io.BytesIO(read_at(rev, path, "rb")), **read)


def pipeline_statistics(rev: str) -> str:
    """What dedup and the mix of the run did with the records the teacher's filters kept. exp1's source is
    outside the pool (``pool: false``), so it is neither quality-scored nor sampled (docs/sources.md)."""
    dedup = json.loads(read_at(rev, "metrics/dedup.json"))["by_source"][SOURCE]
    mix = json.loads(read_at(rev, "metrics/mix.json"))
    drawn = [category for category in mix["by_category"].values() if category["records"]]
    passes = max(category["passes"] for category in drawn)
    return (f"Then dedup kept {dedup['kept']:,} of {dedup['in']:,} ({dedup['exact_duplicates']:,} exact, "
            f"{dedup['near_duplicates']:,} near and {dedup['semantic_duplicates']:,} semantic duplicates, "
            f"{dedup['decontaminated']:,} contaminated), and the run's mix drew {mix['tokens']:,} tokens from them: "
            f"{passes:.1f} passes over their {sum(category['available_tokens'] for category in drawn):,} tokens "
            "(`metrics/dedup.json`, `metrics/mix.json`; a source outside the pool is not quality-scored or sampled).")


def shown_record(messages: list[dict], width: int = 600) -> str:
    return "\n".join(f"> **{m['role']}**: {textwrap.shorten(m['content'], width)}" for m in messages)


def markdown(name: str, rev: str, teacher: str, metrics: dict, machine: str, pipeline: str, kept: list[dict], rejects: list[dict], samples: int,
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
                     f"in {metrics['precision']} on the run's machine ({machine}; "
                     f"`metrics/download/{SOURCE}.json` of run `{name}`, commit `{rev[:10]}`).")
    stats.append(pipeline)
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
    metrics = json.loads(read_at(rev, f"metrics/download/{SOURCE}.json"))
    teacher = yaml.safe_load(read_at(rev, "params.yaml"))["sources"][SOURCE]["teacher"]
    kept = table_at(rev, f"data/raw/{SOURCE}.parquet").to_pylist()
    rejects = table_at(rev, f"data/rejects/download-{SOURCE}.parquet").to_pylist()
    trained = json.loads(read_at(rev, "metrics/train/metrics.json"))  # the run generated and trained on one machine
    machine = f"{trained['cpu']}, {trained['cores']} cores, " + (", ".join(trained["cpu_flags"]) or "no AVX2 or AVX-512")
    report, section = markdown(args.run, rev, teacher, metrics, machine, pipeline_statistics(rev), kept, rejects, args.samples)
    write_output_text(REPORT, report)
    write_output_text(README, replace_section(README.read_text(), section))
    print(f"distilled: wrote {REPORT} and the README's section from {args.run} ({rev[:10]})")


if __name__ == "__main__":
    run_stage(main)
