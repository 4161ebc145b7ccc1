"""dedup stage: exact, near and semantic duplicate removal across sources, a held-out split
per source, and decontamination of the training records (``python -m stages.dedup``).

``dedup`` runs the steps in order: exact duplicates by a folded 64-bit content
key (``text.fold_column``); near duplicates by MinHash LSH (``MinHasher``, bands
and rows from ``optimal_bands``), candidate pairs verified by their true
Jaccard similarity and clustered by ``component_roots``; the first record of each
cluster kept; when ``dedup.semantic.enabled``, semantic duplicates among the
pool's remaining records (``semantic_roots``: MiniLM embeddings, k-means, cosine
similarity within clusters); the held-out split by a seeded hash of the content key; then
n-gram decontamination against held-out records, built-in problems and
benchmark files (``contamination_table``). What each step does, its params and
the outputs: docs/quality.md.
"""

import logging
import json
import functools
import itertools
import math
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import MiniBatchKMeans
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from synthtrain.embeddings import minilm_encoder
from synthtrain.sources.formats import Parsed
from synthtrain.sources.local import read as read_local
from synthtrain.parallel import parallel_map
from synthtrain.params import LocalSource, NearDuplicates, Params, SemanticDuplicates, StageError
from synthtrain.records import DEDUP_REJECT_SCHEMA, OUTSIDE_POOL, ParquetSink, RecordWriter, content_of, meta_field, open_parquet, output_directory
from synthtrain.text import content_column, mix64, ngram_hashes, word_hashes

log = logging.getLogger("dedup")

RAW = Path("data/raw")
TRAIN = Path("data/dedup/train.parquet")
HELDOUT = Path("data/heldout")
REJECTS = Path("data/rejects/dedup.parquet")
METRICS = Path("metrics/dedup.json")
BUILTIN_EVAL = RAW / "builtin_eval.parquet"

ROW_GROUPS_PER_JOB = 5
NO_KEY = np.uint64(0)  # content key of a record with no words at all
BITMAP_MASK = np.uint64(2**24 - 1)  # low hash bits indexing the contamination prefilter
SEMANTIC_MAX_CHARS = 2048  # MiniLM reads 256 tokens (about 1,000 characters): tokenizing the rest of a long text is wasted
SIMILARITY_BLOCK = 1024  # rows of a cluster's similarity matrix computed at once (memory: BLOCK x cluster size floats)


# --- LSH configuration ----------------------------------------------------------
def collision_probability(similarity: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Probability that two records of this Jaccard similarity share a band."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def optimal_bands(near: NearDuplicates) -> tuple[int, int]:
    """The (bands, rows) with bands * rows <= num_perm that minimise
    fp_weight * P(candidate | s < threshold) area + fn_weight * P(miss | s >= threshold) area."""
    grid = np.linspace(0.0, 1.0, 2001)
    best, best_cost = (1, 1), np.inf
    for bands in range(1, near.num_perm + 1):
        for rows in range(1, near.num_perm // bands + 1):
            p = collision_probability(grid, bands, rows)
            below, above = grid < near.threshold, grid >= near.threshold
            false_positive = np.trapezoid(p[below], grid[below])
            false_negative = np.trapezoid(1.0 - p[above], grid[above])
            cost = near.false_positive_weight * false_positive + near.false_negative_weight * false_negative
            if cost < best_cost:
                best, best_cost = (bands, rows), cost
    return best


# --- MinHash --------------------------------------------------------------------
class MinHasher:
    """Shingles, MinHash signatures and LSH band keys for batches of texts."""

    def __init__(self, near: NearDuplicates, seed: int = 0):
        self.near = near
        self.bands, self.rows = optimal_bands(near)
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 2**31, near.num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self.b = rng.integers(0, 2**32, near.num_perm, dtype=np.uint32)
        self.band_multipliers = rng.integers(0, 2**62, self.rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

    def shingles(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shingle hashes, owner text of each, content key of each text)."""
        return self.shingles_of_words(*word_hashes(texts))

    def shingles_of_words(self, words: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        count = len(offsets) - 1
        # the content key: one hash of all of a text's words (a window longer than any text)
        longest = int(np.diff(offsets).max(initial=0))
        whole, whole_owner = ngram_hashes(words, offsets, longest + 1)
        keys = np.full(count, NO_KEY, dtype=np.uint64)
        keys[whole_owner] = whole
        shingles, owner = ngram_hashes(words, offsets, self.near.shingle)
        return shingles, owner, keys

    def band_keys(self, shingles: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
        """One key per band and text, shape (bands, count). Texts without
        shingles (no words) get meaningless keys: leave them out of candidate_pairs."""
        present = np.unique(owner)
        starts = np.searchsorted(owner, present)
        values = (shingles >> np.uint64(32)).astype(np.uint32)
        signature = np.empty((self.near.num_perm, len(present)), dtype=np.uint32)
        for p in range(self.near.num_perm):
            permuted = values * self.a[p]
            permuted += self.b[p]
            signature[p] = np.minimum.reduceat(permuted, starts)
        keys = np.zeros((self.bands, count), dtype=np.uint64)
        for band in range(self.bands):
            rows = signature[band * self.rows : (band + 1) * self.rows].astype(np.uint64)
            combined = (rows * self.band_multipliers[: len(rows), None]).sum(axis=0) + np.uint64(band)
            keys[band, present] = mix64(combined)
        return keys


def candidate_pairs(band_keys: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Pairs (i, j), i < j, of eligible records that share a band key: each
    member of a bucket is paired with the bucket's first member."""
    index = np.flatnonzero(eligible)
    found = []
    for keys in band_keys:
        keys = keys[index]
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, len(keys)])
        first = np.repeat(order[starts], sizes)
        others = order != first
        found.append(np.stack([index[first[others]], index[order[others]]], axis=1))
    pairs = np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0)


def jaccard(pairs: np.ndarray, sets: dict[int, np.ndarray]) -> np.ndarray:
    """True Jaccard similarity of each pair's shingle sets (sorted, unique)."""
    similarity = np.empty(len(pairs))
    for k, (i, j) in enumerate(pairs):
        a, b = sets[i], sets[j]
        common = len(np.intersect1d(a, b, assume_unique=True))
        similarity[k] = common / (len(a) + len(b) - common)
    return similarity


def shingle_sets(shingles: np.ndarray, owner: np.ndarray, ids) -> dict[int, np.ndarray]:
    """{ids[k]: sorted unique shingles of text k}."""
    starts = np.searchsorted(owner, np.arange(len(ids) + 1))
    return {i: np.unique(shingles[starts[k] : starts[k + 1]]) for k, i in enumerate(ids)}


def component_roots(count: int, pairs: np.ndarray) -> np.ndarray:
    """The root of every record: the smallest index in its connected component of ``pairs``.
    scipy's connected components, linear in the pairs: templated records link millions."""
    if not len(pairs):
        return np.arange(count)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    smallest = np.full(component.max() + 1, count)
    np.minimum.at(smallest, component, np.arange(count))
    return smallest[component]


def first_of_equal(keys: np.ndarray) -> np.ndarray:
    """For each position, the first position with the same key."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    first = np.empty(len(keys), dtype=np.int64)
    first[order] = np.repeat(order[starts], np.diff(np.r_[starts, len(keys)]))
    return first


def near_duplicate_roots(texts: list[str], near: NearDuplicates) -> np.ndarray:
    """Exact and near-duplicate clustering of texts held in memory (accuracy
    checks, tests): the root of each text, as the stage computes it."""
    minhasher = MinHasher(near)
    array = pa.array(texts, pa.string())
    shingles, owner, keys = minhasher.shingles(array)
    first = first_of_equal(keys)
    eligible = (first == np.arange(len(texts))) & np.isin(np.arange(len(texts)), owner)
    pairs = candidate_pairs(minhasher.band_keys(shingles, owner, len(texts)), eligible)
    sets = shingle_sets(shingles, owner, range(len(texts)))
    verified = pairs[jaccard(pairs, sets) >= near.threshold] if len(pairs) else pairs
    roots = component_roots(len(texts), verified)
    return roots[first]


# --- semantic duplicates ------------------------------------------------------------
# Records that say the same thing in other words, which shared shingles cannot
# show: unit-length MiniLM embeddings split into k-means clusters of about
# records_per_cluster records (cosine neighbours nearly always share a cluster,
# and comparing within clusters keeps the pair search linear in the records),
# pairs of a cluster with cosine similarity >= threshold joined into groups,
# one record kept per group.
def embed(texts: list[str], semantic: SemanticDuplicates) -> np.ndarray:
    """Unit-length MiniLM embeddings of the texts' beginnings, float32."""
    return minilm_encoder([text[:SEMANTIC_MAX_CHARS] for text in texts], semantic.batch_size).astype(np.float32)


def clusters(vectors: np.ndarray, semantic: SemanticDuplicates) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of each vector, centroids) of seeded k-means; on unit vectors
    the Euclidean k-means groups by cosine similarity."""
    k = math.ceil(len(vectors) / semantic.records_per_cluster)
    if k <= 1:
        return np.zeros(len(vectors), dtype=np.int64), vectors.mean(axis=0, keepdims=True)
    kmeans = MiniBatchKMeans(n_clusters=k, random_state=semantic.seed, batch_size=4096, n_init=3)
    with threadpool_limits(1):  # one thread: the clusters must not depend on the core count
        labels = kmeans.fit_predict(vectors)
    return labels.astype(np.int64), kmeans.cluster_centers_.astype(np.float32)


def similar_roots(vectors: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """``component_roots`` of the pairs of one cluster whose cosine similarity is >= threshold,
    a cluster at a time: memory is bounded by a cluster's pairs, not all of them."""
    roots = np.arange(len(vectors))
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
    for members in np.split(order, starts[1:]):
        members = np.sort(members)  # the smallest index of a group is its first record in input order
        block = vectors[members]
        found = []
        for first in range(0, len(members), SIMILARITY_BLOCK):
            similarity = block[first : first + SIMILARITY_BLOCK] @ block.T
            i, j = np.nonzero(similarity >= threshold)
            i += first
            above = j > i
            found.append(np.stack([i[above], j[above]], axis=1))
        roots[members] = members[component_roots(len(members), np.concatenate(found))]
    return roots


def semantic_roots(vectors: np.ndarray, semantic: SemanticDuplicates) -> np.ndarray:
    """For each vector, the index of the record kept for its group (itself when it is kept)."""
    labels, centroids = clusters(vectors, semantic)
    roots = similar_roots(vectors, labels, semantic.threshold)
    if semantic.keep == "first":
        return roots
    centrality = np.einsum("ij,ij->i", vectors, centroids[labels])
    order = np.lexsort((-centrality, roots))  # by group, the most central first (ties: input order)
    starts = np.flatnonzero(np.r_[True, roots[order][1:] != roots[order][:-1]])
    kept = np.empty(len(vectors), dtype=np.int64)
    kept[roots[order][starts]] = order[starts]
    return kept[roots]


# --- accuracy ---------------------------------------------------------------------
def scores(predicted: np.ndarray, actual: np.ndarray) -> dict:
    tp, fp, fn = int((predicted & actual).sum()), int((predicted & ~actual).sum()), int((~predicted & actual).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"pairs": len(actual), "positives": int(actual.sum()), "precision": round(precision, 4),
            "recall": round(recall, 4), "f1": round(f1, 4)}


def builtin_accuracy(flaws, copied, families, ids, root, near_duplicate, seed: int) -> dict | None:
    """(a) The built-in generator's injected near duplicates. Positive pairs:
    each injected copy with the record it copies; negative pairs: that original
    with a random clean record of the same family (same template, different
    content). A pair is predicted a duplicate when both are in one cluster.
    Clean records that the stage removed as near duplicates of each other are
    counted apart (``unlabelled_removed``): they are verified Jaccard >=
    threshold, near duplicates the generator made by chance, not errors."""
    copies = np.flatnonzero(flaws == 1)
    if not len(copies):
        return None
    order = np.argsort(ids, kind="stable")
    at = np.searchsorted(ids[order], copied[copies]).clip(max=len(ids) - 1)
    found = ids[order][at] == copied[copies]
    copies, originals = copies[found], order[at[found]]
    clean = np.flatnonzero(flaws == 0)
    clean = clean[np.argsort(families[clean], kind="stable")]
    group_start = np.searchsorted(families[clean], families[originals])
    group_size = np.searchsorted(families[clean], families[originals], side="right") - group_start
    usable = group_size > 1
    rng = np.random.default_rng(seed)
    others = clean[group_start[usable] + rng.integers(0, group_size[usable])]
    others_ok = ids[others] != ids[originals[usable]]
    left = np.concatenate([copies, originals[usable][others_ok]])
    right = np.concatenate([originals, others[others_ok]])
    actual = np.r_[np.ones(len(copies), bool), np.zeros(int(others_ok.sum()), bool)]
    result = scores(root[left] == root[right], actual)
    result["unlabelled_removed"] = int((near_duplicate & (flaws == 0)).sum())
    return result


def read_texts(files: dict, min_words: int) -> tuple[list[str], dict]:
    """Texts of at least min_words words from the accuracy files, and per file
    how many were used (or that it is missing)."""
    texts, report = [], {}
    for name, file in files.items():
        if not file.files(f"dedup.accuracy.files.{name}"):
            report[name] = {"missing": True}
            continue
        source = LocalSource(kind="local", path=file.path, category="web", max_samples=10**9, split=file.split)
        found = [content_of(item.messages, item.text) for item in read_local(source) if isinstance(item, Parsed)]
        found = [text for text in found if len(text.split()) >= min_words]
        texts.extend(found)
        report[name] = {"texts": len(found)}
    return texts, report


def edited_copy(words: list[str], target: float, shingle: int, vocabulary: list[str], rng: np.random.Generator) -> list[str]:
    """The words with random substitutions, insertions and deletions, about as
    many as bring the shingle Jaccard similarity down to target."""
    shingles = max(1, len(words) - shingle + 1)
    changed = shingles * (1 - target) / (1 + target)  # shingles to change for Jaccard = target
    edits = int(rng.poisson(changed / shingle)) if target < 1 else 0
    words = list(words)
    for _ in range(edits):
        i = int(rng.integers(len(words)))
        op = rng.integers(3)
        if op == 0:
            words[i] = vocabulary[rng.integers(len(vocabulary))]
        elif op == 1:
            words.insert(i, vocabulary[rng.integers(len(vocabulary))])
        elif len(words) > 1:
            del words[i]
    return words


def real_text_accuracy(config) -> dict | None:
    """(b) Pairs of a real text and an edited copy at a target Jaccard
    similarity drawn uniformly from [0.5, 1]; the true similarity is measured,
    and a pair is a duplicate when it is >= threshold. All texts and copies are
    deduplicated together, as the stage does, and a pair is predicted a
    duplicate when both end up in one cluster."""
    accuracy = config.accuracy
    texts, report = read_texts(accuracy.files, accuracy.min_words)
    if not texts or not accuracy.pairs:
        return {"files": report} if report else None
    rng = np.random.default_rng(accuracy.seed)
    bases = [texts[i] for i in rng.choice(len(texts), min(accuracy.pairs, len(texts)), replace=False)]
    vocabulary = sorted({w for text in bases for w in text.split()})
    copies = [" ".join(edited_copy(text.split(), rng.uniform(0.5, 1.0), config.near.shingle, vocabulary, rng)) for text in bases]
    everything = bases + copies
    minhasher = MinHasher(config.near)
    shingles, owner, _ = minhasher.shingles(pa.array(everything, pa.string()))
    sets = shingle_sets(shingles, owner, range(len(everything)))
    n = len(bases)
    pairs = np.stack([np.arange(n), np.arange(n) + n], axis=1)
    similarity = jaccard(pairs, sets)
    roots = near_duplicate_roots(everything, config.near)
    result = scores(roots[:n] == roots[n:], similarity >= config.near.threshold)
    result["files"] = report
    return result


# --- passes over the input, in parallel -------------------------------------------
class Inputs:
    """The input files cut into jobs of whole row groups, with global row numbers."""

    def __init__(self, sources: list[str]):
        self.sources = sources
        self.paths = [RAW / f"{name}.parquet" for name in sources]
        self.jobs = []  # (source index, row groups, first global row, rows)
        self.bounds = [0]
        for s, path in enumerate(self.paths):
            if not path.is_file():
                raise StageError(f"{path} is missing: run `dvc repro download@{self.sources[s]}` first")
            metadata = open_parquet(path).metadata
            row = self.bounds[-1]
            for g in range(0, metadata.num_row_groups, ROW_GROUPS_PER_JOB):
                groups = list(range(g, min(g + ROW_GROUPS_PER_JOB, metadata.num_row_groups)))
                rows = sum(metadata.row_group(k).num_rows for k in groups)
                self.jobs.append((s, groups, row, rows))
                row += rows
            self.bounds.append(row)
        self.count = self.bounds[-1]

    def read(self, job, columns=None) -> pa.Table:
        source, groups, _, _ = job
        return pq.ParquetFile(self.paths[source]).read_row_groups(groups, columns=columns)


def each_job(function, state: dict, jobs: list, workers: int, description: str):
    """``function(state, job)`` for each job, in order, with a progress bar."""
    return tqdm(parallel_map(functools.partial(function, state), jobs, workers), total=len(jobs), desc=description, unit="job")


def sketch(state: dict, job):
    """Pass 1: content keys, LSH band keys and ids of one job's records."""
    inputs, minhasher = state["inputs"], state["minhasher"]
    table = inputs.read(job, ["id", "messages", "text", "meta"])
    words, offsets = word_hashes(content_column(table))
    np.save(state["words"] / f"{job[2]}-words.npy", words)
    np.save(state["words"] / f"{job[2]}-offsets.npy", offsets)
    shingles, owner, keys = minhasher.shingles_of_words(words, offsets)
    bands = minhasher.band_keys(shingles, owner, table.num_rows)
    has_words = np.zeros(table.num_rows, dtype=bool)
    has_words[owner] = True
    ids = table.column("id").to_numpy(zero_copy_only=False).astype("S32")
    return keys, bands, has_words, ids, generator_labels(table.column("meta"))


def generator_labels(meta: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Ground truth of the built-in generator, for scoring only: per record
    whether it is an injected near duplicate, the id it copies (b"" if none), and
    its family name."""
    flaw = meta_field(meta, "flaw")
    injected = pc.fill_null(pc.equal(flaw, "near_duplicate"), False).to_numpy(zero_copy_only=False)
    clean = pc.is_null(flaw).to_numpy(zero_copy_only=False)
    copied = pc.fill_null(meta_field(meta, "duplicate_of"), "").to_numpy(zero_copy_only=False).astype("S32")
    family = pc.fill_null(meta_field(meta, "family"), "")
    return np.where(injected, 1, np.where(clean, 0, 2)).astype(np.int8), copied, family.to_pylist()


def cached_words(state: dict, job, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The word hashes pass 1 saved for these rows of the job (numbers within the job)."""
    words = np.load(state["words"] / f"{job[2]}-words.npy", mmap_mode="r")
    offsets = np.load(state["words"] / f"{job[2]}-offsets.npy")
    lengths = np.diff(offsets)[rows]
    ends = np.cumsum(lengths)
    within = np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - lengths, lengths)
    return words[np.repeat(offsets[:-1][rows], lengths) + within], np.r_[0, ends].astype(np.int64)


def wanted_words(state: dict, job):
    """Global rows of the job in the sorted state['wanted'], and their words."""
    _, _, first, count = job
    wanted = state["wanted"]
    rows = wanted[np.searchsorted(wanted, first) : np.searchsorted(wanted, first + count)]
    return rows, cached_words(state, job, rows - first)


def candidate_sets(state: dict, job):
    """Shingle sets of the job's records that are in candidate pairs."""
    rows, words = wanted_words(state, job)
    shingles, owner, _ = state["minhasher"].shingles_of_words(*words)
    return shingle_sets(shingles, owner, rows.tolist())


def root_after_semantic_dedup(inputs: Inputs, eligible: np.ndarray, semantic: SemanticDuplicates) -> np.ndarray:
    """For each record, the record kept in its place by semantic dedup of the
    eligible records (itself when it is kept or not eligible)."""
    rows = np.flatnonzero(eligible)
    root = np.arange(inputs.count)
    if len(rows):
        root[rows] = rows[semantic_roots(embed(texts_of(inputs, rows), semantic), semantic)]
    return root


def texts_of(inputs: Inputs, rows: np.ndarray) -> list[str]:
    """The content (text, or "role: content" lines) of these global rows, sorted, in order."""
    texts = []
    for job in inputs.jobs:
        _, _, first, count = job
        within = rows[np.searchsorted(rows, first) : np.searchsorted(rows, first + count)] - first
        if len(within):
            texts.extend(content_column(inputs.read(job, ["messages", "text"])).take(within).to_pylist())
    return texts


def contamination(state: dict, job):
    """Pass 2: which training records of the job contain which contamination
    entries. Returns the job's record count per entry, and the (global row,
    entry) matches, less those of held-out-only entries already common within
    the job (``max_matches`` exempts nothing else)."""
    _, _, first, count = job
    rows = np.flatnonzero(state["train"][first : first + count])
    words, offsets = cached_words(state, job, rows)
    matches = []
    seen = state["contamination_bitmap"]
    for length, (hashes, entries) in state["contamination"].items():
        grams, owner = ngram_hashes(words, offsets, length, short=False)
        maybe = seen[grams & BITMAP_MASK]  # one lookup rules out almost every n-gram
        grams, owner = grams[maybe], owner[maybe]
        at = np.searchsorted(hashes, grams).clip(max=len(hashes) - 1)
        hit = hashes[at] == grams
        matches.append(np.stack([first + rows[owner[hit]], entries[at[hit]]], axis=1))
    matches = np.unique(np.concatenate(matches), axis=0) if matches else np.empty((0, 2), np.int64)
    entries, records = np.unique(matches[:, 1], return_counts=True)
    kept = entries[(records <= state["max_matches"]) | ~state["capped"][entries]]
    return entries, records, matches[np.isin(matches[:, 1], kept)]


# --- the stage ---------------------------------------------------------------------
def dedup(params: Params) -> dict:
    config = params.dedup
    workers = config.workers or os.cpu_count() or 1
    # Sources outside the pool come last: a duplicate is always a later record, so they never remove a pool record
    pool_sources = [name for name, source in params.sources.items() if source.pool]
    inputs = Inputs(pool_sources + [name for name, source in params.sources.items() if not source.pool])
    in_pool = np.arange(inputs.count) < inputs.bounds[len(pool_sources)]
    if inputs.count == 0:
        raise StageError(f"no records to deduplicate: {', '.join(map(str, inputs.paths))} are all empty")
    words_by_benchmark = benchmark_words(params)  # first, so that a bad benchmark file fails fast
    minhasher = MinHasher(config.near)
    words_dir = tempfile.TemporaryDirectory(prefix="dedup-words-")  # pass 1 saves each job's words for the later passes
    state = {"inputs": inputs, "minhasher": minhasher, "words": Path(words_dir.name)}  # what the workers read
    log.info(f"{inputs.count:,} records from {len(inputs.sources)} source(s); "
             f"MinHash {config.near.num_perm} permutations, {minhasher.bands} bands x {minhasher.rows} rows")

    # 1. exact duplicates and band keys
    keys, bands, has_words, ids, flaws, copied, families = [], [], [], [], [], [], []
    for k, b, w, i, (flaw, copy, family) in each_job(sketch, state, inputs.jobs, workers, "minhash"):
        keys.append(k), bands.append(b), has_words.append(w), ids.append(i)
        flaws.append(flaw), copied.append(copy), families.extend(family)
    keys, bands = np.concatenate(keys), np.concatenate(bands, axis=1)
    has_words, ids = np.concatenate(has_words), np.concatenate(ids)
    flaws, copied, families = np.concatenate(flaws), np.concatenate(copied), np.unique(families, return_inverse=True)[1]
    first = first_of_equal(keys)
    exact_duplicate = first != np.arange(inputs.count)

    # 2. near duplicates: candidates from LSH, verified by true Jaccard
    pairs = candidate_pairs(bands, ~exact_duplicate & has_words)
    del bands
    state["wanted"] = np.unique(pairs)
    sets = {}
    for found in each_job(candidate_sets, state, inputs.jobs, workers, "verify"):
        sets.update(found)
    similarity = jaccard(pairs, sets) if len(pairs) else np.empty(0)
    del sets
    verified = pairs[similarity >= config.near.threshold]
    within_pool = in_pool[verified].all(axis=1)
    root = component_roots(inputs.count, verified[within_pool])
    # a record outside the pool near an earlier one joins its cluster, but links no two pool records:
    # the pool's clusters are what they would be without it (pairs by their later record, so roots are final)
    outside = np.sort(verified[~within_pool], axis=1)
    for i, j in outside[np.argsort(outside[:, 1], kind="stable")].tolist():
        root[j] = min(root[j], root[i])
    root = root[first]
    near_duplicate = ~exact_duplicate & (root != np.arange(inputs.count))
    survivor = root == np.arange(inputs.count)

    # 3. semantic duplicates among the pool's survivors; a near duplicate of a record
    # removed here points at the record kept in its place
    semantic_duplicate = np.zeros(inputs.count, dtype=bool)
    if config.semantic.enabled:
        root = root_after_semantic_dedup(inputs, survivor & in_pool, config.semantic)[root]
        semantic_duplicate = survivor & (root != np.arange(inputs.count))
        survivor &= ~semantic_duplicate

    # 4. held-out split per source
    heldout = np.zeros(inputs.count, dtype=bool)
    held_score = mix64(keys ^ mix64(np.full(inputs.count, config.heldout.seed, dtype=np.uint64)))
    limit = np.uint64(min(int(config.heldout.fraction * 2.0**64), 2**64 - 1))
    for s in range(len(pool_sources)):  # only the pool's records are scored
        rows = np.arange(inputs.bounds[s], inputs.bounds[s + 1])
        rows = rows[survivor[rows] & (held_score[rows] < limit)]
        rows = rows[np.argsort(held_score[rows], kind="stable")][: config.heldout.max_per_source]
        heldout[rows] = True

    # 5. decontamination
    state["wanted"] = np.flatnonzero(heldout)
    words_by_benchmark = {"heldout": concatenate_words([wanted_words(state, job)[1] for job in inputs.jobs]), **words_by_benchmark}
    benchmarks = list(words_by_benchmark)
    table, entry_benchmarks, coverage = contamination_table(words_by_benchmark, config.decontaminate)
    # Only an n-gram of held-out records alone may be common phrasing (a template
    # sentence of the built-in world); one that a benchmark or a built-in
    # problem has is a leak however many records repeat it.
    capped = entry_benchmarks == 1 << benchmarks.index("heldout")
    bitmap = np.zeros(int(BITMAP_MASK) + 1, dtype=bool)
    for hashes, _ in table.values():
        bitmap[hashes & BITMAP_MASK] = True
    state.update(contamination=table, contamination_bitmap=bitmap, train=survivor & ~heldout,
                  max_matches=config.decontaminate.max_matches, capped=capped)
    records_per_entry = np.zeros(len(entry_benchmarks), dtype=np.int64)
    found = []
    for job, (entries, records, matches) in zip(inputs.jobs, each_job(contamination, state, inputs.jobs, workers, "decontaminate")):
        if job[0] < len(pool_sources):  # common phrasing is counted in the pool alone: a source outside it changes no pool record
            records_per_entry[entries] += records
        found.append(matches)
    leaks = np.concatenate(found) if found else np.empty((0, 2), np.int64)
    leaks = leaks[(records_per_entry[leaks[:, 1]] <= config.decontaminate.max_matches) | ~capped[leaks[:, 1]]]
    decontaminated = np.zeros(inputs.count, dtype=bool)
    decontaminated[leaks[:, 0]] = True
    contaminated_by: dict[int, set[str]] = {}  # row -> benchmark names
    for row, entry in leaks.tolist():
        contaminated_by.setdefault(row, set()).update(b for k, b in enumerate(benchmarks) if entry_benchmarks[entry] >> k & 1)
    train = survivor & ~heldout & ~decontaminated
    words_dir.cleanup()
    if not train.any():
        raise StageError(
            f"no training record is left of {inputs.count:,}: {int(exact_duplicate.sum()):,} exact and "
            f"{int(near_duplicate.sum()):,} near duplicates (dedup.near.threshold = {config.near.threshold}), "
            f"{int(semantic_duplicate.sum()):,} semantic duplicates (dedup.semantic), "
            f"{int(heldout.sum()):,} held out (dedup.heldout.fraction = {config.heldout.fraction}, max_per_source = "
            f"{config.heldout.max_per_source}), {int(decontaminated.sum()):,} contaminated (dedup.decontaminate)")

    # 6. write
    cluster_roots = np.unique(root[~survivor])
    cluster_id = np.full(inputs.count, -1, dtype=np.int64)
    members = np.isin(root, cluster_roots)
    cluster_id[members] = np.searchsorted(cluster_roots, root[members])
    duplicate_of = np.where(exact_duplicate, first, root)
    counts = write_outputs(inputs, len(pool_sources), train, heldout, exact_duplicate, near_duplicate, semantic_duplicate, decontaminated, contaminated_by, cluster_id, duplicate_of, ids)

    per_benchmark = Counter(b for names in contaminated_by.values() for b in names)
    metrics = {
        "in": inputs.count,
        "exact_duplicates": int(exact_duplicate.sum()),
        "near_duplicates": int(near_duplicate.sum()),
        "semantic_duplicates": int(semantic_duplicate.sum()),
        "heldout": int(heldout.sum()),
        "decontaminated": int(decontaminated.sum()),
        "kept": int(train.sum()),
        "kept_outside_pool": int((train & ~in_pool).sum()),
        "clusters": len(cluster_roots),
        "lsh": {"bands": minhasher.bands, "rows": minhasher.rows, "candidate_pairs": len(pairs),
                "verified_pairs": len(verified)},
        "by_source": counts,
        "decontamination": {
            name: dict(coverage[name], records_removed=per_benchmark.get(name, 0)) for name in benchmarks
        },
        "accuracy": {
            "builtin_injected": builtin_accuracy(flaws, copied, families, ids, root, near_duplicate, config.accuracy.seed),
            "real_text_edits": real_text_accuracy(config),
        },
    }
    assert metrics["in"] == (metrics["kept"] + metrics["heldout"] + metrics["exact_duplicates"] + metrics["near_duplicates"]
                            + metrics["semantic_duplicates"] + metrics["decontaminated"])
    return metrics


def concatenate_words(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Join (words, offsets) of several batches into one."""
    shift = np.cumsum([0] + [len(w) for w, _ in parts])
    words = np.concatenate([w for w, _ in parts] or [np.empty(0, np.uint64)])
    return words, np.concatenate([[0]] + [o[1:] + k for (_, o), k in zip(parts, shift)]).astype(np.int64)


def scored_prompts(problems: pa.Table) -> list[str]:
    """What the eval shows a model of each built-in problem: its user turns. The
    reference solution is never scored (answers are checked against meta), and
    it is written in the training phrasings, so matching it would remove
    training records for sharing the world's ordinary sentences."""
    return ["\n".join(turn["content"] for turn in messages if turn["role"] == "user")
            for messages in problems.column("messages").to_pylist()]


def benchmark_words(params: Params) -> dict:
    """The words of the texts training must not overlap, besides the held-out
    records: built-in evaluation problems and the benchmark files in params,
    by benchmark name (None for a benchmark file that is absent)."""
    words = {}
    if BUILTIN_EVAL.is_file():
        words["builtin_eval"] = word_hashes(pa.array(scored_prompts(open_parquet(BUILTIN_EVAL).read(columns=["messages"]))))
    for name, benchmark in params.dedup.decontaminate.benchmarks.items():
        key = f"dedup.decontaminate.benchmarks.{name}"
        files = benchmark.files(key)
        if not files:
            words[name] = None
            continue
        texts = [text for file in files for text in read_benchmark(Path(file), benchmark.fields, key)]
        words[name] = word_hashes(pa.array(texts, pa.string()))
    return words


def read_benchmark(path: Path, fields: list[str], key: str) -> list[str]:
    """The texts each JSONL line is scored by: the listed fields in order, one
    text per element of a list field (a query with each of its choices, each
    context option with the continuation), every combination where there are
    several."""
    texts = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StageError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            alternatives = []
            for field in fields:
                if not isinstance(item, dict) or field not in item:
                    raise StageError(f"{path}:{number}: no field '{field}' (from {key}.fields)")
                value = item[field]
                alternatives.append(list(map(str, value)) if isinstance(value, list) else [str(value)])
            texts.extend(" ".join(parts) for parts in itertools.product(*alternatives))
    return texts


def contamination_table(texts: dict[str, tuple | None], decontaminate) -> tuple[dict, np.ndarray, dict]:
    """The n-grams training must not share, as entries: ``{window length:
    (sorted hashes, entry numbers)}``, a bit mask of the benchmarks of each
    entry, and per benchmark how many texts could be checked."""
    if len(texts) > 63:
        raise StageError(f"dedup.decontaminate.benchmarks: at most 61 benchmarks, not {len(texts) - 2}")
    grams, lengths, masks, coverage = [], [], [], {}
    for b, (name, words) in enumerate(texts.items()):
        if words is None:
            coverage[name] = {"missing": True}
            continue
        words, offsets = words
        sizes = np.diff(offsets)
        checkable = sizes >= decontaminate.min_ngram
        hashes, owner = ngram_hashes(words, offsets, decontaminate.ngram)
        keep = checkable[owner]
        grams.append(hashes[keep])
        lengths.append(np.minimum(sizes[owner[keep]], decontaminate.ngram).astype(np.uint64))
        masks.append(np.full(int(keep.sum()), 1 << b, dtype=np.int64))
        coverage[name] = {"texts": len(sizes), "checked": int(checkable.sum()), "too_short": int((~checkable).sum())}
    if not grams:
        return {}, np.empty(0, np.int64), coverage
    grams, lengths, masks = np.concatenate(grams), np.concatenate(lengths), np.concatenate(masks)
    order = np.lexsort((grams, lengths))
    grams, lengths, masks = grams[order], lengths[order], masks[order]
    starts = np.flatnonzero(np.r_[True, (grams[1:] != grams[:-1]) | (lengths[1:] != lengths[:-1])]) if len(grams) else np.empty(0, int)
    entry_benchmarks = np.bitwise_or.reduceat(masks, starts) if len(starts) else np.empty(0, np.int64)
    grams, lengths = grams[starts], lengths[starts]
    table = {}
    for length in np.unique(lengths):
        entries = np.flatnonzero(lengths == length)
        table[int(length)] = (grams[entries], entries)
    return table, entry_benchmarks, coverage


def write_outputs(inputs: Inputs, pool_sources: int, train, heldout, exact_duplicate, near_duplicate, semantic_duplicate, decontaminated, contaminated_by,
                  cluster_id, duplicate_of, ids) -> dict:
    """One sequential pass in input order: train, held-out and reject files; the kept records of the
    sources after the first ``pool_sources`` go to data/dedup/sources/<source>.parquet instead of train.
    data/heldout and data/dedup/sources are written whole and replace the old ones when the stage
    succeeds, so the file of a source that is gone goes then, and a failed stage leaves every old file in place."""
    counts = {}
    with (output_directory(HELDOUT) as heldout_dir, output_directory(OUTSIDE_POOL) as outside_dir, RecordWriter(TRAIN) as train_writer,
          ParquetSink(REJECTS, DEDUP_REJECT_SCHEMA) as reject_writer):
        writers = {}  # per source: its held-out records (pool) or its kept records (outside the pool)
        for job in tqdm(inputs.jobs, desc="write", unit="job"):
            source = inputs.sources[job[0]]
            table = inputs.read(job)
            rows = np.arange(job[2], job[2] + table.num_rows)
            in_pool = job[0] < pool_sources
            if source not in writers:
                writers[source] = RecordWriter((heldout_dir if in_pool else outside_dir) / f"{source}.parquet")
            if in_pool:
                train_writer.write_table(table.filter(train[rows]))
            writers[source].write_table(table.filter((heldout if in_pool else train)[rows]))
            duplicate = exact_duplicate[rows] | near_duplicate[rows] | semantic_duplicate[rows]
            rejected = rows[duplicate | decontaminated[rows]]
            if len(rejected):
                reason = np.select([exact_duplicate[rejected], near_duplicate[rejected], semantic_duplicate[rejected]],
                                   ["exact_duplicate", "near_duplicate", "semantic_duplicate"], "decontaminated")
                duplicated = reason != "decontaminated"
                taken = table.take(rejected - job[2])
                for name, values in (
                    ("reason", pa.array(reason)),
                    ("cluster_id", pa.array(np.where(duplicated, cluster_id[rejected], 0), mask=~duplicated)),
                    ("duplicate_of", pa.array(ids[duplicate_of[rejected]].astype(str), mask=~duplicated)),
                    ("detail", pa.array([", ".join(sorted(contaminated_by[r])) if r in contaminated_by else None for r in rejected.tolist()], pa.string())),
                ):
                    taken = taken.append_column(name, values)
                reject_writer.write_table(taken)
            c = counts.setdefault(source, Counter())
            c["in"] += table.num_rows
            c["kept"] += int(train[rows].sum())
            c["heldout"] += int(heldout[rows].sum())
            c["exact_duplicates"] += int(exact_duplicate[rows].sum())
            c["near_duplicates"] += int(near_duplicate[rows].sum())
            c["semantic_duplicates"] += int(semantic_duplicate[rows].sum())
            c["decontaminated"] += int(decontaminated[rows].sum())
        for writer in writers.values():
            writer.close()
    for source in inputs.sources:
        if source not in counts or counts[source]["kept"] == 0:
            log.warning("source %s has no training records left", source)
    return {source: dict(c) for source, c in counts.items()}
