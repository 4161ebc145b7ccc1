"""Benchmark: the tokenize stage's tokenize + pack, against a per-record loop.

Target (issue: tokenizer and tokenize stages): >= 1M tokens/s on this 2-core
machine, and count_tokens fast enough for the mix stage (1M records well under
a minute).

Ours: ``synthtrain.tokens.tokenize_file`` on the first ``--records`` records of
``data/dedup/train.parquet`` (render in Arrow, batch-encode, loss masks, pack,
write the shards), timed whole; then ``count_tokens`` on the same records.
Baseline, measured in the same run on the first ``--baseline-records``: the
straightforward loop, ``apply_chat_template(messages, tokenize=True)`` per
conversation and ``tokenizer(text)`` per document (no mask, no packing),
extrapolated by its tokens/s. The tokenizer is trained first with the
``tokenizer`` params of params.yaml (``models/tokenizer`` is not required).

How the stage is fast: it splits texts into special tokens and pre-tokens in
Arrow, with the tokenizer's own pattern, and runs BPE once per distinct
pre-token of each 10,000-record batch (a test checks that the ids and offsets
equal ``encode_batch``'s). ``tokenizers`` 0.23 uses a single thread unless
``RAYON_NUM_THREADS`` is set, so ``synthtrain.tokens`` sets it. GPT-2's
pre-token pattern needs a look-ahead that RE2 (and so Arrow) lacks, so our
tokenizer's pattern leaves it out: a run of spaces before a word is one
pre-token and the word another, where GPT-2 would join the last space to the
word.

    python bench/tokenize_speed.py [--records 200000] [--baseline-records 5000]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import write_results  # noqa: E402
from synthtrain.params import load_params  # noqa: E402
from synthtrain.records import BATCH_ROWS, TOKENIZE_REJECT_SCHEMA, ParquetSink  # noqa: E402
from synthtrain.tokens.bpe import POOL, sample_pool, train_bpe  # noqa: E402
from synthtrain.tokens.chat import render_column  # noqa: E402
from synthtrain.tokens.encoding import count_tokens  # noqa: E402
from synthtrain.tokens.packing import tokenize_file  # noqa: E402


def baseline(tokenizer, rows: list[dict]) -> int:
    """Tokens of the per-record loop (each record plus its eos)."""
    tokens = 0
    for row in rows:
        if row["messages"] is not None:
            ids = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False)
        else:
            ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        tokens += len(ids) + 1
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--baseline-records", type=int, default=5_000)
    args = parser.parse_args()
    os.chdir(REPO)
    params = load_params(REPO / "params.yaml")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")

    config = params.tokenizer
    started = time.perf_counter()
    tokenizer = train_bpe(render_column(sample_pool(POOL, config.train_records, config.seed)).to_pylist(), config.vocab_size, config.split_digits)
    tokenizer_seconds = time.perf_counter() - started
    print(f"tokenizer: byte-level BPE, {len(tokenizer):,} tokens, trained on {config.train_records:,} records in {tokenizer_seconds:.1f} s")

    records = pa.Table.from_batches([next(pq.ParquetFile(POOL).iter_batches(batch_size=args.records))])
    rows = records.slice(0, args.baseline_records).to_pylist()
    baseline(tokenizer, rows[:100])  # warm up Jinja's template cache
    started = time.perf_counter()
    baseline_tokens = baseline(tokenizer, rows)
    baseline_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.parquet"
        pq.write_table(records, path, row_group_size=BATCH_ROWS)
        rejects = Path(tmp) / "rejects.parquet"
        with ParquetSink(rejects, TOKENIZE_REJECT_SCHEMA) as sink:
            started = time.perf_counter()
            counts = tokenize_file(tokenizer, path, Path(tmp) / "tokens", params.tokenize, sink)
            ours_seconds = time.perf_counter() - started
    ours_tokens = sum(counts["tokens"].values())
    started = time.perf_counter()
    counted, _ = count_tokens(tokenizer, records, params.tokenize.assistant_only)
    count_seconds = time.perf_counter() - started
    assert counted.sum() == ours_tokens, "count_tokens disagrees with packing"

    baseline_speed, ours_speed = baseline_tokens / baseline_seconds, ours_tokens / ours_seconds
    extrapolated = baseline_seconds * ours_tokens / baseline_tokens
    per_million = count_seconds * 1_000_000 / records.num_rows
    print(f"baseline per-record apply_chat_template / tokenizer() loop, {len(rows):,} records: {baseline_tokens:,} tokens "
          f"in {baseline_seconds:.1f} s ({baseline_speed:,.0f} tokens/s); extrapolated to {records.num_rows:,} records: "
          f"{extrapolated:.0f} s")
    print(f"tokenize stage (render, encode, masks, pack, write), {records.num_rows:,} records: {ours_tokens:,} tokens "
          f"in {ours_seconds:.1f} s ({ours_speed:,.0f} tokens/s); target >= 1,000,000 tokens/s")
    print(f"speed ratio vs the per-record loop: {ours_speed / baseline_speed:.1f}x")
    print(f"count_tokens, {records.num_rows:,} records: {count_seconds:.1f} s ({records.num_rows / count_seconds:,.0f} records/s; "
          f"1M records in about {per_million:.0f} s)")
    write_results(
        "tokenize_speed",
        figures={"tokenizer_train_seconds": tokenizer_seconds,
                 "baseline_tokens": baseline_tokens, "baseline_seconds": baseline_seconds, "baseline_tokens_per_s": baseline_speed,
                 "baseline_seconds_extrapolated": extrapolated,
                 "ours_tokens": ours_tokens, "ours_seconds": ours_seconds, "ours_tokens_per_s": ours_speed,
                 "target_1M_tokens_per_s_met": ours_speed >= 1_000_000, "speedup_vs_per_record_loop": ours_speed / baseline_speed,
                 "count_tokens_seconds": count_seconds, "count_tokens_records_per_s": records.num_rows / count_seconds,
                 "count_tokens_seconds_per_1M_records": per_million},
        settings={"records": records.num_rows, "baseline_records": len(rows), "vocab_size": len(tokenizer),
                  "tokenizer_train_records": config.train_records, "seq_len": params.tokenize.seq_len,
                  "assistant_only": params.tokenize.assistant_only, "rayon_threads": os.environ.get("RAYON_NUM_THREADS")},
    )


if __name__ == "__main__":
    main()
