"""Generation metrics on hand-made texts: reference metrics at their extremes,
exact distinct-n, self-BLEU and compression of constant and varied sets, the
repetition-loop rule, and empty replies, which score worst in every metric."""

import pytest

from synthtrain.evaluation.textmetrics import (distinct_n, diversity, gzip_ratio, is_empty_reply, is_repetition_loop,
                                               reference_metrics, self_bleu)

PARAGRAPH = ("The river Dune rises in the northern hills and flows south for about two hundred kilometres. "
             "Its valley is farmed on both banks, and the old town of Brovale grew up where a bridge crosses it.\n"
             "Most of the year the water is low; in spring, melting snow can raise it by several metres in a week.")
VARIED = ["The cat sat on the mat near the door.", "Seven plus five is twelve.", "Brovale lies on the river Dune.",
          "Write the answer as a single word.", "Birds fly south before the first frost.", "Final answer: 42"]


def test_identical_predictions_score_the_maximum():
    metrics = reference_metrics(VARIED, VARIED)
    assert metrics["rougeL"] == pytest.approx(1.0) and metrics["bleu"] == pytest.approx(100.0) and metrics["chrf"] == pytest.approx(100.0)
    assert metrics["response_words"] == metrics["reference_words"] == pytest.approx(sum(len(t.split()) for t in VARIED) / len(VARIED))


def test_unrelated_predictions_score_low():
    metrics = reference_metrics(VARIED, VARIED[1:] + VARIED[:1])
    assert metrics["rougeL"] < 0.2 and metrics["bleu"] < 5 and metrics["chrf"] < 20, metrics


def test_no_items_give_no_metrics_rather_than_nan():
    assert reference_metrics([], []) == {} and diversity([]) == {}
    assert gzip_ratio("") == 0.0 and distinct_n([""], 2) == 0.0 and self_bleu(["only one"]) == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        reference_metrics(["a", "b"], ["a"])


def test_distinct_n_counts_ngrams_within_each_generation():
    generations = ["A b c", "a B d!"]  # words are lower-cased and stripped of punctuation
    assert distinct_n(generations, 1) == 4 / 6  # a b c a b d
    assert distinct_n(generations, 2) == 3 / 4  # (a b) (b c) (a b) (b d); no bigram spans two generations
    assert distinct_n(generations, 3) == 2 / 2


def test_constant_generations_are_alike_and_compress_better_than_varied_ones():
    constant = diversity([VARIED[0]] * len(VARIED))
    varied = diversity(VARIED)
    assert constant["self_bleu"] == pytest.approx(100.0) and varied["self_bleu"] < 10
    assert constant["compression_ratio"] < varied["compression_ratio"]
    assert constant["distinct_1"] < varied["distinct_1"] and constant["distinct_2"] < varied["distinct_2"]
    assert constant["repetition_rate"] == varied["repetition_rate"] == 0


def test_self_bleu_reads_a_fixed_subset_of_many_generations():
    generations = [f"{VARIED[i % len(VARIED)]} Item {i}." for i in range(300)]
    assert self_bleu(generations) == self_bleu(list(generations)) > 0


@pytest.mark.parametrize("text", [
    "the cat sat. the cat sat. the cat sat. the cat sat.",
    "I think that I think that I think that",
    "no " * 9,
    "Spell 'spider': s, p, i, d, e, r.\nFinal answer: 1\n" + "Spell 'spider': s, p, i, d, e, r.\n" * 3,
    "Add the ones.\nWrite 5.\nWrite 5.\nWrite 5.",  # a line said three times in a row
])  # fmt: skip
def test_loops_are_loops(text):
    assert is_repetition_loop(text)


@pytest.mark.parametrize("text", [
    PARAGRAPH,
    "no no no no no no no no",  # a one-word span needs 9 words to make a 3-word span three times
    "It is what it is, and it is what it was.",
    "Add the ones: 3 + 4 = 7.\nAdd the tens: 2 + 5 = 7.\nFinal answer: 77",
    "}\n}\n}",  # lines without a letter or digit (code, tables) do not count
    "",
])  # fmt: skip
def test_ordinary_text_is_not_a_loop(text):
    assert not is_repetition_loop(text)


def test_repetition_rate_is_the_share_of_looping_generations():
    assert diversity([PARAGRAPH, "the cat sat. " * 4, VARIED[0], "no " * 20])["repetition_rate"] == 0.5


EMPTY = ["", "  \n\t", "<|im_end|>", "<|im_start|>assistant\n<|im_end|>\n", "<|endoftext|><|endoftext|>", "assistant\n",
         "<|start_header_id|>assistant<|end_header_id|>\n\n<|eot_id|>", "</s>", "...", "!?\n-"]


@pytest.mark.parametrize("reply", EMPTY)
def test_whitespace_markup_and_punctuation_alone_are_empty_replies(reply):
    assert is_empty_reply(reply)


@pytest.mark.parametrize("reply", ["42", "Dune.", "é", "<|im_start|>assistant\nDune<|im_end|>", "assistant: Dune", "The assistant\nhelps."])
def test_a_letter_or_a_digit_outside_markup_makes_a_reply(reply):
    assert not is_empty_reply(reply)


def test_empty_replies_score_worst_in_every_generation_metric():
    assert reference_metrics(EMPTY, VARIED[:2] * 5) == {
        "rougeL": 0.0, "bleu": 0.0, "chrf": 0.0, "response_words": 0.0,
        "reference_words": pytest.approx(sum(len(t.split()) for t in VARIED[:2]) / 2), "reply_empty_rate": 1.0}
    assert diversity(EMPTY) == {"distinct_1": 0.0, "distinct_2": 0.0, "self_bleu": 100.0, "compression_ratio": 0.0, "repetition_rate": 1.0}
    # Half of the replies empty: every metric worse than for the replies with words alone.
    alone, padded = diversity(VARIED), diversity(VARIED + EMPTY[: len(VARIED)])
    assert padded["distinct_1"] == pytest.approx(alone["distinct_1"] / 2) and padded["distinct_2"] == pytest.approx(alone["distinct_2"] / 2)
    assert padded["compression_ratio"] == pytest.approx(alone["compression_ratio"] / 2)
    assert padded["self_bleu"] == pytest.approx((alone["self_bleu"] + 100) / 2) and padded["repetition_rate"] == 0.5


def test_reply_empty_rate_is_the_share_of_empty_predictions():
    metrics = reference_metrics(["<|im_end|>", VARIED[0], " ", VARIED[1]], VARIED[:4])
    assert metrics["reply_empty_rate"] == 0.5 and metrics["response_words"] == pytest.approx((9 + 5) / 4)  # "<|im_end|>" is no words
