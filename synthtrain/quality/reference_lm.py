"""A reference language model: hashed word n-grams with Witten-Bell
interpolation (the smoothing of KenLM's ancestors), counted and queried with
numpy sort and searchsorted.

Each unit (turn or document) is a sentence ``<s> w1 ... wn </s>``; with order
N the probability of a word is

    P1(w)          = (c(w) + 1) / (tokens + types + 1)           (add-one, one bucket for unseen words)
    Pk(w | h)      = (c(h w) + T(h) * Pk-1(w | h')) / (c(h) + T(h))   if the context h was seen, else Pk-1

where h is the k-1 preceding words, h' the k-2 preceding words, c(h) the count
of n-grams that continue h and T(h) how many distinct words do. A record's
``perplexity`` is exp of the mean negative log probability of its words and
end markers.

IFD (instruction-following difficulty, Superfiltering) compares the loss of
the answer alone with its loss given the question. An n-gram model cannot read
the question, so the question becomes a cache (Kuhn & De Mori): a word of the
answer is predicted by the mixture

    P(w | question) = (1 - q) * P(w | history) + q * count of w in the question / question length

with q = ``reference_lm.question_weight``, and

    IFD = loss(answer | question) / loss(answer),  loss = mean -log P over the answer's tokens.

An answer that reuses its question's words (the entity asked about, the
numbers to add) has IFD well below 1; an answer to another question gains
nothing from the cache and pays -log(1 - q) per word, so its IFD is above 1.
"""

import numpy as np

from synthtrain.text import mix64, ngram_hashes

BEGIN, END = np.uint64(1), np.uint64(2)  # sentence markers; a word hashes to them with probability 2**-63


def sentences(hashes: np.ndarray, word_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``<s> words </s>`` per unit: (tokens, offsets)."""
    lengths = np.diff(word_offsets) + 2
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.empty(offsets[-1], dtype=np.uint64)
    tokens[offsets[:-1]] = BEGIN
    tokens[offsets[1:] - 1] = END
    unit = np.repeat(np.arange(len(lengths)), lengths - 2)
    tokens[offsets[:-1][unit] + 1 + np.arange(len(hashes)) - word_offsets[:-1][unit]] = hashes
    return tokens, offsets


def gram_keys(tokens: np.ndarray, offsets: np.ndarray, order: int) -> list[np.ndarray]:
    """``keys[k-1][t]``: the hash of the k tokens ending at t, 0 where they would
    cross the start of a sentence."""
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    start = np.arange(len(tokens)) - offsets[:-1][owner]
    keys = []
    for k in range(1, order + 1):
        grams, _ = ngram_hashes(tokens, offsets, k, short=False)
        key = np.zeros(len(tokens), dtype=np.uint64)
        key[start >= k - 1] = grams  # windows come in token order, one per position with k-1 tokens before it
        keys.append(key)
    return keys


def _lookup(keys: np.ndarray, query: np.ndarray, *values: np.ndarray) -> list[np.ndarray]:
    """``values[i][j]`` where ``keys[j] == query``, 0 where the key is absent.
    Queries are searched in sorted order, which is 3x faster than at random."""
    order = np.argsort(query)
    at = np.empty(len(query), dtype=np.int64)
    at[order] = np.searchsorted(keys, query[order])
    at = at.clip(max=max(len(keys) - 1, 0))
    found = keys[at] == query if len(keys) else np.zeros(len(query), dtype=bool)
    return [np.where(found, value[at], 0) if len(keys) else np.zeros(len(query), value.dtype) for value in values]


class ReferenceLM:
    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.order = int(arrays["order"])

    @classmethod
    def train(cls, hashes: np.ndarray, word_offsets: np.ndarray, order: int, min_count: int) -> "ReferenceLM":
        """Count the n-grams of the given units; n-grams (words included) seen
        fewer than ``min_count`` times are pruned, as KenLM can: the model then
        does not memorise one-off strings (gibberish) of its own training sample."""
        tokens, offsets = sentences(hashes, word_offsets)
        keys = gram_keys(tokens, offsets, order)
        predicted = tokens != BEGIN
        arrays = {"order": np.array(order)}
        for k in range(1, order + 1):
            events = predicted & (keys[k - 1] != 0)
            grams, first, counts = np.unique(keys[k - 1][events], return_index=True, return_counts=True)
            frequent = counts >= min_count
            grams, first, counts = grams[frequent], first[frequent], counts[frequent]
            arrays[f"gram{k}"], arrays[f"count{k}"] = grams, counts.astype(np.uint32)
            if k > 1:
                # The context of the n-gram ending at t is the (k-1)-gram ending at t-1.
                context = keys[k - 2][np.flatnonzero(events)[first] - 1]
                contexts, inverse, types = np.unique(context, return_inverse=True, return_counts=True)
                arrays[f"context{k}"], arrays[f"types{k}"] = contexts, types.astype(np.uint32)
                arrays[f"total{k}"] = np.bincount(inverse, weights=counts).astype(np.uint32)
        arrays["tokens"] = np.array(int(predicted.sum()))
        return cls(arrays)

    def log_probs(self, hashes: np.ndarray, word_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """log P of every word and end marker of every unit: (log_probs, the
        tokens predicted, offsets per unit into both)."""
        tokens, offsets = sentences(hashes, word_offsets)
        keys = gram_keys(tokens, offsets, self.order)
        a = self.arrays
        prob = (_lookup(a["gram1"], keys[0], a["count1"])[0] + 1.0) / (float(a["tokens"]) + len(a["gram1"]) + 1)
        for k in range(2, self.order + 1):
            context = np.zeros(len(tokens), dtype=np.uint64)
            context[1:] = keys[k - 2][:-1]
            total, types = _lookup(a[f"context{k}"], context, a[f"total{k}"].astype(np.float64), a[f"types{k}"].astype(np.float64))
            (count,) = _lookup(a[f"gram{k}"], keys[k - 1], a[f"count{k}"])
            seen = (total > 0) & (keys[k - 1] != 0)
            prob = np.where(seen, (count + types * prob) / np.maximum(total + types, 1), prob)
        predicted = tokens != BEGIN
        return np.log(prob[predicted]), tokens[predicted], offsets - np.arange(len(offsets))  # one <s> fewer per unit


def spans(offsets: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the given units' items, flat, and the index into
    ``units`` each belongs to."""
    lengths = offsets[units + 1] - offsets[units]
    owner = np.repeat(np.arange(len(units)), lengths)
    first = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    return offsets[units][owner] + np.arange(len(owner)) - first[owner], owner


def ifd(log_probs: np.ndarray, tokens: np.ndarray, token_offsets: np.ndarray, hashes: np.ndarray, word_offsets: np.ndarray,
        answer: np.ndarray, question: np.ndarray, question_weight: float) -> np.ndarray:
    """IFD of each (answer unit, question unit) pair, as in the module docstring;
    ``log_probs``, ``tokens`` and ``token_offsets`` come from ``ReferenceLM.log_probs``."""
    asked, asked_pair = spans(word_offsets, question)
    question_words = np.bincount(asked_pair, minlength=len(question))
    # A (pair, word) key counts the word in that pair's question.
    cache, in_question = np.unique(hashes[asked] ^ mix64(asked_pair.astype(np.uint64)), return_counts=True)

    said, pair = spans(token_offsets, answer)
    alone = log_probs[said]
    (in_cache,) = _lookup(cache, tokens[said] ^ mix64(pair.astype(np.uint64)), in_question)
    cached = in_cache / np.maximum(question_words[pair], 1)
    given = np.log((1 - question_weight) * np.exp(alone) + question_weight * cached)
    loss_alone = np.bincount(pair, -alone, minlength=len(answer))
    loss_given = np.bincount(pair, -given, minlength=len(answer))
    return np.divide(loss_given, loss_alone, out=np.ones(len(answer)), where=loss_alone > 0)
