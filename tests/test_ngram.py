"""The n-gram baselines the eval stage scores beside the model, on a corpus small enough to count by hand."""

import json
import math

import numpy as np
import pytest

from synthtrain.evaluation.ngram import NgramBaselines

# Two packed sequences of a 4-token vocabulary. Within-sequence bigrams: (1,2) x2, (2,1) x2, (1,1), (1,3).
CORPUS = np.array([[1, 2, 1, 2], [2, 1, 1, 3]], dtype=np.uint16)


@pytest.fixture
def baselines(tmp_path) -> NgramBaselines:
    np.save(tmp_path / "tokens-00000.npy", CORPUS)
    np.save(tmp_path / "mask-00000.npy", np.ones_like(CORPUS, dtype=np.uint8))
    (tmp_path / "index.json").write_text(json.dumps({"shards": [{"tokens": "tokens-00000.npy", "mask": "mask-00000.npy", "sequences": 2}]}))
    return NgramBaselines.fit(tmp_path, 4)


def test_unigram_is_add_one_smoothed(baselines):
    # counts 0, 4, 3, 1 of 8 tokens: P(w) = (c + 1) / (8 + 4)
    losses = baselines.unigram_losses(np.array([[1, 2], [3, 0]]))
    np.testing.assert_allclose(losses, [[-math.log(4 / 12)], [-math.log(1 / 12)]])


def test_bigram_is_interpolated_kneser_ney_by_hand(baselines):
    d = 2 / (2 + 2 * 2)  # two bigrams seen once, two seen twice
    assert baselines.discount == pytest.approx(d)
    # continuation counts: 1 <- {2, 1}, 2 <- {1}, 3 <- {1}, 0 <- none; 4 bigram types, 3 continued words
    p_cont = {w: (max(n - d, 0) + d * 3 / 4) / 4 for w, n in {0: 0, 1: 2, 2: 1, 3: 1}.items()}
    assert sum(p_cont.values()) == pytest.approx(1.0)
    p_2_after_1 = (2 - d) / 4 + d * 3 / 4 * p_cont[2]  # c(1 2) = 2, c(1) = 4, three word types follow 1
    p_0_after_3 = p_cont[0]  # 3 never starts a bigram: the continuation distribution alone
    losses = baselines.bigram_losses(np.array([[1, 2], [3, 0]]))
    np.testing.assert_allclose(losses, [[-math.log(p_2_after_1)], [-math.log(p_0_after_3)]])


def test_every_context_gives_a_distribution(baselines):
    for context in range(4):
        rows = np.stack([np.full(4, context), np.arange(4)], axis=1)
        assert np.exp(-baselines.bigram_losses(rows)).sum() == pytest.approx(1.0)
        assert np.exp(-baselines.unigram_losses(rows)).sum() == pytest.approx(1.0)


def test_data_repeated_twice_keeps_every_probability_above_zero(tmp_path):
    # every bigram is seen an even number of times, so none once: Ney's d would be 0 and unseen pairs impossible
    np.save(tmp_path / "tokens-00000.npy", np.concatenate([CORPUS, CORPUS]))
    (tmp_path / "index.json").write_text(json.dumps({"shards": [{"tokens": "tokens-00000.npy", "sequences": 4}]}))
    repeated = NgramBaselines.fit(tmp_path, 4)
    assert repeated.discount == 0.5
    for context in range(4):
        rows = np.stack([np.full(4, context), np.arange(4)], axis=1)
        losses = repeated.bigram_losses(rows)
        assert np.isfinite(losses).all() and np.exp(-losses).sum() == pytest.approx(1.0)
