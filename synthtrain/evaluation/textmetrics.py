"""Metrics of generated text, as pure functions of lists of strings.

- ``reference_metrics``: how close generations are to reference replies
  (ROUGE-L, BLEU, chrF) and how long both are;
- ``diversity``: how varied a set of generations is (distinct n-grams,
  self-BLEU, gzip compression ratio) and how many fall into a repetition loop.

Words, here, are the lower-cased runs of letters, digits and underscores (``words``).
Empty input gives ``{}`` rather than NaN, so the caller can report "empty".
An empty reply (``is_empty_reply``: no letter or digit once chat markup is
removed) gets every metric's worst value, so that a model which says nothing
never looks better than one that writes words; the judges score it 0 too.
"""

import gzip
import re

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

WORD = re.compile(r"\w+")
# Self-BLEU compares every generation with every other one: quadratic, so it
# reads an evenly spaced subset of this many generations.
SELF_BLEU_GENERATIONS = 100
# A repetition loop: a span of at least LOOP_WORDS words said LOOP_TIMES times
# in a row, or a line said LOOP_TIMES times in a row (is_repetition_loop).
LOOP_WORDS, LOOP_TIMES = 3, 3
MAX_LOOP_PERIOD = 64  # words; a longer repeated span is a repeated paragraph, which the line rule catches
# What a reply can hold that is not content: special tokens written out (<|im_end|>,
# <|endoftext|>, <|eot_id|>; with the role a ChatML or Llama header names after
# one), sentencepiece's <s>, </s>, <pad> and <unk>, and a role name alone on a
# line, which is what a header becomes when decoding drops its special token
# ("<|im_start|>assistant\n" decodes to "assistant\n").
MARKUP = re.compile(r"<\|[^<>|]*\|>(?:[ \t]*(?:system|user|assistant)\b)?|</?s>|<pad>|<unk>"
                    r"|^[ \t]*(?:system|user|assistant)[ \t]*$", re.IGNORECASE | re.MULTILINE)
LETTER_OR_DIGIT = re.compile(r"[^\W_]")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def is_empty_reply(text: str) -> bool:
    """True for a reply with no letter or digit once MARKUP is removed: nothing,
    whitespace, special tokens, chat headers, or punctuation and symbols alone."""
    return not LETTER_OR_DIGIT.search(MARKUP.sub(" ", text))


def content_replies(generations: list[str]) -> tuple[list[str], float]:
    """The replies that are not empty, and their share of all (0 for no replies)."""
    content = [g for g in generations if not is_empty_reply(g)]
    return content, len(content) / len(generations) if generations else 0.0


def reference_metrics(predictions: list[str], references: list[str]) -> dict:
    """Generations against their references, each a mean over items or a corpus score:

    - ``rougeL``: ROUGE-L F-measure (rouge-score, Porter stemming; its tokenizer
      keeps only ASCII letters and digits), mean over items, in [0, 1];
    - ``bleu``, ``chrf``: sacrebleu's corpus BLEU and chrF, in [0, 100];
    - ``response_words``, ``reference_words``: mean words per prediction and reference;
    - ``reply_empty_rate``: the share of predictions that are empty (``is_empty_reply``).

    An empty prediction is scored as the empty string, so that its markup
    ("<|im_end|>" has the words im and end) matches nothing: ROUGE-L 0, no words.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {}
    empty = [is_empty_reply(p) for p in predictions]
    predictions = ["" if e else p for p, e in zip(predictions, empty)]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(reference, prediction)["rougeL"].fmeasure for prediction, reference in zip(predictions, references)]
    return {
        "rougeL": float(np.mean(rouge)),
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        "response_words": float(np.mean([len(words(p)) for p in predictions])),
        "reference_words": float(np.mean([len(words(r)) for r in references])),
        "reply_empty_rate": float(np.mean(empty)),
    }


def distinct_n(generations: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams, over the n-grams within each non-empty
    generation, times the share of non-empty generations: an empty reply
    counts as one with nothing distinct in it (0 when all are empty)."""
    content, share = content_replies(generations)
    grams = [tuple(tokens[i:i + n]) for tokens in map(words, content) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) * share if grams else 0.0


def self_bleu(generations: list[str]) -> float:
    """Mean sentence BLEU (0-100) of each generation against all the other
    non-empty ones as references: 100 when all are the same, low when they
    share little. An empty generation scores 100, as alike as can be (it is no
    reference either). Reads an evenly spaced subset of SELF_BLEU_GENERATIONS;
    0 for a single generation, and for the one non-empty generation of a subset."""
    if len(generations) < 2:
        return 0.0
    chosen = np.unique(np.linspace(0, len(generations) - 1, min(len(generations), SELF_BLEU_GENERATIONS)).round().astype(int))
    content, _ = content_replies([generations[i] for i in chosen])
    scores = [sacrebleu.sentence_bleu(text, content[:i] + content[i + 1:]).score if len(content) > 1 else 0.0
              for i, text in enumerate(content)]
    return float(np.mean(scores + [100.0] * (len(chosen) - len(content))))


def gzip_ratio(text: str) -> float:
    """gzip-compressed bytes / UTF-8 bytes: lower means more repetitive text.
    Short texts come out high (gzip's header is about 20 bytes); 0 for empty text."""
    raw = text.encode("utf-8")
    return len(gzip.compress(raw, mtime=0)) / len(raw) if raw else 0.0


def _longest_run(same: np.ndarray) -> int:
    """The length of the longest run of True."""
    if not same.any():
        return 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], same.astype(np.int8), [0]])))
    return int((edges[1::2] - edges[0::2]).max())


def is_repetition_loop(text: str) -> bool:
    """True when the text degenerates into a loop, as a language model does when
    it keeps predicting what it just said. The rule, on lower-case words:

    - a span of n >= LOOP_WORDS (3) words repeated LOOP_TIMES (3) times back to
      back ("the cat sat. the cat sat. the cat sat."; a one-word loop counts once
      it is 9 words long, since "no no no" three times is such a span), for spans
      of up to MAX_LOOP_PERIOD words;
    - or the same line (with a letter or digit in it) LOOP_TIMES times in a row.
    """
    lines = [line.strip().lower() for line in text.splitlines() if WORD.search(line)]
    if any(len(set(lines[i:i + LOOP_TIMES])) == 1 for i in range(len(lines) - LOOP_TIMES + 1)):
        return True
    vocabulary: dict[str, int] = {}
    ids = np.array([vocabulary.setdefault(word, len(vocabulary)) for word in words(text)], dtype=np.int64)
    for period in range(1, min(MAX_LOOP_PERIOD, len(ids) // LOOP_TIMES) + 1):
        span = period * -(-LOOP_WORDS // period)  # the shortest whole number of periods of at least LOOP_WORDS words
        # `times` copies of the span in a row: word i equals word i + period for all but the last period of them.
        if _longest_run(ids[:-period] == ids[period:]) >= LOOP_TIMES * span - period:
            return True
    return False


def diversity(generations: list[str]) -> dict:
    """How varied a set of generations is:

    - ``distinct_1``, ``distinct_2``: distinct / all word unigrams and bigrams (higher: more varied);
    - ``self_bleu``: 0-100 (higher: more alike), see ``self_bleu``;
    - ``compression_ratio``: gzip bytes / raw bytes of all generations joined by
      newlines (lower: more repetitive, within and across generations);
    - ``repetition_rate``: the share of generations that are a repetition loop.

    An empty generation takes each one's worst value: it adds nothing to
    distinct_n's n-grams and scales them by the non-empty share, as it does the
    compression ratio of the non-empty generations; it scores 100 in self_bleu
    and counts as a failure, like a loop, in repetition_rate.
    """
    if not generations:
        return {}
    content, share = content_replies(generations)
    return {
        "distinct_1": distinct_n(generations, 1),
        "distinct_2": distinct_n(generations, 2),
        "self_bleu": self_bleu(generations),
        "compression_ratio": gzip_ratio("\n".join(content)) * share,
        "repetition_rate": float(np.mean([is_empty_reply(g) or is_repetition_loop(g) for g in generations])),
    }
