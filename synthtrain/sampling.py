"""sample stage: a sample of a fixed size from the quality-scored pool.

    python -m stages.sample NAME [--params params.yaml]

``NAME`` is a key of ``sample.sizes`` (dvc.yaml runs one stage per key).
``sample`` takes the scored records that break no hard rule, splits the size
into per-category ``quotas`` (largest remainders) when stratified, and
``choose``s within each group by ``sample.strategy``; ``diverse`` clusters
hashed TF-IDF vectors with k-means and draws within clusters with
Efraimidis-Spirakis keys. The pool, the strategies, short pools and the
metrics: docs/quality.md.
"""

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse
from sklearn.cluster import MiniBatchKMeans
from tqdm import tqdm

from synthtrain.params import Params, Sample, StageError
from synthtrain.records import CATEGORIES, SCHEMA, RecordWriter, meta_field, open_parquet
from synthtrain.text import content_column, word_hashes
from synthtrain.tokens.encoding import count_tokens, load_tokenizer

log = logging.getLogger("sample")

INPUT = Path("data/quality/scored.parquet")
HASHED_FEATURES = 2**16
KMEANS_FIT_RECORDS = 20_000


def quotas(counts: dict[str, int], size: int) -> dict[str, int]:
    """Split size over groups in proportion to their counts, largest remainders first."""
    total = sum(counts.values())
    exact = {g: size * n / total for g, n in counts.items()}
    quota = {g: int(e) for g, e in exact.items()}
    for g in sorted(exact, key=lambda g: (quota[g] - exact[g], g))[: size - sum(quota.values())]:
        quota[g] += 1
    return quota


def tfidf(texts: pa.Array) -> sparse.csr_matrix:
    """Rows of log(1 + count) * idf over hashed words, unit length."""
    hashes, offsets = word_hashes(texts)
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    columns = (hashes % np.uint64(HASHED_FEATURES)).astype(np.int64)
    matrix = sparse.csr_matrix((np.ones(len(hashes), np.float32), (rows, columns)), shape=(len(offsets) - 1, HASHED_FEATURES))
    matrix.sum_duplicates()
    document_frequency = np.bincount(matrix.indices, minlength=HASHED_FEATURES)
    idf = np.log((1 + matrix.shape[0]) / (1 + document_frequency)).astype(np.float32) + 1
    matrix.data = np.log1p(matrix.data) * idf[matrix.indices]
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return sparse.diags(1 / np.maximum(norms, 1e-12)).astype(np.float32) @ matrix


def diverse(rows: np.ndarray, quality: np.ndarray, quota: int, texts: pa.Array, config: Sample, rng: np.random.Generator) -> np.ndarray:
    """``quota`` of ``rows`` spread over k-means clusters, weighted by quality within each."""
    vectors = tfidf(texts)
    k = min(config.clusters, len(rows))
    fit = rng.choice(len(rows), min(KMEANS_FIT_RECORDS, len(rows)), replace=False)
    kmeans = MiniBatchKMeans(n_clusters=k, random_state=config.seed, n_init=3, batch_size=4096).fit(vectors[np.sort(fit)])
    cluster = kmeans.predict(vectors)
    sizes = np.bincount(cluster, minlength=k)
    # water-filling: the largest equal share per cluster that the quota allows
    level = 0
    for size in np.sort(sizes):
        room = quota - sizes[sizes < size].sum() - size * (sizes >= size).sum()
        if room < 0:
            break
        level = size
    take = np.minimum(sizes, level)
    spare = quota - take.sum()
    bigger = np.flatnonzero(sizes > level)
    share, extra = divmod(spare, len(bigger)) if len(bigger) else (0, 0)
    take[bigger] += share
    take[bigger[:extra]] += 1
    keys = rng.random(len(rows)) ** (1 / np.maximum(quality, 1e-6))
    chosen = []
    for c in range(k):
        members = np.flatnonzero(cluster == c)
        chosen.append(members[np.argsort(-keys[members], kind="stable")[: take[c]]])
    return rows[np.concatenate(chosen)]


def choose(pool: pa.Table, rows: np.ndarray, quota: int, config: Sample, rng: np.random.Generator) -> np.ndarray:
    """``quota`` of the pool rows ``rows`` (indices into ``pool``) by the strategy."""
    quality = pool.column("quality").to_numpy()[rows]
    if config.strategy == "top_quality":
        return rows[np.argsort(-quality, kind="stable")[:quota]]
    if config.strategy == "random":
        return rows[rng.permutation(len(rows))[:quota]]
    return diverse(rows, quality, quota, read_texts(rows, pool), config, rng)


def read_texts(rows: np.ndarray, pool: pa.Table) -> pa.Array:
    """Contents of the given pool rows, read from the scored file by row group."""
    wanted = pool.column("row").to_numpy()[rows]
    ordered = np.sort(wanted)
    parquet = open_parquet(INPUT)
    parts, start = [], 0
    for group in range(parquet.num_row_groups):
        count = parquet.metadata.row_group(group).num_rows
        mine = ordered[(ordered >= start) & (ordered < start + count)] - start
        if len(mine):
            parts.append(content_column(parquet.read_row_group(group, columns=["messages", "text"]).take(mine)))
        start += count
    order = np.argsort(np.argsort(wanted, kind="stable"), kind="stable")  # back from file order to the order of rows
    return pa.chunked_array(parts).combine_chunks().take(order)


def sample(params: Params, name: str) -> dict:
    config = params.sample
    if name not in config.sizes:
        raise StageError(f"sample '{name}' is not in sample.sizes (have {', '.join(config.sizes)})")
    size = config.sizes[name]
    if not INPUT.is_file():
        raise StageError(f"{INPUT} is missing: run the quality stage first (dvc repro quality)")
    scored = open_parquet(INPUT).read(columns=["category", "quality", "reject_reason"])
    reason = scored.column("reject_reason")
    in_pool = pc.or_kleene(pc.is_null(reason), pc.equal(reason, "below_threshold")).to_numpy(zero_copy_only=False)
    pool = scored.append_column("row", pa.array(np.arange(scored.num_rows))).filter(pa.array(in_pool))
    log.info("%s: pool of %s of %s scored records (hard-rule rejects left out)", name, f"{pool.num_rows:,}", f"{scored.num_rows:,}")

    short = size > pool.num_rows
    if short and not config.allow_short:
        raise StageError(f"sample.sizes.{name} = {size:,} but the pool has only {pool.num_rows:,} records; "
                         "lower the size, add data, or set sample.allow_short: true")
    if short:
        log.warning("%s: the pool has only %s records of the %s asked for; keeping them all", name, f"{pool.num_rows:,}", f"{size:,}")
    category = pool.column("category").to_numpy(zero_copy_only=False)
    groups = {c: np.flatnonzero(category == c) for c in CATEGORIES if (category == c).any()} if config.stratify \
        else {"all": np.arange(pool.num_rows)}
    want = quotas({g: len(rows) for g, rows in groups.items()}, min(size, pool.num_rows))
    rng = np.random.default_rng([config.seed, size])
    chosen = np.sort(np.concatenate([choose(pool, groups[g], want[g], config, rng) for g in groups]))
    rows = pool.column("row").to_numpy()[chosen]

    metrics = write_sample(rows, Path(f"data/sample/{name}.parquet"), params)
    metrics.update(name=name, size=size, pool=pool.num_rows, short=bool(short), strategy=config.strategy, stratify=config.stratify)
    assert metrics["records"] == min(size, pool.num_rows)
    return metrics


def write_sample(rows: np.ndarray, path: Path, params: Params) -> dict:
    """Copy the chosen rows (sorted) of the scored file to ``path``; returns the metrics."""
    tokenizer = load_tokenizer()
    parquet = open_parquet(INPUT)
    by_category = {c: {"records": 0, "tokens": 0, "loss_tokens": 0, "quality": 0.0} for c in CATEGORIES}
    families: Counter = Counter()  # "<category>/<family>" of built-in records: what a strategy chose within a category
    flawed = judged = 0
    start = 0
    with RecordWriter(path) as writer:
        for group in tqdm(range(parquet.num_row_groups), desc=f"write {path.name}", unit="group"):
            count = parquet.metadata.row_group(group).num_rows
            mine = rows[(rows >= start) & (rows < start + count)] - start
            start += count
            if not len(mine):
                continue
            table = parquet.read_row_group(group).take(mine)
            writer.write_table(table.select(SCHEMA.names))
            tokens, loss_tokens = count_tokens(tokenizer, table, params.tokenize.assistant_only)
            category = table.column("category").to_numpy(zero_copy_only=False)
            quality = table.column("quality").to_numpy()
            for c in CATEGORIES:
                here = category == c
                entry = by_category[c]
                entry["records"] += int(here.sum())
                entry["tokens"] += int(tokens[here].sum())
                entry["loss_tokens"] += int(loss_tokens[here].sum())
                entry["quality"] += float(quality[here].sum())
            meta = table.column("meta")
            builtin = pc.fill_null(pc.equal(meta_field(meta, "generator"), "builtin"), False).to_numpy(zero_copy_only=False)
            family = meta_field(meta, "family").to_pylist()
            families.update(f"{c}/{f}" for c, f, b in zip(category, family, builtin) if b and f is not None)
            judged += int(builtin.sum())
            flawed += int((builtin & pc.is_valid(meta_field(meta, "flaw")).to_numpy(zero_copy_only=False)).sum())
    for entry in by_category.values():
        entry["mean_quality"] = round(entry.pop("quality") / entry["records"], 4) if entry["records"] else None
    records = sum(e["records"] for e in by_category.values())
    return {"records": records, "tokens": sum(e["tokens"] for e in by_category.values()), "by_category": by_category,
            "by_family": dict(sorted(families.items())), "flaw_rate": round(flawed / judged, 4) if judged else None, "ground_truth_records": judged}
