"""Scoring (the enricher) and deciding (the filter), kept apart as in DCLM:
``Scorer.score`` turns a batch of records into score columns and is the
expensive part; ``combine`` and ``reject_reasons`` read only those columns
(and the reference LM's calibration), so thresholds and weights can be retuned
without rescoring. docs/quality.md gives the formulas.
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import accuracy_score

from synthtrain.params import Quality, RecordSelection, StageError
from synthtrain.quality import heuristics
from synthtrain.quality.units import split_units
from synthtrain.quality.classifier import QualityClassifier, features
from synthtrain.quality.reference_lm import ReferenceLM, ifd
from synthtrain.records import CATEGORIES, QUALITY_SCORES

LM_SCORER_COLUMNS = ("lm_perplexity", "lm_ifd", "lm_end_surprisal")  # lm_scorer.LMScorer's scores


class Scorer:
    def __init__(self, params: Quality, classifier: QualityClassifier, lm: ReferenceLM, calibration: dict[str, np.ndarray]):
        self.params, self.classifier, self.lm, self.calibration = params, classifier, lm, calibration

    def score(self, batch: pa.RecordBatch | pa.Table) -> dict[str, np.ndarray]:
        """Every column of QUALITY_SCORES for a batch of records (NaN where not applicable)."""
        units = split_units(batch)
        scores = {**heuristics.text_statistics(units, self.params.dup_ngram), **heuristics.reply_statistics(units),
                  "answer_errors": heuristics.answer_check(units)}
        scores["classifier"] = self.classifier.probability(features(units, self.classifier.hash_bits))
        scores.update(lm_scores(self.lm, units, self.params.reference_lm.question_weight))
        scores.update({name: np.full(units.records, np.nan) for name in LM_SCORER_COLUMNS})  # enrich.lm_score fills them
        return scores


def lm_scores(lm: ReferenceLM, units, question_weight: float) -> dict[str, np.ndarray]:
    log_probs, tokens, token_offsets = lm.log_probs(units.hashes, units.word_offsets)
    loss = np.concatenate([[0], np.cumsum(-log_probs)])
    unit_loss = loss[token_offsets[1:]] - loss[token_offsets[:-1]]
    perplexity = np.exp(units.per_record(unit_loss) / np.maximum(units.per_record(np.diff(token_offsets)), 1))
    # How surprised the model is that the reply (or document) ends where it does: -log P(</s>).
    last = np.where(units.answer >= 0, units.answer, units.offsets[1:] - 1)
    end_surprisal = -log_probs[token_offsets[last + 1] - 1]
    pairs = np.flatnonzero((units.answer >= 0) & (units.question >= 0))
    difficulty = np.full(units.records, np.nan)
    difficulty[pairs] = ifd(log_probs, tokens, token_offsets, units.hashes, units.word_offsets,
                            units.answer[pairs], units.question[pairs], question_weight)
    return {"perplexity": perplexity, "end_surprisal": end_surprisal, "ifd": difficulty}


# --- training -----------------------------------------------------------------

def selected(table: pa.Table, selection: RecordSelection) -> np.ndarray:
    return (pc.is_in(table.column("category"), pa.array(selection.categories, pa.string())).to_numpy(zero_copy_only=False)
            | pc.is_in(table.column("source"), pa.array(selection.sources, pa.string())).to_numpy(zero_copy_only=False))


def describe(selection: RecordSelection) -> str:
    named = [f"category {c}" for c in selection.categories] + [f"source {s}" for s in selection.sources]
    return " or ".join(named)


def sample_rows(table: pa.Table, params: Quality) -> dict[str, np.ndarray]:
    """Seeded row indices of the training sample, by role. ``table`` holds the
    source and category columns of the whole input."""
    rng = np.random.default_rng(params.seed)
    order = rng.permutation(table.num_rows)
    c, lm = params.classifier, params.reference_lm
    category = table.column("category").to_numpy(zero_copy_only=False)
    # Calibration records come first, so that the reference LM never sees them;
    # at most a fifth of a category, so that a small input still trains the LM.
    rows = {}
    for name in CATEGORIES:
        members = order[(category == name)[order]]
        rows[f"calibration:{name}"] = np.sort(members[: min(lm.calibration_records, len(members) // 5)])
    unused = np.ones(table.num_rows, dtype=bool)
    unused[np.concatenate(list(rows.values()))] = False
    for role, selection, count, key in (("positives", c.positives, c.train_records, "classifier.positives"),
                                        ("negatives", c.negatives, c.train_records, "classifier.negatives"),
                                        ("trusted", lm.trusted, lm.train_records, "reference_lm.trusted")):
        chosen = selected(table, selection)
        if not chosen.any():
            raise StageError(f"quality.{key}: no input record is of {describe(selection)}; "
                             f"the input has {', '.join(sorted(set(table.column('source').to_pylist())))} "
                             f"({', '.join(sorted(set(category.tolist())))})")
        if role == "trusted":
            chosen &= unused
            if not chosen.any():
                raise StageError(f"quality.{key}: every record of {describe(selection)} is needed for calibration; "
                                 f"lower quality.reference_lm.calibration_records")
        rows[role] = np.sort(order[chosen[order]][:count])
    return rows


def train(sample: pa.Table, roles: dict[str, np.ndarray], params: Quality) -> tuple[Scorer, dict]:
    """Train the classifier and the reference LM on the sample; ``roles`` maps
    each role to row indices of ``sample``."""
    c, lm_params = params.classifier, params.reference_lm
    overlap = np.intersect1d(roles["positives"], roles["negatives"])
    if len(overlap):
        raise StageError(f"quality.classifier: {len(overlap)} sampled records are both positive and negative; make the selections disjoint")
    labelled = np.concatenate([roles["positives"], roles["negatives"]])
    positive = np.concatenate([np.ones(len(roles["positives"]), bool), np.zeros(len(roles["negatives"]), bool)])
    x = features(split_units(sample.take(pa.array(labelled))), c.hash_bits)
    heldout = np.random.default_rng(params.seed).random(len(labelled)) < c.heldout_fraction
    if positive[~heldout].all() or not positive[~heldout].any():
        raise StageError("quality.classifier: the training sample has only one class; add records or change positives/negatives")
    classifier = QualityClassifier.train(x[~heldout], positive[~heldout], c.hash_bits, c.regularisation, params.seed)
    accuracy = accuracy_score(positive[heldout], classifier.probability(x[heldout]) >= 0.5) if heldout.any() else None

    trusted = split_units(sample.take(pa.array(roles["trusted"])))
    lm = ReferenceLM.train(trusted.hashes, trusted.word_offsets, lm_params.order, lm_params.min_count)
    calibration = {"category": [], "log_perplexity_median": [], "log_perplexity_p90": [], "ifd_median": [], "ifd_p95": []}
    for name in CATEGORIES:
        rows = roles[f"calibration:{name}"]
        if not len(rows):
            continue
        scores = lm_scores(lm, split_units(sample.take(pa.array(rows))), lm_params.question_weight)
        log_perplexity = np.log(scores["perplexity"])
        calibration["category"].append(name)
        calibration["log_perplexity_median"].append(np.median(log_perplexity))
        calibration["log_perplexity_p90"].append(np.percentile(log_perplexity, 90))
        ifds = scores["ifd"][~np.isnan(scores["ifd"])]
        calibration["ifd_median"].append(np.median(ifds) if len(ifds) else np.nan)
        calibration["ifd_p95"].append(np.percentile(ifds, 95) if len(ifds) else np.nan)
    if not calibration["category"]:
        raise StageError("quality.reference_lm: too few records to calibrate perplexity (a category needs at least 5)")
    calibration = {k: np.array(v) for k, v in calibration.items()}
    metrics = {
        "classifier": {"train_records": int((~heldout).sum()), "heldout_records": int(heldout.sum()),
                       "heldout_accuracy": None if accuracy is None else round(float(accuracy), 4),
                       "positives": describe(c.positives), "negatives": describe(c.negatives)},
        "reference_lm": {"trusted": describe(lm_params.trusted), "train_records": len(roles["trusted"]),
                         "tokens": int(lm.arrays["tokens"]), "order": lm_params.order,
                         "ngrams": {k: len(lm.arrays[f"gram{k}"]) for k in range(1, lm_params.order + 1)},
                         "calibration": {name: {"median_perplexity": round(float(np.exp(m)), 2), "p90_perplexity": round(float(np.exp(p)), 2),
                                                "median_ifd": None if np.isnan(i) else round(float(i), 4),
                                                "p95_ifd": None if np.isnan(j) else round(float(j), 4)}
                                         for name, m, p, i, j in zip(calibration["category"], calibration["log_perplexity_median"],
                                                                     calibration["log_perplexity_p90"], calibration["ifd_median"],
                                                                     calibration["ifd_p95"])}},
    }
    return Scorer(params, classifier, lm, calibration), metrics


# --- deciding -----------------------------------------------------------------

GRADES = ("classifier", "reference_lm", "ifd")  # averaged; heuristics and refusal gate (multiply)


def _at_most(value: np.ndarray, limit: float) -> np.ndarray:
    """1 up to the limit, then limit / value (0 when the limit is 0)."""
    return np.where(value > limit, limit / np.where(value > limit, value, 1), 1.0)


def _at_least(value: np.ndarray, limit: float) -> np.ndarray:
    return np.where(value < limit, value / (limit if limit > 0 else 1), 1.0)


def judged(scores: dict[str, np.ndarray], category: np.ndarray, calibration: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The scores the decision reads: ``end_surprisal`` counts only where the
    reference LM knows the text (perplexity up to the 90th percentile of its
    category); on other text (code, another domain) its guess about endings is noise.
    Where the LM scorer read a reply, its end surprisal replaces the reference LM's (it
    knows real text); after a document it is ``document_end_surprisal``, with a limit of
    its own: a text ends less surely than a turn. Also returns the LM's excess log perplexity,
    in units of (p90 - median)."""
    known = np.isin(category, calibration["category"])
    at = np.searchsorted(calibration["category"], np.where(known, category, calibration["category"][0]))
    median, p90 = calibration["log_perplexity_median"][at], calibration["log_perplexity_p90"][at]
    excess = np.where(known, np.maximum(np.log(scores["perplexity"]) - median, 0) / np.maximum(p90 - median, 1e-6), np.nan)
    with np.errstate(invalid="ignore"):
        end_surprisal = np.where(excess <= 1, scores["end_surprisal"], np.nan)
    read_reply, read_document = ~np.isnan(scores["lm_ifd"]), ~np.isnan(scores["lm_perplexity"]) & np.isnan(scores["lm_ifd"])
    return {**scores, "end_surprisal": np.where(read_reply, scores["lm_end_surprisal"], end_surprisal),
            "document_end_surprisal": np.where(read_document, scores["lm_end_surprisal"], np.nan), "lm_excess": excess}


def log_scale(value: np.ndarray, good: float, bad: float) -> np.ndarray:
    """1 at ``good`` or better, 0 at ``bad`` or worse, linear in log(value) between."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(np.log(bad / value) / np.log(bad / good), 0, 1)


def components(scores: dict[str, np.ndarray], params: Quality, calibration: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The quality components, each in [0, 1] (NaN where not applicable), from ``judged`` scores."""
    limits = params.limits
    heuristic = np.ones(len(scores["words"]))
    for name, low, high in (("words", limits.min_words, limits.max_words),
                            ("mean_word_length", limits.min_mean_word_length, limits.max_mean_word_length),
                            ("alpha_ratio", limits.min_alpha_ratio, None), ("symbol_ratio", None, limits.max_symbol_ratio),
                            ("dup_line_fraction", None, limits.max_dup_line_fraction),
                            ("dup_ngram_fraction", None, limits.max_dup_ngram_fraction),
                            ("boilerplate_fraction", None, limits.max_boilerplate_fraction), ("mojibake", None, limits.max_mojibake),
                            ("stopwords", limits.min_stopwords, None), ("unfinished", None, 0), ("end_surprisal", None, limits.max_end_surprisal),
                            ("document_end_surprisal", None, limits.max_document_end_surprisal),
                            ("answer_errors", None, limits.max_answer_errors),
                            ("response_ratio", limits.min_response_ratio, None)):
        value = scores[name].astype(np.float64)  # NaN compares false with any limit, so it passes
        if low is not None:
            heuristic *= _at_least(value, low)
        if high is not None:
            heuristic *= _at_most(value, high)

    # Perplexity is judged against held-out records of the same category (``judged``); IFD
    # against held-out conversations, of whichever category has them. Where the LM scorer
    # read a record, its perplexity and IFD replace the reference LM's, on fixed scales
    # (quality.lm_scorer.perplexity, ifd): the reference LM knows only the built-in world.
    ifd_median, ifd_p95 = np.nanmax(calibration["ifd_median"]), np.nanmax(calibration["ifd_p95"])
    read = ~np.isnan(scores["lm_perplexity"])
    lm = params.lm_scorer
    return {
        "heuristics": heuristic,
        "refusal": 1 - scores["refusal"],
        "classifier": scores["classifier"],
        "reference_lm": np.where(read, log_scale(scores["lm_perplexity"], *lm.perplexity), np.exp(-scores["lm_excess"])),
        "ifd": np.where(read, np.clip((lm.ifd[1] - scores["lm_ifd"]) / (lm.ifd[1] - lm.ifd[0]), 0, 1),
                        np.clip((ifd_p95 - scores["ifd"]) / max(ifd_p95 - ifd_median, 1e-6), 0, 1)),
    }


def combine(parts: dict[str, np.ndarray], params: Quality) -> np.ndarray:
    """quality = heuristics * (1 - refusal) * weighted mean of the applicable graded components."""
    weights = params.weights.model_dump()
    total = np.zeros(len(parts["heuristics"]))
    weight = np.zeros(len(total))
    for name in GRADES:
        applies = ~np.isnan(parts[name])
        total += np.where(applies, parts[name], 0) * weights[name]
        weight += applies * weights[name]
    graded = np.divide(total, weight, out=np.ones(len(total)), where=weight > 0)
    return parts["heuristics"] * np.nan_to_num(parts["refusal"], nan=1.0) * graded


def rules_broken(scores: dict[str, np.ndarray], params: Quality) -> dict[str, np.ndarray]:
    """Per hard rule, the records breaking it (NaN scores break nothing)."""
    limits = params.limits
    with np.errstate(invalid="ignore"):
        return {
            "refusal": scores["refusal"] > limits.max_refusal,
            "mojibake": scores["mojibake"] > limits.max_mojibake,
            "answer_errors": scores["answer_errors"] > limits.max_answer_errors,
            "dup_lines": scores["dup_line_fraction"] > limits.max_dup_line_fraction,
            "dup_ngrams": scores["dup_ngram_fraction"] > limits.max_dup_ngram_fraction,
            "boilerplate": scores["boilerplate_fraction"] > limits.max_boilerplate_fraction,
            "words": (scores["words"] < limits.min_words) | (scores["words"] > limits.max_words),
            "mean_word_length": (scores["mean_word_length"] < limits.min_mean_word_length)
            | (scores["mean_word_length"] > limits.max_mean_word_length),
            "alpha_ratio": scores["alpha_ratio"] < limits.min_alpha_ratio,
            "symbol_ratio": scores["symbol_ratio"] > limits.max_symbol_ratio,
            "stopwords": scores["stopwords"] < limits.min_stopwords,
            "unfinished": (scores["unfinished"] > 0) | (scores["end_surprisal"] > limits.max_end_surprisal)
            | (scores["document_end_surprisal"] > limits.max_document_end_surprisal),
            "response_ratio": scores["response_ratio"] < limits.min_response_ratio,
        }


def reject_reasons(scores: dict[str, np.ndarray], quality: np.ndarray, params: Quality) -> np.ndarray:
    """The first enabled hard rule a record breaks, else ``below_threshold`` when
    its quality is under ``quality.threshold``, else None (kept)."""
    reason = np.where(quality < params.threshold, "below_threshold", None).astype(object)
    enabled = params.rules.model_dump()
    for name, broken in reversed(rules_broken(scores, params).items()):  # the first rule in order wins
        if enabled[name]:
            reason[broken] = name
    return reason


def score_columns(scores: dict[str, np.ndarray]) -> list[pa.Array]:
    """QUALITY_SCORES columns from score arrays, NaN becoming null."""
    columns = []
    for field in QUALITY_SCORES:
        value = scores[field.name]
        missing = np.isnan(value.astype(np.float64))
        columns.append(pa.array(np.where(missing, 0, value).astype(field.type.to_pandas_dtype()), mask=missing, type=field.type))
    return columns
