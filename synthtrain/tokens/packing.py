"""Packing: the token stream of a Parquet file of records cut into ``seq_len``
sequences, written as ``.npy`` shards with their loss masks (docs/training.md).
``data/tokens`` is written whole into a temporary directory and replaces the old
one when the stage succeeds (records.output_directory): a failed or killed run
leaves the previous shards, and no shard of an earlier, larger run lingers."""

import logging
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast

from synthtrain.params import Params, StageError, Tokenize
from synthtrain.records import BATCH_ROWS, CATEGORIES, SCHEMA, TOKENIZE_REJECT_SCHEMA, ParquetSink, open_parquet, output_directory
from synthtrain.tokens.encoding import encode, load_tokenizer, token_dtype

log = logging.getLogger("tokenize")

MIX = Path("data/mix/train.parquet")
HELDOUT = Path("data/heldout")
TOKENS = Path("data/tokens")
REJECTS = Path("data/rejects/tokenize.parquet")
METRICS = Path("metrics/tokenize.json")


class Packer:
    """Cuts the token stream into seq_len sequences and writes them in shards of
    `per_shard` sequences; close() pads the last sequence and writes index.json."""

    def __init__(self, directory: Path, seq_len: int, per_shard: int, dtype: np.dtype, pad_id: int):
        self.directory, self.seq_len, self.per_shard, self.dtype, self.pad_id = directory, seq_len, per_shard, dtype, pad_id
        directory.mkdir(parents=True, exist_ok=True)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_tokens = 0
        self.shards: list[dict] = []
        self.padding = 0

    def add(self, tokens: np.ndarray, loss: np.ndarray) -> None:
        self.pending.append((tokens, loss))
        self.pending_tokens += len(tokens)
        if self.pending_tokens >= self.per_shard * self.seq_len:
            self._write(whole_shards_only=True)

    def _write(self, whole_shards_only: bool) -> None:
        tokens = np.concatenate([t for t, _ in self.pending] or [np.empty(0, self.dtype)]).astype(self.dtype)  # an empty file: none
        loss = np.concatenate([m for _, m in self.pending] or [np.empty(0, np.uint8)])
        shard_tokens = self.per_shard * self.seq_len
        while len(tokens) >= shard_tokens or (not whole_shards_only and len(tokens)):
            n = min(len(tokens), shard_tokens)
            self._save(tokens[:n], loss[:n])
            tokens, loss = tokens[n:], loss[n:]
        self.pending, self.pending_tokens = [(tokens, loss)], len(tokens)

    def _save(self, tokens: np.ndarray, loss: np.ndarray) -> None:
        self.padding += -len(tokens) % self.seq_len
        tokens = np.pad(tokens, (0, -len(tokens) % self.seq_len), constant_values=self.pad_id)
        loss = np.pad(loss, (0, -len(loss) % self.seq_len), constant_values=0)
        number = len(self.shards)
        np.save(self.directory / f"tokens-{number:05d}.npy", tokens.reshape(-1, self.seq_len))
        np.save(self.directory / f"mask-{number:05d}.npy", loss.reshape(-1, self.seq_len))
        self.shards.append({"tokens": f"tokens-{number:05d}.npy", "mask": f"mask-{number:05d}.npy",
                            "sequences": len(tokens) // self.seq_len})

    def close(self) -> dict:
        self._write(whole_shards_only=False)
        index = {"dtype": self.dtype.name, "seq_len": self.seq_len, "pad_id": self.pad_id,
                 "sequences": sum(s["sequences"] for s in self.shards), "shards": self.shards}
        (self.directory / "index.json").write_text(json.dumps(index, indent=2) + "\n")
        return index


def tokenize_file(tokenizer: PreTrainedTokenizerFast, path: Path, directory: Path, config: Tokenize, rejects: ParquetSink) -> dict:
    """Tokenize and pack one Parquet file of records into `directory`; returns its counts."""
    packer = Packer(directory, config.seq_len, config.sequences_per_shard, token_dtype(tokenizer), tokenizer.pad_token_id)
    rows = open_parquet(path).metadata.num_rows
    tokens, loss_tokens, rejected = Counter(), Counter(), Counter()
    row, started = 0, time.time()
    with tqdm(total=rows, desc=f"tokenize {path}", unit="record") as progress:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=SCHEMA.names):
            encoded = encode(tokenizer, batch, config.assistant_only)
            packer.add(encoded.tokens, encoded.loss)
            category = batch.column("category").to_numpy(zero_copy_only=False)
            for name in CATEGORIES:
                chosen = category == name
                tokens[name] += int(encoded.lengths[chosen].sum())
                loss_tokens[name] += int(encoded.loss_tokens[chosen].sum())
            for i, reason in enumerate(encoded.reasons):
                if reason is not None:
                    rejected[reason] += 1
                    rejects.write({**batch.slice(i, 1).to_pylist()[0], "reason": reason, "file": str(path), "row": row + i})
            row += batch.num_rows
            progress.update(batch.num_rows)
    index = packer.close()
    seconds = time.time() - started
    log.info(f"{path}: {rows:,} records, {sum(tokens.values()):,} tokens in {seconds:.1f} s "
             f"({sum(tokens.values()) / max(seconds, 1e-9):,.0f} tokens/s); rejected {sum(rejected.values()):,}; "
             f"wrote {index['sequences']:,} sequences to {directory}/")
    return {
        "in": rows,
        "kept": rows - sum(rejected.values()),
        "rejected": sum(rejected.values()),
        "rejected_by_reason": dict(sorted(rejected.items())),
        "tokens": {name: tokens[name] for name in CATEGORIES},
        "loss_tokens": {name: loss_tokens[name] for name in CATEGORIES},
        "sequences": index["sequences"],
        "padding_tokens": packer.padding,
    }


def tokenize(params: Params) -> dict:
    config = params.tokenize
    tokenizer = load_tokenizer()
    if not MIX.is_file():
        raise StageError(f"{MIX} is missing: run `dvc repro mix` first")
    heldout = sorted(HELDOUT.glob("*.parquet"))
    with output_directory(TOKENS) as tokens, ParquetSink(REJECTS, TOKENIZE_REJECT_SCHEMA) as rejects:
        metrics = {"train": tokenize_file(tokenizer, MIX, tokens / "train", config, rejects),
                   "heldout": {path.stem: tokenize_file(tokenizer, path, tokens / "heldout" / path.stem, config, rejects)
                               for path in heldout}}
        write_metadata(tokenizer, config, metrics, tokens / "metadata.json")
    return metrics


def write_metadata(tokenizer: PreTrainedTokenizerFast, config: Tokenize, metrics: dict, path: Path) -> None:
    """metadata.json: what the train stage checks the token shards against."""
    metadata = {
        "vocab_size": len(tokenizer),
        "dtype": token_dtype(tokenizer).name,
        "seq_len": config.seq_len,
        "eos_id": tokenizer.eos_token_id,
        "pad_id": tokenizer.pad_token_id,
        "assistant_only": config.assistant_only,
        "train": {key: metrics["train"][key] for key in ("sequences", "tokens", "loss_tokens")},
        "heldout": {name: {key: m[key] for key in ("sequences", "tokens", "loss_tokens")} for name, m in metrics["heldout"].items()},
    }
    path.write_text(json.dumps(metadata, indent=2) + "\n")
