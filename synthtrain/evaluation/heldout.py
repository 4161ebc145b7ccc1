"""Held-out loss, perplexity and bits per byte, per source and per category
(docs/evaluation.md defines them).

Each held-out set is rendered and masked with ``synthtrain.tokens.encoding.encode``
exactly as the tokenize stage does for training, packed per category into
sequences of the model's context and scored in batches, so the loss is the
training objective on unseen records. Bits per byte reads the same forward
pass over content only: the tokens of the content mask (assistant replies and
documents, each with the token that ends it) against the content's UTF-8
bytes, so chat markup is in neither.
"""

import json
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from synthtrain.evaluation.ngram import NgramBaselines
from synthtrain.records import BATCH_ROWS, CATEGORIES, open_parquet
from synthtrain.tokens.encoding import encode, render

log = logging.getLogger("eval")


def first_records(path: Path, limit: int) -> pa.Table:
    """The first ``limit`` records of a Parquet file, read in batches."""
    batches, rows = [], 0
    parquet = open_parquet(path)
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
        batches.append(batch.slice(0, limit - rows))
        rows += batches[-1].num_rows
        if rows >= limit:
            break
    return pa.Table.from_batches(batches, schema=parquet.schema_arrow)


def content_bytes(tokenizer: PreTrainedTokenizerBase, table: pa.Table) -> int:
    """UTF-8 bytes of the content whose tokens the content mask holds: each
    document, and each assistant message's content (no header, no end marker)."""
    texts, turns = render(tokenizer, table)
    conversation = table.column("messages").is_valid().to_numpy(zero_copy_only=False)
    documents = sum(len(text.encode()) for text, conv in zip(texts, conversation) if not conv)
    return documents + sum(len(texts[r][s:e].encode()) for r, s, e in zip(turns.record, turns.content_start, turns.content_end))


def packed(tokens: np.ndarray, loss: np.ndarray, seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The stream cut into rows of seq_len that overlap by one token, so that every
    token but the stream's first is predicted exactly once; the last row is padded
    (pad tokens do not count)."""
    stride = seq_len - 1
    rows = max(1, -(-(len(tokens) - 1) // stride))
    padding = rows * stride + 1 - len(tokens)
    tokens = np.concatenate([tokens, np.full(padding, pad_id, tokens.dtype)]).astype(np.int64)
    loss = np.concatenate([loss, np.zeros(padding, loss.dtype)])
    index = np.arange(rows)[:, None] * stride + np.arange(seq_len)[None, :]
    return tokens[index], loss[index]


@torch.no_grad()
def token_losses(model: PreTrainedModel, tokens: np.ndarray, batch_size: int) -> np.ndarray:
    """Next-token negative log-likelihoods (nats) of packed rows: column i of a
    row is the loss of its token i + 1, so a mask's [:, 1:] selects them."""
    device, rows = model.device, []
    for start in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(tokens[start : start + batch_size]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=ids).logits[:, :-1]
        losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
        rows.append(losses.double().cpu().numpy())
    return np.concatenate(rows)


def summary(nats: float, tokens: int, content_nats: float, nbytes: int) -> dict:
    """Loss and perplexity per loss token; bits per content byte, none without content (replies all empty)."""
    loss = nats / tokens
    bpb = {"bpb": round(content_nats / math.log(2) / nbytes, 4)} if nbytes else {}
    return {"loss": round(loss, 4), "ppl": round(math.exp(loss), 3), **bpb, "tokens": int(tokens)}


SCORERS = ("model", "unigram", "bigram")


def named(prefix: str, scorer: str, figures: dict) -> dict:
    """The model's figures as ``<prefix>_<figure>``; a baseline's loss and bpb as ``<prefix>_<baseline>_<figure>``."""
    if scorer == "model":
        return {f"{prefix}_{key}": value for key, value in figures.items()}
    return {f"{prefix}_{scorer}_{key}": value for key, value in figures.items() if key in ("loss", "bpb")}


def is_clean(meta: str | None) -> bool:
    """A record without an injected flaw: the built-in generator names its flaw in ``meta.flaw``
    (read for scoring only, never for training); records of other sources have none."""
    return not meta or json.loads(meta).get("flaw") is None


def heldout_metrics(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, paths: list[Path], limit: int,
                    seq_len: int, batch_size: int, assistant_only: bool, baselines: NgramBaselines) -> dict:
    """Flat metrics ``heldout_<source>[_<category>]_{loss,ppl,bpb,tokens}`` and the
    totals ``heldout_{loss,ppl,bpb,tokens}``; a source with no records reports
    ``heldout_<source>_records: 0`` and no loss. Loss, perplexity and tokens are
    over the loss mask; bits per byte over the content mask and bytes. The n-gram
    baselines fitted on the training tokens are scored on the same tokens:
    ``..._unigram_{loss,bpb}`` and ``..._bigram_{loss,bpb}`` beside each.
    ``heldout_clean[_<category>]_*`` score the same records less those with an injected
    flaw (all sources together): a fixed yardstick that does not reward a model for
    predicting flawed text, the same for every run whatever its sample."""
    metrics, grand = {}, {name: np.zeros(4) for name in SCORERS}  # nats and tokens of the loss mask, nats and bytes of the content
    clean = {category: {name: np.zeros(4) for name in SCORERS} for category in CATEGORIES}
    for path in paths:
        source = path.stem
        table = first_records(path, limit)
        metrics[f"heldout_{source}_records"] = table.num_rows
        if table.num_rows == 0:
            log.warning("held-out set %s is empty: no loss reported for it", path)
            continue
        unflawed = np.array([is_clean(meta) for meta in table.column("meta").to_pylist()], dtype=bool)
        totals = {name: np.zeros(4) for name in SCORERS}
        for category in tqdm(CATEGORIES, desc=f"held-out {source}", leave=False):
            in_category = pa.compute.equal(table.column("category"), category).to_numpy(zero_copy_only=False)
            for subset, sums in ((table.filter(in_category), totals), (table.filter(in_category & unflawed), clean[category])):
                parts = scored_parts(model, tokenizer, subset, seq_len, batch_size, assistant_only, baselines)
                if parts is None:
                    continue
                for name, part in parts.items():
                    sums[name] += part
                    if sums is totals:
                        metrics.update(named(f"heldout_{source}_{category}", name, summary(*part)))
        if totals["model"][1]:
            for name in SCORERS:
                metrics.update(named(f"heldout_{source}", name, summary(*totals[name])))
                grand[name] += totals[name]
    if grand["model"][1]:
        for name in SCORERS:
            metrics.update(named("heldout", name, summary(*grand[name])))
    else:
        log.warning("no held-out tokens to score: heldout_loss, ppl and bpb are not reported")
    clean_total = {name: sum(clean[category][name] for category in CATEGORIES) for name in SCORERS}
    for name in SCORERS:
        for category in CATEGORIES:
            if clean[category]["model"][1]:
                metrics.update(named(f"heldout_clean_{category}", name, summary(*clean[category][name])))
        if clean_total["model"][1]:
            metrics.update(named("heldout_clean", name, summary(*clean_total[name])))
    metrics["heldout_tokens"] = int(grand["model"][1])
    return metrics


def scored_parts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, subset: pa.Table, seq_len: int, batch_size: int,
                 assistant_only: bool, baselines: NgramBaselines) -> dict[str, np.ndarray] | None:
    """Per scorer, [nats and tokens of the loss mask, nats and bytes of the content] of a set of records
    packed as training packs them; None when it has no loss token."""
    if subset.num_rows == 0:
        return None
    encoded = encode(tokenizer, subset, assistant_only, content=True)
    tokens, mask = packed(encoded.tokens, encoded.loss, seq_len, tokenizer.pad_token_id)
    _, content = packed(encoded.tokens, encoded.content, seq_len, tokenizer.pad_token_id)
    counted = int(mask[:, 1:].sum())
    if counted == 0:
        return None
    nbytes = content_bytes(tokenizer, subset)
    losses = {"model": token_losses(model, tokens, batch_size), "unigram": baselines.unigram_losses(tokens),
              "bigram": baselines.bigram_losses(tokens)}  # fmt: skip
    return {name: np.array([(scored * mask[:, 1:]).sum(), counted, (scored * content[:, 1:]).sum(), nbytes]) for name, scored in losses.items()}
