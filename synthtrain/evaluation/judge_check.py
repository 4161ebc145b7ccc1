"""judge_check: how well each zero-cost metric ranks real chat models the way
GPT-4 did, on ``judge_check.reference`` (AlpacaEval 2.0 as published: 112
models' replies to 300 prompts, their GPT-4-turbo win rates and
length-controlled win rates, and 12,075 per-prompt preferences for 15 of
them; ../shared/data/README.md).

Every metric gives each reply a number; a model's score is the mean over its
replies. Per metric and leaderboard target: Spearman and Kendall over models,
a bootstrap 95 % interval of Spearman (models resampled), the partial Spearman
given average length (does it know more than length?), and per-prompt
agreement with GPT-4's preferences between the reference reply and the model's.

The learned judges (preference_judge.py, and a pairwise logistic judge on the
per-prompt preferences) never score a model whose replies trained them: every
model is scored by the judge of the fold that held it out, with folds grouped
by model family (so a fine-tune is never judged by a judge trained on its
siblings) and, separately, by model. Family names are read only to form
folds; no judge reads names or metadata. The judge written for the eval stage
is then trained on all models.
"""

import csv
import dataclasses
import gzip
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.stats import kendalltau, spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from tqdm import tqdm

from synthtrain.evaluation.judges import judge_probabilities
from synthtrain.evaluation.preference_judge import DIRECTORY as JUDGE, TARGETS, Features, LinearJudge, PreferenceJudge, mean_by_group, rank_target
from synthtrain.evaluation.textmetrics import gzip_ratio, is_repetition_loop, words
from synthtrain.parallel import parallel_map
from synthtrain.params import JudgeCheck, Params, StageError
from synthtrain.records import output_file, write_metrics

log = logging.getLogger("judge_check")

METRICS = Path("metrics/judge_check.json")
PLOT = Path("plots/judge_check.png")
MICRO_JUDGES = Path("models/judges")
FILES = {"leaderboard": "leaderboard.csv", "outputs": "outputs.jsonl.gz", "preferences": "preferences.jsonl.gz"}
OUTPUT_FIELDS = ("model", "index", "instruction", "output")
PREFERENCE_FIELDS = ("model", "index", "instruction", "output_1", "output_2", "preference")
# Base-model lineages, searched in this order in a lower-cased model name; a
# name with none of them is its own family (its first word). Folds only.
FAMILIES = ("gemma", "llama", "qwen", "mixtral", "mistral", "zephyr", "claude", "gpt", "yi-", "yi_", "vicuna", "internlm", "tulu",
            "starling", "deepseek", "nanbeige", "samba", "storm", "moa", "hermes", "dbrx", "wizard", "blendax")
CHUNK_TEXTS = 2000  # texts per worker job: the fixed metrics and the n-gram hashing run on every core
CHARS, WORDS = Features(), Features(analyzer="word", ngrams=(1, 2))  # hash_bits from params
# The variants of the learned judge, to show what each choice buys across folds.
VARIANTS = {
    "chars, rank target (chosen)": (CHARS, "rank"),
    "chars, logit target": (CHARS, "logit"),
    "word uni+bigrams, rank target": (WORDS, "rank"),
}


@dataclass
class Reference:
    models: list[str]
    leaderboard: dict[str, np.ndarray]  # target -> one value per model
    reply_model: np.ndarray  # per reply: index into models
    reply_prompt: np.ndarray
    instructions: list[str]
    replies: list[str]
    pair_model: np.ndarray  # per preference: index into models
    pair_prompt: np.ndarray
    pair_instructions: list[str]
    pair_reference: list[str]  # output_1
    pair_reply: list[str]  # output_2, the model's
    pair_preference: np.ndarray  # in [1, 2]; 2: the model's reply preferred


def _json_lines(path: Path, fields: tuple[str, ...]):
    if not path.is_file():
        raise StageError(f"{path}: no such file (judge_check.reference must hold {', '.join(FILES.values())})")
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StageError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
            missing = [field for field in fields if field not in row]
            if missing:
                raise StageError(f"{path}:{number}: no field '{missing[0]}' (expected {', '.join(fields)})")
            yield row


def read_reference(directory: Path) -> Reference:
    path = directory / FILES["leaderboard"]
    if not path.is_file():
        raise StageError(f"{path}: no such file (judge_check.reference must hold {', '.join(FILES.values())})")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or any(column not in rows[0] for column in ("model", *TARGETS)):
        raise StageError(f"{path}: expected the columns model, {', '.join(TARGETS)}")
    models = [row["model"] for row in rows]
    index = {model: i for i, model in enumerate(models)}
    leaderboard = {target: np.array([float(row[target]) for row in rows]) for target in TARGETS}
    outputs = [row for row in _json_lines(directory / FILES["outputs"], OUTPUT_FIELDS) if row["model"] in index]
    preferences = [row for row in _json_lines(directory / FILES["preferences"], PREFERENCE_FIELDS) if row["model"] in index]
    if not outputs:
        raise StageError(f"{directory / FILES['outputs']}: no replies of the leaderboard's models")
    return Reference(
        models=models, leaderboard=leaderboard,
        reply_model=np.array([index[row["model"]] for row in outputs]), reply_prompt=np.array([row["index"] for row in outputs]),
        instructions=[row["instruction"] for row in outputs], replies=[row["output"] or "" for row in outputs],
        pair_model=np.array([index[row["model"]] for row in preferences], dtype=int),
        pair_prompt=np.array([row["index"] for row in preferences], dtype=int),
        pair_instructions=[row["instruction"] for row in preferences],
        pair_reference=[row["output_1"] or "" for row in preferences], pair_reply=[row["output_2"] or "" for row in preferences],
        pair_preference=np.array([float(row["preference"]) for row in preferences]))


def distinct_texts(*groups: list[str]) -> tuple[list[str], list[np.ndarray]]:
    """The distinct texts of ``groups`` in first-seen order and, per group, each text's position among them."""
    position: dict[str, int] = {}
    rows = [np.array([position.setdefault(text, len(position)) for text in group], dtype=np.int64) for group in groups]
    return list(position), rows


def model_family(name: str) -> str:
    low = name.lower()
    return next((family.strip("-_") for family in FAMILIES if family in low), re.split(r"[-_ .]", low)[0])


def fold_schemes(models: list[str], config: JudgeCheck) -> dict[str, list[np.ndarray]]:
    """Per scheme, the held-out model indices of each fold."""
    families = [model_family(model) for model in models]
    shuffled = np.random.default_rng(config.seed).permutation(len(models))
    by_model = np.empty(len(models), dtype=int)
    by_model[shuffled] = np.arange(len(models)) % config.model_folds
    return {
        "family": [test for _, test in GroupKFold(n_splits=config.family_folds).split(models, groups=families)],
        "model": [np.flatnonzero(by_model == fold) for fold in range(config.model_folds)],
    }


# --- metrics without training -----------------------------------------------------

def distinct_2(reply: str) -> float:
    tokens = words(reply)
    grams = list(zip(tokens, tokens[1:]))
    return len(set(grams)) / len(grams) if grams else 0.0


FIXED_METRICS = {
    "length_chars": len,
    "distinct_2": distinct_2,
    "gzip_ratio": gzip_ratio,
    "not_a_repetition_loop": lambda reply: 0.0 if is_repetition_loop(reply) else 1.0,
}


# --- learned judges, out of fold --------------------------------------------------

def target_values(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "rank":
        return rank_target(values)
    share = np.clip(values / 100, 1e-4, 1 - 1e-4)
    return np.log(share / (1 - share))


def out_of_fold_scores(vectors: sparse.csr_matrix, pair_vectors: tuple[sparse.csr_matrix, sparse.csr_matrix], reference: Reference,
                       folds: list[np.ndarray], target: str, kind: str, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per reply and per preference pair (model's reply minus the reference's),
    the score of the judge trained on the other folds' models."""
    means = mean_by_group(vectors, reference.reply_model, len(reference.models))
    reply_scores, pair_scores = np.zeros(vectors.shape[0]), np.zeros(len(reference.pair_model))
    for test in folds:
        train = np.setdiff1d(np.arange(len(reference.models)), test)
        judge = LinearJudge.fit(means[train], target_values(reference.leaderboard[target][train], kind), alpha)
        replies = np.isin(reference.reply_model, test)
        reply_scores[replies] = judge.score(vectors[replies])
        pairs = np.isin(reference.pair_model, test)
        pair_scores[pairs] = judge.score(pair_vectors[1][pairs]) - judge.score(pair_vectors[0][pairs])
    return reply_scores, pair_scores


def pairwise_judge_scores(reference: Reference, word_vectors: tuple[sparse.csr_matrix, ...], folds: list[np.ndarray],
                          config: JudgeCheck) -> tuple[np.ndarray, np.ndarray]:
    """A logistic judge trained on the per-prompt preferences only (the difference
    of the two replies' word features: ``word_vectors`` of the replies, the
    pairs' reference replies and their model replies), per fold on the other
    folds' models' pairs; a fold with no pairs of other models scores 0."""
    vectors, reference_vectors, reply_vectors = word_vectors
    difference = reply_vectors - reference_vectors
    preferred = (reference.pair_preference > 1.5).astype(int)
    reply_scores, pair_scores = np.zeros(len(reference.replies)), np.zeros(len(reference.pair_model))
    for test in folds:
        train_pairs = ~np.isin(reference.pair_model, test)
        if len(np.unique(preferred[train_pairs])) < 2:
            continue
        judge = LogisticRegression(C=config.pairwise_c, solver="liblinear", fit_intercept=False).fit(difference[train_pairs], preferred[train_pairs])
        replies = np.isin(reference.reply_model, test)
        reply_scores[replies] = judge.decision_function(vectors[replies])
        if (pairs := ~train_pairs).any():
            pair_scores[pairs] = judge.decision_function(difference[pairs])
    return reply_scores, pair_scores


# --- statistics -------------------------------------------------------------------

def partial_spearman(metric: np.ndarray, target: np.ndarray, control: np.ndarray) -> float:
    """Spearman of metric and target with the control's ranks partialled out of
    both; 0 when the metric or the target is a function of the control alone."""
    r_mt, r_mc, r_tc = (spearmanr(a, b)[0] for a, b in ((metric, target), (metric, control), (target, control)))
    unexplained = (1 - r_mc**2) * (1 - r_tc**2)
    return float((r_mt - r_mc * r_tc) / np.sqrt(unexplained)) if unexplained > 1e-12 else 0.0


def correlations(scores: np.ndarray, target: np.ndarray, length: np.ndarray, resamples: int, seed: int) -> dict:
    if np.ptp(scores) == 0:
        return {"spearman": None, "degenerate": "the same score for every model"}
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(resamples):
        pick = rng.integers(0, len(scores), len(scores))
        if np.ptp(scores[pick]) > 0:
            boot.append(spearmanr(scores[pick], target[pick])[0])
    return {"spearman": round(float(spearmanr(scores, target)[0]), 4),
            "spearman_ci95": [round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)],
            "kendall": round(float(kendalltau(scores, target)[0]), 4),
            "partial_spearman_given_length": round(partial_spearman(scores, target, length), 4)}


def pairwise_agreement(difference: np.ndarray, preference: np.ndarray) -> float | None:
    """Share of pairs where the metric prefers the reply GPT-4 preferred (ties 1/2); chance 0.5."""
    if len(difference) == 0:
        return None
    preferred = np.sign(preference - 1.5)
    return round(float(np.mean(np.where(np.sign(difference) == 0, 0.5, np.sign(difference) == preferred))), 4)


def fold_spearman(scores: np.ndarray, target: np.ndarray, folds: list[np.ndarray]) -> dict:
    per_fold = [float(spearmanr(scores[test], target[test])[0]) for test in folds]
    return {"pooled": round(float(spearmanr(scores, target)[0]), 4), "worst_fold": round(min(per_fold), 4),
            "folds": [round(value, 4) for value in per_fold], "fold_sizes": [len(test) for test in folds]}


# --- the check --------------------------------------------------------------------

def run_judge_check(params: Params) -> dict:
    config = params.judge_check
    started = time.perf_counter()
    reference = read_reference(Path(config.reference))
    count = len(reference.models)
    log.info("%d models, %d replies, %d preference pairs", count, len(reference.replies), len(reference.pair_model))
    schemes = fold_schemes(reference.models, config)
    per_model = lambda values: np.bincount(reference.reply_model, weights=values, minlength=count) / np.bincount(reference.reply_model, minlength=count)
    # The 57,750 texts scored (replies, then the pairs' two sides) hold 40,413 distinct ones: the
    # reference replies repeat (805 of 12,075) and many pair replies are replies too.
    texts, (reply_rows, reference_rows, model_rows) = distinct_texts(reference.replies, reference.pair_reference, reference.pair_reply)
    chunks = [texts[start : start + CHUNK_TEXTS] for start in range(0, len(texts), CHUNK_TEXTS)]
    workers = os.cpu_count() or 1
    reply_scores, pair_differences = {}, {}
    for name, metric in FIXED_METRICS.items():
        values = np.concatenate(list(tqdm(parallel_map(lambda chunk: np.array([metric(text) for text in chunk], dtype=float), chunks, workers),
                                          total=len(chunks), desc=name, mininterval=5)))
        reply_scores[name], pair_differences[name] = values[reply_rows], values[model_rows] - values[reference_rows]

    log.info("fixed metrics done after %.0f s", time.perf_counter() - started)
    vectors = {}  # per feature kind: the vectors of the replies, the pairs' reference replies and their model replies
    for features, _ in VARIANTS.values():
        if features not in vectors:
            sized = dataclasses.replace(features, hash_bits=config.hash_bits)
            matrix = sparse.vstack(list(tqdm(parallel_map(sized.transform, chunks, workers), total=len(chunks),
                                             desc=f"hashing {features.analyzer} {features.ngrams}-grams", mininterval=5)), format="csr")
            vectors[features] = tuple(matrix[rows] for rows in (reply_rows, reference_rows, model_rows))
    log.info("features done after %.0f s", time.perf_counter() - started)

    folds_report, ablation = {}, {}
    for scheme, folds in schemes.items():
        folds_report[scheme] = {}
        for variant, (features, kind) in VARIANTS.items():
            reply_vectors, *pair_vectors = vectors[features]
            for target in TARGETS:
                scores, pairs = out_of_fold_scores(reply_vectors, tuple(pair_vectors), reference, folds, target, kind, config.alpha)
                summary = {t: fold_spearman(per_model(scores), reference.leaderboard[t], folds) for t in TARGETS}
                ablation.setdefault(variant, {}).setdefault(scheme, {})[f"trained on {target}"] = summary
                if variant == "chars, rank target (chosen)":
                    name = "preference_judge" if target == "win_rate" else "preference_judge_length_controlled"
                    folds_report[scheme][name] = summary
                    if scheme == "family":
                        reply_scores[name], pair_differences[name] = scores, pairs
        scores, pairs = pairwise_judge_scores(reference, vectors[WORDS], folds, config)
        folds_report[scheme]["pairwise_preference_judge"] = {t: fold_spearman(per_model(scores), reference.leaderboard[t], folds) for t in TARGETS}
        if scheme == "family":
            reply_scores["pairwise_preference_judge"], pair_differences["pairwise_preference_judge"] = scores, pairs

    log.info("learned judges done after %.0f s", time.perf_counter() - started)
    micro = micro_judge_scores(reference, config)
    log.info("micro-judges done after %.0f s", time.perf_counter() - started)

    length = per_model(reply_scores["length_chars"])
    metrics = {}
    for name, scores in reply_scores.items():
        model_scores = per_model(scores)
        metrics[name] = {target: correlations(model_scores, reference.leaderboard[target], length, config.bootstrap, config.seed)
                         for target in TARGETS}
        metrics[name]["pairwise_agreement"] = pairwise_agreement(pair_differences[name], reference.pair_preference)
        metrics[name]["models"] = count
    for name, (model_scores, scored, agreement) in micro.items():
        metrics[name] = {target: correlations(model_scores, reference.leaderboard[target], length, config.bootstrap, config.seed)
                         for target in TARGETS}
        metrics[name].update(pairwise_agreement=agreement, models=count, prompts_scored=scored)

    judge = PreferenceJudge.train(dataclasses.replace(CHARS, hash_bits=config.hash_bits), vectors[CHARS][0], reference.reply_model, reference.leaderboard, config.alpha,
                                  summary={"trained_on": f"{count} models' replies to {len(np.unique(reference.reply_prompt))} prompts",
                                           "reference": config.reference, "score": "predicted rank among the reference models "
                                           "(0 = last, 1 = first), by target"})
    JUDGE.mkdir(parents=True, exist_ok=True)
    judge.save(JUDGE)
    cheap = [name for name in metrics if not name.startswith(("preference_judge", "pairwise"))]
    result = {
        "reference": {"path": config.reference, "models": count, "replies": len(reference.replies),
                      "preference_pairs": int(len(reference.pair_model))},
        "held_out": "every learned judge is scored only on models whose replies it never saw: folds grouped by model family "
                    f"({config.family_folds}) and, separately, by model ({config.model_folds}); metrics below use the family folds",
        "metrics": metrics,
        "folds": folds_report,
        "ablation": ablation,
        "best_cheap_metric_without_training": max(cheap, key=lambda name: metrics[name]["win_rate"].get("spearman") or -1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_metrics(METRICS, result)
    write_plot(reference, {name: per_model(scores) for name, scores in reply_scores.items()}, metrics)
    return result


def micro_judge_scores(reference: Reference, config: JudgeCheck) -> dict:
    """The relevance and coherence micro-judges (models/judges) on the first
    ``micro_judge_prompts`` prompts: embedding every reply would take most of the check's time."""
    if config.micro_judge_prompts == 0:
        return {}
    chosen = np.flatnonzero(reference.reply_prompt < config.micro_judge_prompts)
    pairs = np.flatnonzero(reference.pair_prompt < config.micro_judge_prompts)
    instructions = [reference.instructions[i] for i in chosen] + [reference.pair_instructions[i] for i in pairs] * 2
    replies = ([reference.replies[i] for i in chosen] + [reference.pair_reply[i] for i in pairs]
               + [reference.pair_reference[i] for i in pairs])
    probabilities = judge_probabilities(MICRO_JUDGES, instructions, replies)
    count = len(reference.models)
    result = {}
    for name, p in probabilities.items():
        model_scores = np.bincount(reference.reply_model[chosen], weights=p[:len(chosen)], minlength=count) / np.bincount(reference.reply_model[chosen], minlength=count)
        difference = p[len(chosen):len(chosen) + len(pairs)] - p[len(chosen) + len(pairs):]
        result[name] = (model_scores, config.micro_judge_prompts, pairwise_agreement(difference, reference.pair_preference[pairs]))
    return result


def write_plot(reference: Reference, model_scores: dict[str, np.ndarray], metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("length_chars", "win_rate"), ("preference_judge", "win_rate"),
              ("length_chars", "length_controlled_winrate"), ("preference_judge_length_controlled", "length_controlled_winrate")]
    figure, axes = plt.subplots(2, 2, figsize=(10, 8))
    for axis, (name, target) in zip(axes.ravel(), panels):
        stats = metrics[name][target]
        axis.scatter(model_scores[name], reference.leaderboard[target], s=12)
        axis.set_xlabel(f"{name} (mean per model{', held-out folds' if 'judge' in name else ''})")
        axis.set_ylabel(f"GPT-4-turbo {target} (%)")
        axis.axhline(50, color="grey", linestyle=":", linewidth=1, label="50 %: tied with the reference model")
        axis.set_title(f"Spearman {stats['spearman']:.2f} [{stats['spearman_ci95'][0]:.2f}, {stats['spearman_ci95'][1]:.2f}]"
                       f"; given length {stats['partial_spearman_given_length']:.2f}", fontsize=9)
        axis.legend(fontsize=7, loc="lower right")
    figure.suptitle(f"Zero-cost metrics vs GPT-4-turbo on {len(reference.models)} real chat models (AlpacaEval 2.0); "
                    "one dot per model; Spearman with its 95 % bootstrap interval", fontsize=10)
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    with output_file(PLOT, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
