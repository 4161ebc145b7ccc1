"""Text normalisation shared by every stage that compares texts.

``normalize`` folds one string (record ids). The column functions below do the
same work on whole Arrow batches, because a Python loop over 1M records is the
difference between seconds and minutes:

- ``content_column``: the text of each record, as ``records.content_of`` makes it;
- ``fold_column``: Unicode form, case and punctuation folded, for comparisons;
- ``word_hashes``: every word of every record as a 64-bit hash, flat, with
  offsets, the input of shingling (dedup) and of word statistics (quality);
- ``ngram_hashes``: hashes of the n-word windows of each record.
"""

import hashlib
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Anything that is not a letter, a digit or a space separates words.
PUNCTUATION = r"[^\p{L}\p{N}\s]+"
# Base of the polynomial n-gram hash (odd, so invertible modulo 2**64).
_BASE = 0x9E3779B97F4A7C15
_BASE_INVERSE = pow(_BASE, -1, 2**64)


def normalize(text: str) -> str:
    """Fold Unicode form, case and whitespace, so that texts that differ only in
    those ways compare (and hash) equal."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def content_column(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """``records.content_of`` for every row of a batch: "role: content" lines
    for conversations, the text for documents."""
    messages = batch.column("messages")
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    turns = pc.list_flatten(messages)
    lines = pc.binary_join_element_wise(turns.field("role"), turns.field("content"), ": ")
    offsets = pc.subtract(messages.offsets, messages.offsets[0])  # a sliced batch's offsets do not start at 0
    conversations = pc.binary_join(pa.ListArray.from_arrays(offsets, lines, mask=messages.is_null()), "\n")
    return pc.coalesce(conversations, batch.column("text"))


def fold_column(texts: pa.Array) -> pa.Array:
    """NFKC, lower case, punctuation to spaces: texts equal after folding are
    exact duplicates."""
    return pc.replace_substring_regex(pc.utf8_lower(pc.utf8_normalize(texts, "NFKC")), PUNCTUATION, " ")


def _hash64(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def word_hashes(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The folded words of each text as uint64 hashes: ``hashes[offsets[i]:offsets[i+1]]``
    are the words of text i. Only the distinct words of the batch are hashed in
    Python; the rest is Arrow and numpy."""
    # Trimmed first: with a trailing empty token from a text ending in whitespace,
    # the hash of the batch's last word changed in 3 of 70 repeated runs on the
    # same batch (pyarrow 26); trimmed, in none of 400.
    words = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(fold_column(texts)))
    if isinstance(words, pa.ChunkedArray):
        words = words.combine_chunks()
    flat = pc.list_flatten(words)
    spoken = pc.greater(pc.binary_length(flat), 0)  # a blank text splits into one empty string
    counts = np.bincount(pc.list_parent_indices(words).to_numpy()[spoken.to_numpy(zero_copy_only=False)], minlength=len(words))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    encoded = pc.dictionary_encode(pc.filter(flat, spoken))
    vocabulary = np.fromiter((_hash64(w) for w in encoded.dictionary.to_pylist()), dtype=np.uint64, count=len(encoded.dictionary))
    return vocabulary[encoded.indices.to_numpy()], offsets


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the output bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_power_tables: dict[int, np.ndarray] = {}


def _powers(base: int, count: int) -> np.ndarray:
    """base**0 .. base**(count-1) modulo 2**64, from a table that grows as needed."""
    table = _power_tables.get(base)
    if table is None or len(table) < count:
        table = np.full(max(count, 2**20), base, dtype=np.uint64)
        table[:1] = 1
        table = _power_tables[base] = np.cumprod(table, dtype=np.uint64)  # wraps modulo 2**64, as intended
    return table[:count]


def ngram_hashes(hashes: np.ndarray, offsets: np.ndarray, n: int, short: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the n-word windows of each text and the text each belongs to.

    A text with fewer than n words gives one hash of all its words when
    ``short`` (so short texts still have a shingle), none otherwise. Returns
    ``(ngrams, owner)`` with ``owner[k]`` the index of the text of ``ngrams[k]``.

    The window hash is the polynomial sum(word[i+j] * B**j) modulo 2**64, read
    off prefix sums of word[t] * B**t and scaled by B**-i, so its cost does not
    grow with n.
    """
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    index = np.arange(len(hashes), dtype=np.int64)
    end = offsets[1:][owner]
    width = np.full(len(hashes), n, dtype=np.int64)
    valid = index + n <= end
    if short:
        whole = (index == offsets[:-1][owner]) & (lengths[owner] < n)
        width[whole] = lengths[owner][whole]
        valid |= whole
    starts, width = index[valid], width[valid]
    prefix = np.zeros(len(hashes) + 1, dtype=np.uint64)
    np.cumsum(hashes * _powers(_BASE, len(hashes)), out=prefix[1:])
    windows = (prefix[starts + width] - prefix[starts]) * _powers(_BASE_INVERSE, len(hashes))[starts]
    return mix64(windows), owner[valid]
