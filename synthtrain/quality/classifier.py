"""The learned quality classifier, DCLM-style: logistic regression telling the
records params call positive (by default instruction and knowledge) from those
they call negative (web), over hashed word unigrams and bigrams of the replies
and documents (user turns are left out: a classifier should judge what the
model will learn to write).

Features: each unigram and bigram hash, modulo 2**hash_bits, is a column;
values are log(1 + count), rows scaled to unit length. The model is stored as
its coefficients in an .npz file (no pickle); scoring is one sparse product.
"""

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from synthtrain.quality.units import ASSISTANT, DOCUMENT, Units
from synthtrain.quality.reference_lm import spans
from synthtrain.text import ngram_hashes


def features(units: Units, hash_bits: int) -> sparse.csr_matrix:
    judged = np.flatnonzero((units.role == ASSISTANT) | (units.role == DOCUMENT))
    words, word_unit = spans(units.word_offsets, judged)
    bigrams, bigram_unit = ngram_hashes(units.hashes, units.word_offsets, 2, short=False)
    keep = np.isin(bigram_unit, judged)
    grams = np.concatenate([units.hashes[words], bigrams[keep]])
    rows = np.concatenate([units.owner[judged[word_unit]], units.owner[bigram_unit[keep]]])
    columns = (grams & np.uint64((1 << hash_bits) - 1)).astype(np.int64)
    matrix = sparse.csr_matrix((np.ones(len(grams), np.float32), (rows, columns)), shape=(units.records, 1 << hash_bits))
    matrix.sum_duplicates()
    matrix.data = np.log1p(matrix.data)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return sparse.diags(1 / np.maximum(norms, 1e-12)).astype(np.float32) @ matrix


class QualityClassifier:
    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.hash_bits = int(arrays["hash_bits"])
        self.weights = np.zeros(1 << self.hash_bits, dtype=np.float32)
        self.weights[arrays["columns"]] = arrays["coefficients"]

    @classmethod
    def train(cls, x: sparse.csr_matrix, positive: np.ndarray, hash_bits: int, regularisation: float, seed: int) -> "QualityClassifier":
        model = LogisticRegression(C=regularisation, class_weight="balanced", max_iter=1000, random_state=seed)
        with threadpool_limits(1):  # a multi-threaded BLAS may sum in another order from run to run
            model.fit(x, positive.astype(np.int8))
        coefficients = model.coef_[0].astype(np.float32)
        columns = np.flatnonzero(coefficients)
        return cls({"hash_bits": np.array(hash_bits), "columns": columns, "coefficients": coefficients[columns],
                    "intercept": np.array(model.intercept_[0], dtype=np.float32)})

    def probability(self, x: sparse.csr_matrix) -> np.ndarray:
        """P(positive) per row."""
        return 1 / (1 + np.exp(-(x @ self.weights + self.arrays["intercept"]).astype(np.float64)))
