"""Quality: score every training record, then decide which to keep.

Scoring and deciding are separate stages (DCLM's enricher and filter):
``score.py`` (stage ``quality_score``) writes the score columns to
``data/quality/scores.parquet``; ``__main__.py`` (stage ``quality``) computes
``quality`` and ``reject_reason`` from those columns alone (``scorer.components``,
``combine``, ``reject_reasons``), so weights, limits, rules and the threshold
are retuned without rescoring.

Scores (one column each; ``heuristics.py`` and ``reference_lm.py`` say how):

- text statistics (Gopher / C4 / FineWeb): ``words``, ``mean_word_length``,
  ``alpha_ratio``, ``symbol_ratio``, ``dup_line_fraction``, ``dup_ngram_fraction``
  (``quality.dup_ngram`` words), ``boilerplate_fraction``, ``mojibake``, ``stopwords``;
- the reply (last assistant turn, or the document): ``unfinished`` (ends in a
  connective), ``response_ratio`` (reply words / question words), ``refusal``
  (refusal and moralising phrases, 0-1), ``answer_errors`` (equations that do
  not hold, final answers nothing supports);
- ``classifier``: P(positive) of a logistic regression on hashed words and
  bigrams, trained on a seeded sample of the input (positives and negatives
  by category or source, ``quality.classifier``);
- ``perplexity``, ``end_surprisal`` (-log P(end of reply)) and ``ifd``
  (loss(answer | question) / loss(answer)) under a hashed word n-gram reference
  LM trained on a trusted sample (``quality.reference_lm``).

The combined score, in [0, 1]:

    quality = heuristics * (1 - refusal) * (w_c * classifier + w_lm * reference_lm + w_ifd * ifd_score) / (sum of the w that apply)

- ``heuristics`` is the product over the limits in ``quality.limits`` of
  min(1, limit / value) for a maximum and min(1, value / limit) for a minimum
  (so 1 inside the limits; 0 past a limit of 0: any mojibake, an unfinished
  reply, a wrong answer);
- ``reference_lm = exp(-max(0, log perplexity - m) / (p90 - m))`` with m and
  p90 the median and 90th percentile log perplexity of held-out records of the
  same category: 1 for a typical record, e^-1 at the 90th percentile;
- ``ifd_score = clip((p95 - IFD) / (p95 - median), 0, 1)`` against held-out
  conversations: 1 for an answer at least as tied to its question as the
  median, 0 from the 95th percentile on (answers to other questions);
- refusal, IFD and their weights apply to conversations only; the weights
  (``quality.weights``) are renormalised over the components that apply.

Deciding: a record is rejected with ``reject_reason`` = the first enabled hard
rule it breaks (``quality.rules``, each comparing one score with its limit), or
``below_threshold`` when quality < ``quality.threshold``; kept records have a
null reason.
"""
