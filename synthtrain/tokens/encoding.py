"""The token API every stage after the tokenizer uses: ``load_tokenizer``,
``render`` records (ChatML in Arrow for whole batches, or a pretrained
tokenizer's own template record by record), ``encode`` them into token ids
with loss masks (assistant turns found from the tokens' character offsets),
and ``count_tokens``: each record's share of the packed stream, exactly as
packing produces it, which the sample and mix stages count budgets with. A
tokenizer trained here is pre-tokenized in Arrow with its own pattern and runs
BPE once per distinct pre-token (``pretokenized_ids``); any other goes through
``encode_batch``. Rendering, loss masks, rejects and packing: docs/training.md.
"""

import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from synthtrain.params import StageError
from synthtrain.records import BATCH_ROWS
from synthtrain.tokens import TOKENIZER as MODEL
from synthtrain.tokens.chat import CHATML_TEMPLATE, IM_END, IM_START, SPECIAL_TOKENS, pretoken_pattern, render_column



def load_tokenizer(path: str | os.PathLike = MODEL) -> PreTrainedTokenizerFast:
    """The tokenizer the tokenizer stage saved, loaded offline."""
    if not (Path(path) / "tokenizer_config.json").is_file():
        raise StageError(f"{path} holds no tokenizer: run `dvc repro tokenizer` first")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not isinstance(tokenizer, PreTrainedTokenizerFast) or tokenizer.eos_token_id is None or not tokenizer.chat_template:
        raise StageError(f"{path}: not a fast tokenizer with an eos token and a chat template; rebuild it with the tokenizer stage")
    return tokenizer


def token_dtype(tokenizer: PreTrainedTokenizerFast) -> np.dtype:
    return np.dtype(np.uint16 if len(tokenizer) <= 2**16 else np.uint32)


# --- rendering ---------------------------------------------------------------------
@dataclass
class Turns:
    """The assistant turns of rendered records, as character spans of their record's text."""

    record: np.ndarray
    start: np.ndarray  # what the loss mask covers: the message as the template writes it
    end: np.ndarray  # after the generation prompt, its end-of-turn markup included
    content_start: np.ndarray  # the message's content alone; -1 where the template does not write it verbatim
    content_end: np.ndarray


def chatml_spans(messages: pa.Array) -> Turns:
    """The characters of each assistant turn's content and its closing <|im_end|>
    in the ChatML rendering, computed from the lengths of the parts that
    chatml_column joins."""
    turns = pc.list_flatten(messages)
    role_length = pc.utf8_length(turns.field("role")).to_numpy()
    content_length = pc.utf8_length(turns.field("content")).to_numpy()
    turn_length = len(IM_START) + role_length + 1 + content_length + len(IM_END) + 1
    turn_start = np.concatenate([[0], np.cumsum(turn_length)[:-1]])
    record = pc.list_parent_indices(messages).to_numpy()
    offsets = pc.subtract(messages.offsets, messages.offsets[0]).to_numpy()
    turn_start = turn_start - turn_start[offsets[record]]  # from the start of the record's rendering
    start = turn_start + len(IM_START) + role_length + 1
    assistant = pc.equal(turns.field("role"), "assistant").to_numpy(zero_copy_only=False)
    start, content_end = start[assistant], (start + content_length)[assistant]
    return Turns(record[assistant], start, content_end + len(IM_END), start, content_end)


def written(text: str, content: str, start: int, end: int) -> tuple[int, int]:
    """Where ``content`` is in ``text[start:end]``, as is or stripped (a template may
    trim it); (-1, -1) when it is in neither form."""
    for form in (content, content.strip()):
        if (at := text.find(form, start, end)) >= 0:
            return at, at + len(form)
    return -1, -1


def template_spans(tokenizer: PreTrainedTokenizerFast, conversation: list[dict]) -> tuple[str, list[tuple[int, int, int, int]]]:
    """Any chat template: the rendering, and for each assistant turn the
    characters its message adds after the generation prompt that precedes it,
    and those of its content (``written``)."""
    def render(messages, prompt=False):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    text, spans = render(conversation), []
    for i, message in enumerate(conversation):
        if message["role"] == "assistant":
            before, through = render(conversation[:i], prompt=True), render(conversation[: i + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise StageError("the tokenizer's chat template renders a conversation differently from its prefixes, "
                                 "so assistant turns cannot be located; use a tokenizer with a prefix-stable template")
            spans.append((len(before), len(through), *written(text, message["content"], len(before), len(through))))
    return text, spans


def render(tokenizer: PreTrainedTokenizerFast, batch: pa.RecordBatch) -> tuple[list[str], Turns]:
    """Each record's text ('' for nothing) and the character spans of its assistant turns."""
    if tokenizer.chat_template == CHATML_TEMPLATE:
        messages = batch.column("messages")
        if isinstance(messages, pa.ChunkedArray):
            messages = messages.combine_chunks()
        return pc.fill_null(render_column(batch), "").to_pylist(), chatml_spans(messages)
    texts, spans = [], []
    for i, (conversation, text) in enumerate(zip(batch.column("messages").to_pylist(), batch.column("text").to_pylist())):
        if conversation is None:
            texts.append(text or "")
            continue
        rendered, turns = template_spans(tokenizer, conversation)
        texts.append(rendered)
        spans.extend((i, *turn) for turn in turns)
    return texts, Turns(*np.array(spans, dtype=np.int64).reshape(-1, 5).T)


# --- encoding ----------------------------------------------------------------------
@dataclass
class Encoded:
    """A batch of records as they enter the stream."""

    tokens: np.ndarray  # the kept records' tokens, each record followed by eos
    loss: np.ndarray  # uint8, 1 where the token counts in the loss
    lengths: np.ndarray  # per record: tokens in the stream, eos included; 0 when rejected
    loss_tokens: np.ndarray  # per record: tokens of `lengths` that count in the loss
    reasons: list[str | None]  # per record: why it was rejected, None when kept
    content: np.ndarray | None = None  # uint8, 1 where the token carries content (content_mask), when asked for


def backend_ids(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Any tokenizer: (ids, token char starts, token char ends, tokens per text), one encode per text."""
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    counts = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    total = int(counts.sum())
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.uint32, count=total)
    offsets = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(e.offsets for e in encodings)),
                          dtype=np.int64, count=2 * total).reshape(-1, 2)
    return ids, offsets[:, 0], offsets[:, 1], counts


def pretokenized_ids(tokenizer: PreTrainedTokenizerFast, texts: pa.Array, pattern: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Our trained tokenizer: the same as backend_ids, but the texts are split into
    special tokens and pre-tokens in Arrow (with the tokenizer's own pattern) and
    BPE runs once per distinct pre-token of the batch, a small fraction of them."""
    special = "|".join(re.escape(token) for token in SPECIAL_TOKENS)
    segments = pc.split_pattern(pc.replace_substring_regex(texts, special, "\x00\\0\x00"), "\x00")
    segment = pc.list_flatten(segments)
    is_special = pc.is_in(segment, pa.array(SPECIAL_TOKENS))
    marked = pc.if_else(is_special, pc.binary_join_element_wise("\x01", segment, ""),
                        pc.replace_substring_regex(segment, pattern, "\x01\\0"))
    pieces = pc.split_pattern(marked, "\x01")
    piece = pc.list_flatten(pieces)
    piece_text = pc.list_parent_indices(segments).to_numpy()[pc.list_parent_indices(pieces).to_numpy()]
    spoken = pc.greater(pc.binary_length(piece), 0).to_numpy(zero_copy_only=False)
    piece, piece_text = pc.filter(piece, pa.array(spoken)), piece_text[spoken]
    length = pc.utf8_length(piece).to_numpy().astype(np.int64)
    text_length = np.bincount(piece_text, weights=length, minlength=len(texts)).astype(np.int64)
    piece_start = np.cumsum(length) - length - np.repeat(np.cumsum(text_length) - text_length, np.bincount(piece_text, minlength=len(texts)))

    encoded = pc.dictionary_encode(piece)
    distinct = encoded.dictionary.to_pylist()
    special_ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    encodings = tokenizer.backend_tokenizer.encode_batch([t for t in distinct if t not in special_ids], add_special_tokens=False)
    encodings = iter(encodings)
    per_distinct = [([special_ids[t]], [(0, len(t))]) if t in special_ids else (lambda e: (e.ids, e.offsets))(next(encodings)) for t in distinct]
    distinct_count = np.fromiter((len(ids) for ids, _ in per_distinct), dtype=np.int64, count=len(distinct))
    distinct_first = np.cumsum(distinct_count) - distinct_count
    distinct_ids = np.fromiter(itertools.chain.from_iterable(ids for ids, _ in per_distinct), dtype=np.uint32, count=int(distinct_count.sum()))
    distinct_offsets = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(o for _, o in per_distinct)),
                                   dtype=np.int64, count=2 * int(distinct_count.sum())).reshape(-1, 2)

    which = encoded.indices.to_numpy().astype(np.int64)
    per_piece = distinct_count[which]
    source = np.repeat(distinct_first[which] - (np.cumsum(per_piece) - per_piece), per_piece) + np.arange(int(per_piece.sum()))
    shift = np.repeat(piece_start, per_piece)
    counts = np.bincount(piece_text, weights=per_piece, minlength=len(texts)).astype(np.int64)
    return distinct_ids[source], distinct_offsets[source, 0] + shift, distinct_offsets[source, 1] + shift, counts


def span_tokens(texts: list[str], counts: np.ndarray, token_start: np.ndarray, token_end: np.ndarray,
                record: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each character span [start, end) of a record's text, the tokens of the
    batch that overlap it, as [begin, stop) (begin == stop: none)."""
    # characters of all texts on one line, so that one searchsorted finds every span's tokens
    base = np.concatenate([[0], np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1)])
    token_base = np.repeat(base[:-1], counts)
    begin = np.searchsorted(token_end + token_base, base[record] + start, side="right")
    stop = np.searchsorted(token_start + token_base, base[record] + end, side="left")
    return begin, np.maximum(begin, stop)


def ranges_mask(size: int, begin: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """uint8 of ``size``: 1 inside any of the ranges [begin, stop), summed as +1/-1 at their borders."""
    borders = np.zeros(size + 1, dtype=np.int32)
    np.add.at(borders, begin, 1)
    np.add.at(borders, stop, -1)
    return (np.cumsum(borders[:-1]) > 0).astype(np.uint8)


def content_mask(texts: list[str], counts: np.ndarray, token_start: np.ndarray, token_end: np.ndarray,
                 conversation: np.ndarray, turns: Turns) -> np.ndarray:
    """1 for the tokens that carry content: every token of a document, and in a
    conversation those that overlap an assistant message's content, each
    followed by the one token that ends the turn (<|im_end|>). Role headers,
    user and system turns and the rest of the template's markup: 0."""
    if (turns.content_start < 0).any():
        raise StageError("the tokenizer's chat template does not write assistant messages as they are (nor stripped), "
                         "so their content cannot be told from its markup")
    first = np.concatenate([[0], np.cumsum(counts)])
    begin, stop = span_tokens(texts, counts, token_start, token_end, turns.record, turns.content_start, turns.content_end)
    turn_end = np.minimum(stop + 1, first[turns.record + 1])  # the end-of-turn token, within the record
    return ranges_mask(len(token_start), np.concatenate([first[:-1][~conversation], begin]),
                       np.concatenate([first[1:][~conversation], turn_end]))


def encode(tokenizer: PreTrainedTokenizerFast, batch: pa.RecordBatch | pa.Table, assistant_only: bool, content: bool = False) -> Encoded:
    """The records' tokens and loss mask as the stream holds them; with ``content``, the content mask too."""
    texts, turns = render(tokenizer, batch)
    pattern = own_pattern(tokenizer)
    if pattern and not any(pc.any(pc.match_substring(pa.array(texts), mark)).as_py() for mark in ("\x00", "\x01")):
        tokens, token_start, token_end, counts = pretokenized_ids(tokenizer, pa.array(texts, pa.string()), pattern)
    else:
        tokens, token_start, token_end, counts = backend_ids(tokenizer, texts)
    first = np.concatenate([[0], np.cumsum(counts)])  # each record's first token in the batch

    conversation = batch.column("messages").is_valid().to_numpy(zero_copy_only=False)
    everything = ~conversation | (not assistant_only)  # records whose every token counts, eos included
    # Counted: records whose every token counts, then the tokens that overlap an assistant turn.
    begin, stop = first[:-1][everything], first[1:][everything]
    if assistant_only:
        turn_begin, turn_stop = span_tokens(texts, counts, token_start, token_end, turns.record, turns.start, turns.end)
        begin, stop = np.concatenate([begin, turn_begin]), np.concatenate([stop, turn_stop])
    loss = ranges_mask(len(tokens), begin, stop)
    counted = np.concatenate([[0], np.cumsum(loss, dtype=np.int64)])
    loss_counts = counted[first[1:]] - counted[first[:-1]]

    reasons = np.where(counts == 0, "empty", np.where(loss_counts == 0, "no_assistant_turn", "")).tolist()
    kept = loss_counts > 0  # so counts > 0 too
    token_kept = np.repeat(kept, counts)
    ends = np.cumsum(counts[kept])  # where each kept record's eos goes

    def stream(mask: np.ndarray, eos: np.ndarray) -> np.ndarray:
        """A per-token mask of the batch as the kept records enter the stream, with ``eos`` for each one's eos."""
        return np.insert(mask[token_kept], ends, eos.astype(np.uint8))

    return Encoded(
        tokens=np.insert(tokens[token_kept], ends, tokenizer.eos_token_id),
        loss=stream(loss, everything[kept]),
        lengths=np.where(kept, counts + 1, 0),
        loss_tokens=np.where(kept, loss_counts + everything, 0),
        reasons=[reason or None for reason in reasons],
        # a document's eos ends its content; a conversation's follows markup
        content=stream(content_mask(texts, counts, token_start, token_end, conversation, turns), ~conversation[kept]) if content else None,
    )


def own_pattern(tokenizer: PreTrainedTokenizerFast) -> str | None:
    """The pre-token pattern when the tokenizer is one the tokenizer stage trained
    (ChatML, our Split pattern, no normaliser), else None."""
    if tokenizer.chat_template != CHATML_TEMPLATE:
        return None
    config = json.loads(tokenizer.backend_tokenizer.to_str())
    steps = (config.get("pre_tokenizer") or {}).get("pretokenizers") or []
    if config.get("normalizer") or len(steps) != 2 or steps[0].get("type") != "Split":
        return None
    pattern = steps[0]["pattern"].get("Regex")
    return pattern if pattern in (pretoken_pattern(True), pretoken_pattern(False)) else None
def count_tokens(tokenizer: PreTrainedTokenizerFast, table: pa.Table, assistant_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per record of `table`: the tokens it adds to the packed stream (its eos
    included; 0 for a record the tokenize stage rejects) and how many of them
    count in the loss. Exactly what packing the same records produces."""
    lengths, loss_tokens = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for start in range(0, table.num_rows, BATCH_ROWS):
        encoded = encode(tokenizer, table.slice(start, BATCH_ROWS), assistant_only)
        lengths.append(encoded.lengths)
        loss_tokens.append(encoded.loss_tokens)
    return np.concatenate(lengths), np.concatenate(loss_tokens)
