"""train_tokenizer stage: the tokenizer every later stage and model uses.

    python -m stages.train_tokenizer [--params params.yaml]

``build_tokenizer`` trains a byte-level BPE with the ``tokenizers`` library on
``tokenizer.train_records`` records of ``data/dedup/train.parquet``
(``sample_pool``), rendered as the tokenize stage renders them, with
``chat.pretoken_pattern`` and the ChatML special tokens; or, with
``tokenizer.pretrained``, loads that tokenizer offline (``load_pretrained``) and
gives it ChatML and an eos token if it lacks them. It writes
``models/tokenizer/`` (``save_pretrained``, into a temporary directory that
replaces the old one when the stage succeeds) and ``metrics/tokenizer.json``.
BPE training in ``tokenizers`` 0.23 gave byte-identical files on repeated runs
and with 1 or 2 threads (tests check it). The choices and the special tokens:
docs/training.md.
"""

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from synthtrain.params import Params, StageError
from synthtrain.records import BATCH_ROWS, CATEGORIES, open_parquet, output_directory
from synthtrain.teacher import teacher_folder
from synthtrain.tokens import TOKENIZER as MODEL
from synthtrain.tokens.chat import CHATML_TEMPLATE, ENDOFTEXT, IM_END, IM_START, SPECIAL_TOKENS, pretoken_pattern, render_column

log = logging.getLogger("train_tokenizer")


POOL = Path("data/dedup/train.parquet")
METRICS = Path("metrics/tokenizer.json")

def sample_pool(path: Path, records: int, seed: int) -> pa.Table:
    """A fixed sample of `records` rows (all of them if the pool is smaller), in file order."""
    if not path.is_file():
        raise StageError(f"{path} is missing: run `dvc repro dedup` first")
    pool = open_parquet(path)
    total = pool.metadata.num_rows
    chosen = np.sort(np.random.default_rng(seed).choice(total, min(records, total), replace=False))
    table = pool.read(columns=["category", "messages", "text"])
    return table.take(pa.array(chosen))


def train_bpe(texts: list[str], vocab_size: int, split_digits: bool) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pretoken_pattern(split_digits)), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer, length=len(texts))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT,
                                   extra_special_tokens=[IM_START, IM_END], chat_template=CHATML_TEMPLATE)


def load_pretrained(name: str) -> PreTrainedTokenizerFast:
    """A named tokenizer from a teacher's folder, a local directory or the local hub cache, never the network."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(teacher_folder(name), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise StageError(f"tokenizer.pretrained = {name!r}: cannot load it offline ({str(exc).splitlines()[0]}); "
                         "give a local directory or a hub id already in the local cache") from None
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise StageError(f"tokenizer.pretrained = {name!r} has no fast (tokenizers) version; the tokenize stage needs one")
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": ENDOFTEXT})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def sample_metrics(tokenizer: PreTrainedTokenizerFast, sample: pa.Table) -> dict:
    """Records, characters and tokens per category of the sample, and characters per token."""
    metrics = {}
    for category in CATEGORIES:
        texts = render_column(sample.filter(pc.equal(sample.column("category"), category))).to_pylist()
        tokens = sum(len(e.ids) for i in range(0, len(texts), BATCH_ROWS)
                     for e in tokenizer.backend_tokenizer.encode_batch(texts[i : i + BATCH_ROWS], add_special_tokens=False))
        characters = sum(map(len, texts))
        metrics[category] = {"records": len(texts), "characters": characters, "tokens": tokens,
                             "characters_per_token": round(characters / tokens, 4) if tokens else None}
    return metrics


def build_tokenizer(params: Params) -> dict:
    config = params.tokenizer
    sample = sample_pool(POOL, config.train_records, config.seed)
    if config.pretrained:
        tokenizer = load_pretrained(config.pretrained)
        log.info(f"loaded {config.pretrained} ({len(tokenizer):,} tokens)")
    else:
        texts = render_column(sample).to_pylist()
        started = time.time()
        tokenizer = train_bpe(tqdm(texts, desc="train BPE", unit="record"), config.vocab_size, config.split_digits)
        log.info(f"trained byte-level BPE with {len(tokenizer):,} tokens on {len(texts):,} records "
                 f"of {POOL} in {time.time() - started:.1f} s")
    with output_directory(MODEL) as directory:  # written whole: no file of an earlier, different tokenizer lingers
        tokenizer.save_pretrained(directory)
    return {
        "source": config.pretrained or "trained",
        "vocab_size": len(tokenizer),
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "special_tokens": tokenizer.all_special_tokens,
        "sample": sample_metrics(tokenizer, sample),
    }
