"""mix stage: the training set, a token budget split over the categories.

    python -m stages.mix [--params params.yaml]

``mix`` reads the sample ``mix.pool`` and writes ``data/mix/train.parquet``.
Shares are of tokens as ``count_tokens`` counts them; ``allocate`` fills a
category's budget with whole records in a seeded order, whole passes first,
then a seeded part. The strategies (``params.MIX_STRATEGIES``), the budget
rules, the order and ``metrics/mix.json``: docs/training.md.
"""

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from synthtrain.params import Params, StageError
from synthtrain.records import BATCH_ROWS, CATEGORIES, OUTSIDE_POOL, SCHEMA, RecordWriter, open_parquet
from synthtrain.tokens.encoding import count_tokens, load_tokenizer

log = logging.getLogger("mix")

OUTPUT = Path("data/mix/train.parquet")


def take_tokens(tokens: np.ndarray, order: np.ndarray, budget: float) -> np.ndarray:
    """The longest prefix of ``order`` whose tokens stay within budget."""
    return order[: int(np.searchsorted(np.cumsum(tokens[order]), budget, side="right"))]


def allocate(tokens: np.ndarray, budget: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Rows of one category (repeats included) filling ``budget`` tokens, and the whole passes made."""
    available = int(tokens.sum())
    passes = int(budget // available) if available else 0
    chosen = [rng.permutation(len(tokens)) for _ in range(passes)]
    chosen.append(take_tokens(tokens, rng.permutation(len(tokens)), budget - passes * available))
    return np.concatenate(chosen), passes


def read_pool(config) -> tuple[pa.Table, str]:
    """The records the mix draws from, and what they are: the sample ``mix.pool``, or every kept record of ``mix.sources``."""
    if config.sources:
        paths, name = [OUTSIDE_POOL / f"{source}.parquet" for source in config.sources], "+".join(config.sources)
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise StageError(f"{missing[0]} is missing: run `dvc repro dedup` first")
    else:
        paths, name = [Path(f"data/sample/{config.pool}.parquet")], config.pool
        if not paths[0].is_file():
            raise StageError(f"{paths[0]} is missing: run `dvc repro sample@{config.pool}` first")
    pool = pa.concat_tables([open_parquet(path).read().select(SCHEMA.names) for path in paths])
    if pool.num_rows == 0:
        raise StageError(f"{' and '.join(map(str, paths))} hold no records")
    return pool, name


def mix(params: Params) -> dict:
    config = params.mix
    pool, pool_name = read_pool(config)
    tokens, loss_tokens = count_tokens(load_tokenizer(), pool, params.tokenize.assistant_only)
    category = pool.column("category").to_numpy(zero_copy_only=False)
    available = {c: int(tokens[category == c].sum()) for c in CATEGORIES}
    requested = int(tokens.sum()) if config.tokens is None else config.tokens
    own_shares = {c: available[c] / int(tokens.sum()) for c in CATEGORIES}
    shares = own_shares if config.tokens is None or config.strategy == "natural" else config.shares()

    for c, share in shares.items():
        if share > 0 and available[c] == 0:
            raise StageError(f"mix: {c} has a share of {share:.2f} but the pool {pool_name} has no {c} records; "
                             f"set mix.{c}: 0 or pick another mix.strategy")
    needed = {c: requested * share for c, share in shares.items()}
    fits = {c: available[c] * config.max_epochs / needed[c] for c in CATEGORIES if needed[c] > 0}
    scale = min(1.0, *fits.values())
    if scale < 1.0:
        short = min(fits, key=fits.get)
        message = (f"mix.tokens = {requested:,}: {short} needs {needed[short]:,.0f} tokens but the pool {pool_name} has "
                   f"{available[short]:,}, {config.max_epochs} passes at most (mix.max_epochs)")
        if not config.scale_down:
            raise StageError(message + f"; lower mix.tokens to {int(requested * scale):,}, raise mix.max_epochs, "
                             "use a larger mix.pool, or set mix.scale_down: true")
        log.warning("%s; scaling the budget down by %.3f", message, scale)
    budget = requested * scale

    rng = np.random.default_rng(config.seed)
    parts, passes = {}, {}
    for c in CATEGORIES:
        rows = np.flatnonzero(category == c)
        target = available[c] if config.tokens is None else budget * shares[c]  # exact: no rounding may drop a record
        picked, passes[c] = allocate(tokens[rows], target, rng) if shares[c] > 0 else (np.empty(0, int), 0)
        parts[c] = rows[picked]
    if config.strategy == "curriculum":
        first = np.concatenate([parts["knowledge"], parts["web"]])
        order = np.concatenate([rng.permutation(first), rng.permutation(parts["instruction"])])
    else:
        order = rng.permutation(np.concatenate(list(parts.values())))
    if not len(order):
        raise StageError(f"mix: no record fits mix.tokens = {requested:,}; raise it")

    with RecordWriter(OUTPUT) as writer:
        for start in range(0, len(order), BATCH_ROWS):
            writer.write_table(pool.take(order[start : start + BATCH_ROWS]).select(SCHEMA.names))

    total = int(tokens[order].sum())
    by_category = {}
    for c in CATEGORIES:
        rows = parts[c]
        by_category[c] = {
            "requested_share": round(shares[c], 4),
            "effective_share": round(int(tokens[rows].sum()) / total, 4),
            "tokens": int(tokens[rows].sum()),
            "loss_tokens": int(loss_tokens[rows].sum()),
            "records": len(rows),
            "unique_records": len(np.unique(rows)),
            "passes": round(int(tokens[rows].sum()) / available[c], 3) if available[c] else 0.0,
            "available_tokens": available[c],
        }
    return {"strategy": config.strategy, "pool": pool_name, "requested_tokens": requested, "tokens": total,
            "scale": round(scale, 4), "records": len(order), "repeated_records": len(order) - sum(len(np.unique(p)) for p in parts.values()),
            "by_category": by_category}
