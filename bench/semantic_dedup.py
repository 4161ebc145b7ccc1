"""Benchmark: semantic deduplication (``dedup.semantic``) on real paraphrases against MinHash, and its records/s.

The paraphrase set: short passages of the real texts under ../shared/data
(self-instruct and GPTeacher instructions, sentences of TinyStories, C4 and
Wikipedia; ``--per-source`` of each, seeded), each paraphrased by the teacher,
SmolLM2-135M-Instruct (greedy, bf16 on CPU). A reply that is empty, the
passage itself after folding case and spacing, or under a third or over three
times the passage's words (an answer to an instruction, or a fragment) is
discarded and counted. Positive pairs: each passage with its paraphrase;
negative pairs: each passage with another passage of the same source. The
teacher's replies are cached in bench/cache/ (git-ignored) and reused while
the passages and the prompt are the same. The labels are the teacher's: a
135M model's "paraphrase" sometimes drifts from the meaning, which caps the
recall any method can reach.

Both methods deduplicate all passages and paraphrases together, as the stage
does, and a pair is predicted a duplicate when both end in one group:
semantic dedup at the default ``dedup.semantic`` (and over a range of
thresholds), MinHash at the default ``dedup.near`` (Jaccard of 5-word
shingles).

Throughput: embedding, k-means and the pair search within clusters
(``synthtrain.dedup.semantic_roots``), timed apart, on ``--records`` records of
``--records-file`` (the records' text or "role: content" lines, as the stage
reads them), and how many of those records each threshold would remove. The
encoder's precision (``synthtrain.embeddings`` picks bf16 or fp32 by a timed
pass): records/s of each on the first ``--precision-records`` records, and the
cosine between the two embeddings of each record.

    python bench/semantic_dedup.py [--records 100000] [--records-file data/dedup/train.parquet]
"""

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import write_results  # noqa: E402
from synthtrain.dedup import clusters, embed, near_duplicate_roots, scores, semantic_roots, similar_roots  # noqa: E402
from synthtrain.embeddings import minilm_model  # noqa: E402
from synthtrain.precision import precision_name  # noqa: E402
from synthtrain.params import Dedup, EvalGeneration  # noqa: E402
from synthtrain.text import content_column, normalize  # noqa: E402

SHARED = REPO.parent / "shared/data"
CACHE = Path(__file__).resolve().parent / "cache/semantic_dedup_paraphrases.json"
TEACHER = "smollm2-135m-instruct"
PROMPT = ("Paraphrase the following text: say the same thing in different words. "
          "Reply with the paraphrase only.\n\nText: {text}")
MIN_WORDS, MAX_WORDS = 8, 40  # passages short enough for the teacher to rewrite whole
SENTENCE = re.compile(r"(?<=[.!?])\s+")
THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def sentences(texts: list[str]) -> list[str]:
    return [s.strip() for text in texts for s in SENTENCE.split(text)]


def candidates() -> dict[str, list[str]]:
    """Passages of each real source, before the length filter."""
    def jsonl(path, field):
        return [json.loads(line)[field] for line in path.read_text().splitlines() if line.strip()]

    return {
        "self_instruct": jsonl(SHARED / "human/self-instruct-seed-tasks.jsonl", "instruction"),
        "gpteacher_codegen": [item["instruction"] for item in json.loads((SHARED / "synthetic/gpteacher-codegen.json").read_text())],
        "tinystories": sentences((SHARED / "synthetic/tinystories-val.txt").read_text().split("\n\n")[:2000]),
        "c4": sentences(jsonl(SHARED / "human/c4-sample.jsonl", "text")),
        "wiki": sentences((SHARED / "human/wiki-sample.txt").read_text().splitlines()),
    }


def passages(per_source: int, seed: int) -> list[tuple[str, str]]:
    """(source, passage) pairs: per_source distinct passages of MIN_WORDS..MAX_WORDS words from each source."""
    rng = np.random.default_rng(seed)
    chosen = []
    for source, texts in candidates().items():
        usable = sorted({t for t in texts if MIN_WORDS <= len(t.split()) <= MAX_WORDS})
        picks = rng.choice(len(usable), min(per_source, len(usable)), replace=False)
        chosen.extend((source, usable[i]) for i in sorted(picks))
    return chosen


def paraphrases(chosen: list[tuple[str, str]]) -> tuple[list[str], dict]:
    """The teacher's reply to each passage, from the cache when it holds these passages and this prompt."""
    key = hashlib.sha256(json.dumps([TEACHER, PROMPT, chosen]).encode()).hexdigest()
    if CACHE.is_file() and json.loads(CACHE.read_text())["key"] == key:
        cached = json.loads(CACHE.read_text())
        return cached["replies"], cached["speed"]
    import torch

    from synthtrain.generation import Generator, load_model

    model, tokenizer = load_model(TEACHER, fix="run `dvc repro teacher`")
    model = model.to(torch.bfloat16)  # about 3x faster than fp32 on CPU for this model
    generator = Generator(model, tokenizer, EvalGeneration(max_new_tokens=96, batch_size=16), seed=0)
    replies = [reply.text for reply in generator([PROMPT.format(text=text) for _, text in chosen], desc="paraphrasing")]
    CACHE.parent.mkdir(exist_ok=True)
    CACHE.write_text(json.dumps({"key": key, "teacher": TEACHER, "replies": replies, "speed": generator.speed()}, indent=1))
    return replies, generator.speed()


def discard_reason(passage: str, reply: str) -> str | None:
    words, reply_words = len(passage.split()), len(reply.split())
    if not reply_words:
        return "empty"
    if normalize(reply).strip(" .!?") == normalize(passage).strip(" .!?"):
        return "identical"
    if not words / 3 <= reply_words <= 3 * words:
        return "length"
    return None


def labelled_pairs(chosen: list[tuple[str, str]], replies: list[str], seed: int) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """(texts, pairs of text indices, labels, discarded replies by reason): the
    passages, then the paraphrases kept; each passage with its paraphrase
    (positive) and with another passage of its source (negative)."""
    rng = np.random.default_rng(seed)
    texts = [text for _, text in chosen]
    sources = np.array([source for source, _ in chosen])
    pairs, discarded = [], {}
    for i, ((_, passage), reply) in enumerate(zip(chosen, replies)):
        reason = discard_reason(passage, reply)
        if reason:
            discarded[reason] = discarded.get(reason, 0) + 1
            continue
        pairs.append((i, len(texts)))
        texts.append(reply)
    positives = len(pairs)
    for i in range(len(chosen)):
        others = np.flatnonzero((sources == sources[i]) & (np.arange(len(chosen)) != i))
        pairs.append((i, int(rng.choice(others))))
    labels = np.r_[np.ones(positives, bool), np.zeros(len(pairs) - positives, bool)]
    return texts, np.array(pairs), labels, discarded


def grouped(roots: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return roots[pairs[:, 0]] == roots[pairs[:, 1]]


def record_texts(path: Path, count: int) -> list[str]:
    """The content of the first ``count`` records of a records parquet file, as the stage embeds it."""
    texts, reader = [], pq.ParquetFile(path)
    for batch in reader.iter_batches(batch_size=10_000, columns=["messages", "text"]):
        texts.extend(content_column(batch).to_pylist())
        if len(texts) >= count:
            break
    return texts[:count]


def precisions(texts: list[str], semantic) -> dict:
    """records/s of the encoder in fp32 and in bf16, and the cosine between the two embeddings of each text."""
    import torch

    model = minilm_model()
    chosen = next(model.parameters()).dtype
    speed, vectors = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model.to(dtype)
        embed(texts[: semantic.batch_size], semantic)  # warm-up
        started = time.perf_counter()
        vectors[name] = embed(texts, semantic)
        speed[name] = len(texts) / (time.perf_counter() - started)
    model.to(chosen)
    cosine = np.einsum("ij,ij->i", vectors["fp32"], vectors["bf16"])
    return {"fp32_records_per_s": speed["fp32"], "bf16_records_per_s": speed["bf16"], "bf16_speedup": speed["bf16"] / speed["fp32"],
            "cosine_fp32_bf16_min": float(cosine.min()), "cosine_fp32_bf16_median": float(np.median(cosine)),
            "precision_chosen": precision_name(chosen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-source", type=int, default=40, help="passages of each real source to paraphrase")
    parser.add_argument("--records", type=int, default=100_000, help="records for the throughput measurement")
    parser.add_argument("--records-file", type=Path, default=REPO / "data/dedup/train.parquet",
                        help="records parquet file (the dedup stage's output); run `dvc repro dedup` first")
    parser.add_argument("--precision-records", type=int, default=2_000, help="records for the fp32 / bf16 comparison")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.records_file.is_file():
        parser.error(f"{args.records_file} is missing: run `dvc repro dedup`, or pass --records-file")
    defaults = Dedup()
    semantic, near = defaults.semantic, defaults.near

    chosen = passages(args.per_source, args.seed)
    replies, speed = paraphrases(chosen)
    texts, pairs, labels, discarded = labelled_pairs(chosen, replies, args.seed)
    vectors = embed(texts, semantic)
    by_threshold = {t: scores(grouped(semantic_roots(vectors, semantic.model_copy(update={"threshold": t})), pairs), labels)
                    for t in sorted({*THRESHOLDS, semantic.threshold})}
    ours, minhash = by_threshold[semantic.threshold], scores(grouped(near_duplicate_roots(texts, near), pairs), labels)
    cosine = np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]])
    print(f"{len(chosen)} passages, {int(labels.sum())} paraphrases kept, discarded: {discarded}; {len(labels)} labelled pairs")
    for t, result in by_threshold.items():
        print(f"semantic dedup, cosine >= {t}: precision {result['precision']:.3f}, recall {result['recall']:.3f}, F1 {result['f1']:.3f}")
    print(f"MinHash, Jaccard >= {near.threshold}: precision {minhash['precision']:.3f}, recall {minhash['recall']:.3f}, F1 {minhash['f1']:.3f}")

    records = record_texts(args.records_file, args.records)
    precision = precisions(records[: args.precision_records], semantic)
    print(f"encoder on {min(args.precision_records, len(records)):,} records: fp32 {precision['fp32_records_per_s']:.1f}, "
          f"bf16 {precision['bf16_records_per_s']:.1f} records/s ({precision['bf16_speedup']:.2f}x); cosine between the two "
          f"embeddings: min {precision['cosine_fp32_bf16_min']:.4f}; the stage uses {precision['precision_chosen']}")
    started = time.perf_counter()
    record_vectors = embed(records, semantic)
    embedded = time.perf_counter()
    roots = semantic_roots(record_vectors, semantic)
    finished = time.perf_counter()
    total = finished - started
    load = os.getloadavg()[0]  # other work on the machine slows the embedding: record how busy it was
    labels, _ = clusters(record_vectors, semantic)  # the clusters do not depend on the threshold
    removed = {str(t): int((similar_roots(record_vectors, labels, t) != np.arange(len(records))).sum()) for t in THRESHOLDS}
    print(f"{len(records):,} records of {args.records_file.name}: embedding {embedded - started:.1f} s, clustering and pair search "
          f"{finished - embedded:.1f} s, {len(records) / total:,.0f} records/s; {int((roots != np.arange(len(records))).sum()):,} "
          f"semantic duplicates at cosine >= {semantic.threshold}; 1-minute load average {load:.1f}")
    print(f"semantic duplicates among the records by threshold: {removed}")
    write_results(
        "semantic_dedup",
        figures={"precision": ours["precision"], "recall": ours["recall"], "f1": ours["f1"],
                 "minhash_precision": minhash["precision"], "minhash_recall": minhash["recall"], "minhash_f1": minhash["f1"],
                 "by_threshold": {str(t): result for t, result in by_threshold.items()},
                 "median_cosine_positive": float(np.median(cosine[labels])), "median_cosine_negative": float(np.median(cosine[~labels])),
                 "records_measured": len(records), "records_per_s": len(records) / total, "seconds": total,
                 "embedding_seconds": embedded - started, "cluster_and_pair_search_seconds": finished - embedded,
                 "semantic_duplicates_in_records": int((roots != np.arange(len(records))).sum()),
                 "semantic_duplicates_in_records_by_threshold": removed, "load_average_1min_after_throughput": load, **precision},
        settings={"threshold": semantic.threshold, "records_per_cluster": semantic.records_per_cluster, "batch_size": semantic.batch_size,
                  "minhash_threshold": near.threshold, "passages": len(chosen), "passages_per_source": args.per_source,
                  "sources": sorted({source for source, _ in chosen}), "paraphrases_kept": int(labels.sum()),
                  "paraphrases_discarded": discarded, "labelled_pairs": len(labels),
                  "paraphrase_teacher": "SmolLM2-135M-Instruct (models/teachers/smollm2-135m-instruct), greedy, bf16 on CPU",
                  "teacher_speed": speed, "records_requested": args.records, "records_file": str(args.records_file),
                  "precision_records": min(args.precision_records, len(records))},
    )


if __name__ == "__main__":
    main()
