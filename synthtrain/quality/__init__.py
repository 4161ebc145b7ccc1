"""Quality: score every training record, then decide which to keep.

Scoring and deciding are separate stages (DCLM's enricher and filter):
``enrich.py`` (stage ``quality_score``) writes the score columns to
``data/quality/scores.parquet``; ``decide.py`` (stage ``quality``) computes
``quality`` and ``reject_reason`` from those columns alone (``scorer.components``,
``combine``, ``reject_reasons``), so weights, limits, rules and the threshold
are retuned without rescoring. The scores, the combined score's formula and
the hard rules: docs/quality.md; how each score is computed: ``heuristics.py``,
``classifier.py`` and ``reference_lm.py``.
"""
