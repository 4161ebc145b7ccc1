"""Benchmark: the LM scorer (quality.lm_scorer) on real text and damaged copies of it.

Does quality rank real human- and GPT-4-written text above damaged copies of it,
and how fast is the LM scorer?

    python bench/lm_quality.py [--records 30] [--baseline-records 12]

Needs the scorers of `dvc repro quality_score` (data/quality/) and the teacher
(`dvc repro teacher`). For each real file of ../shared/data (C4, Wikipedia,
TinyStories, GPTeacher codegen and toolformer, the Self-Instruct seed tasks), its
first --records records and three damaged copies of each, the response damaged and
the instruction kept: ``shuffled`` (its words in random order), ``truncated`` (cut
after half its words), ``repeated`` (its first half three times). Every record is
scored as the quality stage scores it, twice: with the trigram reference LM alone
(the baseline: what the pipeline did before the LM scorer) and with the LM scorer.
Prints the AUC of original against damaged, per damage and in all, of quality and of
the LM's own components (``reference_lm`` from perplexity, ``ifd``); the mean quality
per file (the ranking); the IFD's top and bottom GPTeacher examples; and records/s
of the batched LM scorer against a baseline measured in the same run: the same
scorer given one record at a time (--baseline-records records).
"""

import argparse
import itertools
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import REPO, write_results  # noqa: E402
from synthtrain.hardware import GPU_PEAK_TFLOPS  # noqa: E402
from synthtrain.params import LocalSource, load_params  # noqa: E402
from synthtrain.quality.decide import decide  # noqa: E402
from synthtrain.quality.enrich import lm_items, load_scorer  # noqa: E402
from synthtrain.quality.lm_scorer import LMScorer  # noqa: E402
from synthtrain.records import SCHEMA, make_record  # noqa: E402
from synthtrain.sources import local  # noqa: E402
from synthtrain.sources.formats import Rejected  # noqa: E402

SHARED = REPO.parent / "shared/data"
FILES = {  # name: (path, category, how LocalSource reads it)
    "c4_sample": ("human/c4-sample.jsonl", "web", {}),
    "wiki_sample": ("human/wiki-sample.txt", "knowledge", {"split": "line"}),
    "tinystories": ("synthetic/tinystories-val.txt", "knowledge", {}),
    "gpteacher_codegen": ("synthetic/gpteacher-codegen.json", "instruction", {}),
    "gpteacher_toolformer": ("synthetic/gpteacher-toolformer.json", "instruction", {}),
    "self_instruct_seeds": ("human/self-instruct-seed-tasks.jsonl", "instruction", {}),
}
DAMAGES = ("shuffled", "truncated", "repeated")
ASSUMED_MFU = 0.3  # for the GPU estimate only: no GPU was measured


def damaged(text: str, damage: str, rng: random.Random) -> str:
    words = text.split()
    if damage == "shuffled":
        rng.shuffle(words)
        return " ".join(words)
    half = words[: max(1, len(words) // 2)]
    return " ".join(half) if damage == "truncated" else " ".join(half * 3)


def first_sentences(text: str, words: int = 300) -> str:
    """The text's sentences up to about ``words`` words: a long article cut where a sentence ends, not in one."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    kept = list(itertools.takewhile(lambda i: len(" ".join(sentences[: i + 1]).split()) <= words, range(len(sentences))))
    return " ".join(sentences[: len(kept) or 1])


def originals(count: int) -> list[dict]:
    """The first ``count`` records of each file (a wiki line is an article: its first sentences, about 300 words)."""
    rows = []
    for name, (path, category, options) in FILES.items():
        source = LocalSource(kind="local", path=str(SHARED / path), category=category, max_samples=count, **options)
        kept = 0
        for item in local.read(source):
            if kept == count:
                break
            if isinstance(item, Rejected):
                continue
            text = first_sentences(item.text) if item.text else None
            rows.append({**make_record(name, category, messages=item.messages, text=text, meta=item.meta), "damage": "original"})
            kept += 1
    return rows


def with_damage(row: dict, damage: str, rng: random.Random) -> dict:
    if row["text"] is not None:
        return {**row, "text": damaged(row["text"], damage, rng), "damage": damage}
    messages = [dict(m) for m in row["messages"]]
    messages[-1]["content"] = damaged(messages[-1]["content"], damage, rng)
    return {**row, "messages": messages, "damage": damage}


def auc(original: np.ndarray, values: np.ndarray, mine: np.ndarray) -> float | None:
    """AUC of ``values`` (higher = better) for telling originals from damaged copies among ``mine``."""
    kept = mine & ~np.isnan(values)
    if len(set(original[kept])) < 2:
        return None
    return round(float(roc_auc_score(original[kept], values[kept])), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=30, help="records of each file (each with three damaged copies)")
    parser.add_argument("--baseline-records", type=int, default=12)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    q, lm = params.quality, params.quality.lm_scorer
    rng = random.Random(0)
    rows = originals(args.records)
    # a copy the damage leaves unchanged (a one-word reply cut in half) is not a damaged copy
    rows += [copy for damage in DAMAGES for row in rows if (copy := with_damage(row, damage, rng))["messages"] != row["messages"]
             or copy["text"] != row["text"]]
    damage = np.array([row.pop("damage") for row in rows])
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    category, source = table.column("category").to_numpy(zero_copy_only=False), table.column("source").to_numpy(zero_copy_only=False)

    pipeline = load_scorer(q, REPO)
    trigram = pipeline.score(table)
    scorer = LMScorer(lm.model, lm.max_tokens, lm.batch_tokens, lm.precision)
    items = lm_items(table)
    started = time.perf_counter()
    read = scorer(items)
    batched_seconds = time.perf_counter() - started
    single = LMScorer(lm.model, lm.max_tokens, 1, lm.precision)  # batch_tokens 1: one record per forward pass
    started = time.perf_counter()
    for item in items[:: len(items) // args.baseline_records][: args.baseline_records]:  # spread over files and damages
        single([item])
    single_seconds = (time.perf_counter() - started) / args.baseline_records
    batched_rate, single_rate = len(items) / batched_seconds, 1 / single_seconds

    original = damage == "original"
    everything = np.ones(len(rows), bool)
    results = {"records_per_file": args.records, "records": len(rows), "damages": list(DAMAGES)}
    for label, scores in (("trigram_only", trigram), ("with_lm_scorer", {**trigram, **read})):
        parts, quality, reason = decide(q, pipeline.calibration, category, scores)
        entry = {"auc_quality": {"all": auc(original, quality, everything),
                                 **{d: auc(original, quality, original | (damage == d)) for d in DAMAGES}},
                 "auc_reference_lm": {"all": auc(original, parts["reference_lm"], everything),
                                      **{d: auc(original, parts["reference_lm"], original | (damage == d)) for d in DAMAGES}},
                 "auc_ifd_instructions": auc(original, parts["ifd"], everything),
                 "mean_quality_of_originals": {name: round(float(quality[original & (source == name)].mean()), 4) for name in FILES},
                 "kept_share_of_originals": {name: round(float(np.mean(reason[original & (source == name)] == None)), 4)  # noqa: E711
                                             for name in FILES}}
        results[label] = entry
        print(f"{label}: AUC of quality, originals vs damaged copies: {entry['auc_quality']}")
        print(f"  mean quality of the originals by file: {entry['mean_quality_of_originals']}")
    gpteacher = original & np.isin(source, ["gpteacher_codegen", "gpteacher_toolformer"]) & ~np.isnan(read["lm_ifd"])
    order = np.flatnonzero(gpteacher)[np.argsort(read["lm_ifd"][gpteacher])]
    def example(i):
        return {"ifd": round(float(read["lm_ifd"][i]), 4), "instruction": rows[i]["messages"][0]["content"][:200],
                "response": rows[i]["messages"][-1]["content"][:200]}
    documents = np.isnan(read["lm_ifd"]) & ~np.isnan(read["lm_end_surprisal"])
    results["document_end_surprisal_quantiles"] = {
        kind: {f"p{q}": round(float(np.percentile(read["lm_end_surprisal"][documents & (damage == kind)], q)), 2) for q in (10, 50, 90)}
        for kind in ("original", "truncated")}
    results["ifd_lowest_gpteacher"] = [example(i) for i in order[:3]]
    results["ifd_highest_gpteacher"] = [example(i) for i in order[::-1][:3]]
    results["speed"] = {**scorer.speed(), "records_per_s": round(batched_rate, 2), "baseline_records_per_s": round(single_rate, 2),
                        "speedup": round(batched_rate / single_rate, 2), "baseline": "the same scorer, one record per forward pass",
                        "max_tokens": lm.max_tokens, "batch_tokens": lm.batch_tokens}
    for size in (10_000, 100_000, 1_000_000):
        results["speed"][f"cpu_minutes_for_{size}"] = round(size / batched_rate / 60, 1)
    # A GPU's time, estimated (not measured): forward FLOPs (2 per parameter per token read) of the
    # tokens these records needed, at ASSUMED_MFU of the datasheet's bf16 peak.
    parameters = sum(p.numel() for p in scorer.model.parameters())
    tokens_per_record = scorer.tokens / len(items)
    results["speed"]["gpu_estimate"] = {"assumed_mfu": ASSUMED_MFU, "tokens_per_record": round(tokens_per_record, 1), **{
        f"{gpu}_minutes_for_1000000": round(1e6 * tokens_per_record * 2 * parameters / (dict(GPU_PEAK_TFLOPS)[gpu] * 1e12 * ASSUMED_MFU) / 60, 1)
        for gpu in ("RTX 4090", "H100")}}
    print(f"LM scorer: {batched_rate:.2f} records/s batched ({scorer.speed()['precision']}), {single_rate:.2f} one at a time: "
          f"{batched_rate / single_rate:.2f}x")
    write_results("lm_quality", results, {"model": lm.model, "records_per_file": args.records, "baseline_records": args.baseline_records})


if __name__ == "__main__":
    main()
