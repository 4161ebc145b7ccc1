"""N-gram baselines fitted on the run's training tokens: what a model must beat
to have learned more than word frequencies (issue: research experiments).

``NgramBaselines.fit`` counts the tokens of ``data/tokens/train`` as the model
saw them (each packed sequence's tokens, each predicted from the one before it
in the same sequence), streaming shard by shard. Two models score held-out
tokens exactly where the model is scored (the same packed rows and masks):

- **unigram**, add-one smoothed: P(w) = (c(w) + 1) / (N + V);
- **bigram**, interpolated Kneser–Ney with one discount:
  P(w | v) = max(c(v w) − d, 0) / c(v) + d · N1+(v •) / c(v) · P_cont(w), and
  P_cont(w) = N1+(• w) / N1+(• •) interpolated with the uniform distribution
  (weight d · types / N1+(• •)) so that no token has probability 0;
  d = n1 / (n1 + 2 n2) (Ney et al., 1994) from the counts of bigrams seen once
  and twice, 0.5 when none is seen once (repeated data). A context never seen falls back to P_cont.

Both are over the model's own vocabulary, so their loss and bits per byte sit
on the model's scale (docs/evaluation.md, "Baselines").
"""

import json
from pathlib import Path

import numpy as np

CHUNK = 32_768  # sequences counted at a time: at seq 256, 67 MB of token pairs


class NgramBaselines:
    def __init__(self, vocab_size: int, unigram: np.ndarray, bigram_keys: np.ndarray, bigram_counts: np.ndarray):
        self.vocab_size = vocab_size
        self.unigram_counts = unigram.astype(np.float64)
        self.keys, self.counts = bigram_keys, bigram_counts.astype(np.float64)  # keys sorted: context * V + next
        contexts = self.keys // vocab_size
        self.context_counts = np.bincount(contexts, weights=self.counts, minlength=vocab_size)
        self.context_types = np.bincount(contexts, minlength=vocab_size).astype(np.float64)
        continuation = np.bincount(self.keys % vocab_size, minlength=vocab_size).astype(np.float64)
        n1, n2 = float((self.counts == 1).sum()), float((self.counts == 2).sum())
        # Ney's estimate is 0 where no bigram is seen once, as in a mix that repeats its pool a whole number of
        # times: a discount of 0 leaves no mass for unseen pairs (infinite loss), so that case takes 0.5
        self.discount = n1 / (n1 + 2 * n2) if n1 else 0.5
        types, seen = float(len(self.keys)), float((continuation > 0).sum())
        # max(N1+(• w) − d, 0) / N1+(• •), plus the discounted mass spread uniformly: sums to 1
        self.continuation = ((np.maximum(continuation - self.discount, 0) + self.discount * seen / vocab_size) / types if types
                             else np.full(vocab_size, 1.0 / vocab_size))  # fmt: skip

    @classmethod
    def fit(cls, directory: Path, vocab_size: int) -> "NgramBaselines":
        """Count unigrams and within-sequence bigrams of tokenize's packed shards in ``directory``."""
        index = json.loads((directory / "index.json").read_text())
        unigram = np.zeros(vocab_size, np.int64)
        keys, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        for shard in index["shards"]:
            tokens = np.load(directory / shard["tokens"], mmap_mode="r")
            for start in range(0, len(tokens), CHUNK):  # bounded memory
                rows = np.asarray(tokens[start : start + CHUNK], dtype=np.int64)
                unigram += np.bincount(rows.ravel(), minlength=vocab_size)
                pairs = (rows[:, :-1] * vocab_size + rows[:, 1:]).ravel()
                new_keys, new_counts = np.unique(pairs, return_counts=True)
                keys, inverse = np.unique(np.concatenate([keys, new_keys]), return_inverse=True)
                counts = np.bincount(inverse, weights=np.concatenate([counts, new_counts]), minlength=len(keys)).astype(np.int64)
        return cls(vocab_size, unigram, keys, counts)

    def unigram_losses(self, tokens: np.ndarray) -> np.ndarray:
        """Negative log-likelihood (nats) of each packed row's tokens 1.. (the model's columns)."""
        probability = (self.unigram_counts + 1) / (self.unigram_counts.sum() + self.vocab_size)
        return -np.log(probability[tokens[:, 1:]])

    def bigram_losses(self, tokens: np.ndarray) -> np.ndarray:
        context, word = tokens[:, :-1].astype(np.int64), tokens[:, 1:].astype(np.int64)
        pairs = context * self.vocab_size + word
        where = np.clip(np.searchsorted(self.keys, pairs), 0, max(len(self.keys) - 1, 0))
        pair_counts = np.where(self.keys[where] == pairs, self.counts[where], 0.0) if len(self.keys) else np.zeros(pairs.shape)
        context_count = self.context_counts[context]
        seen = context_count > 0
        safe = np.where(seen, context_count, 1.0)
        backoff = self.continuation[word]
        probability = np.where(seen, np.maximum(pair_counts - self.discount, 0) / safe
                               + self.discount * self.context_types[context] / safe * backoff, backoff)  # fmt: skip
        return -np.log(probability)
