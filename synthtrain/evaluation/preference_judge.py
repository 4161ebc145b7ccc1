"""The learned preference judge: a reply's expected standing among real chat
models, as GPT-4 ranked them, predicted from its text alone.

Each reply becomes hashed character n-grams (2-4 characters within word
boundaries, l2-normalised: they see words, inflections, punctuation and
Markdown alike). A model is the mean of its replies' vectors; a ridge
regression maps that mean to the model's rank (0 = last, 1 = first) among
the training models by a leaderboard target: ``win_rate``, or the
length-controlled rate for the length-debiased judge. The regression is
linear, so the score of a model is the mean score of its replies, and a
single reply can be scored on its own: that is how the eval stage judges the
project's own models, and how judge_check measures per-prompt agreement.

Training reads nothing but reply texts and leaderboard numbers: no model
names, no metadata. Stored as ``judge.npz`` (weights per target, no pickle)
and ``judge.json`` (features and training summary).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.stats import rankdata
from sklearn.feature_extraction.text import HashingVectorizer

from synthtrain.arrays import load_arrays, save_arrays
from synthtrain.evaluation.textmetrics import is_empty_reply
from synthtrain.params import StageError
from synthtrain.records import current_path, write_output_text

TARGETS = ("win_rate", "length_controlled_winrate")
DIRECTORY = Path("models/preference_judge")  # written by the judge_check stage, read by eval


@dataclass(frozen=True)
class Features:
    """How a reply becomes a vector; ``analyzer`` and ``ngrams`` as in scikit-learn's HashingVectorizer."""

    analyzer: str = "char_wb"
    ngrams: tuple[int, int] = (2, 4)
    hash_bits: int = 17

    def vectorizer(self) -> HashingVectorizer:
        return HashingVectorizer(analyzer=self.analyzer, ngram_range=tuple(self.ngrams), n_features=2**self.hash_bits,
                                 alternate_sign=False, norm="l2", dtype=np.float32)

    def transform(self, replies: list[str]) -> sparse.csr_matrix:
        return self.vectorizer().transform(replies).tocsr()


def mean_by_group(vectors: sparse.csr_matrix, groups: np.ndarray, count: int) -> np.ndarray:
    """Row g: the mean of the rows of ``vectors`` whose group is g (dense, groups x features)."""
    sizes = np.bincount(groups, minlength=count).astype(np.float64)
    if (sizes == 0).any():
        raise ValueError("every group needs at least one reply")
    averaging = sparse.csr_matrix((1.0 / sizes[groups], (groups, np.arange(len(groups)))), shape=(count, vectors.shape[0]))
    return np.asarray((averaging @ vectors).todense(), dtype=np.float64)


def rank_target(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share the mean rank): Spearman is what the judge is checked on, so it learns order, not scale."""
    return (rankdata(values) - 1) / max(len(values) - 1, 1)


@dataclass
class LinearJudge:
    """score(reply) = vector(reply) . weights + intercept."""

    weights: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, model_vectors: np.ndarray, targets: np.ndarray, alpha: float) -> "LinearJudge":
        """Ridge on standardised model means, solved in the dual (models << features):
        w = Z' (Z Z' + alpha I)^-1 (y - mean y), then folded back to raw features."""
        mean, scale = model_vectors.mean(axis=0), model_vectors.std(axis=0) + 1e-9
        z = (model_vectors - mean) / scale
        centred = targets - targets.mean()
        dual = np.linalg.solve(z @ z.T + alpha * np.eye(len(z)), centred)
        weights = (z.T @ dual) / scale
        return cls(weights=weights.astype(np.float64), intercept=float(targets.mean() - mean @ weights))

    def score(self, vectors: sparse.csr_matrix) -> np.ndarray:
        return np.asarray(vectors @ self.weights).ravel() + self.intercept


@dataclass
class PreferenceJudge:
    features: Features
    judges: dict[str, LinearJudge]
    summary: dict

    @classmethod
    def train(cls, features: Features, vectors: sparse.csr_matrix, model_of_reply: np.ndarray, leaderboard: dict[str, np.ndarray],
              alpha: float, summary: dict | None = None) -> "PreferenceJudge":
        """``model_of_reply[i]``: the index of reply i's model in the leaderboard arrays (one value per model and target)."""
        count = len(next(iter(leaderboard.values())))
        means = mean_by_group(vectors, model_of_reply, count)
        judges = {target: LinearJudge.fit(means, rank_target(values), alpha) for target, values in leaderboard.items()}
        return cls(features=features, judges=judges, summary=summary or {})

    def score(self, replies: list[str], target: str = "win_rate") -> np.ndarray:
        """Per reply, its predicted rank; an empty or markup-only reply ranks last (0),
        whatever its markup's n-grams would say."""
        if not replies:
            return np.zeros(0)
        scores = self.judges[target].score(self.features.transform(replies))
        return np.where([is_empty_reply(reply) for reply in replies], 0.0, scores)

    def save(self, directory: Path) -> None:
        arrays = {}
        for target, judge in self.judges.items():
            arrays[f"{target}_weights"] = judge.weights
            arrays[f"{target}_intercept"] = np.array(judge.intercept)
        save_arrays(directory / "judge.npz", **arrays)
        description = {"features": {"analyzer": self.features.analyzer, "ngrams": list(self.features.ngrams),
                                    "hash_bits": self.features.hash_bits}, "targets": sorted(self.judges), **self.summary}
        write_output_text(directory / "judge.json", json.dumps(description, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "PreferenceJudge":
        check_preference_judge(directory)
        fix = "run `dvc repro judge_check` (python -m stages.judge_check)"
        description = json.loads(current_path(directory / "judge.json").read_text())
        arrays = load_arrays(directory / "judge.npz")
        features = Features(analyzer=description["features"]["analyzer"], ngrams=tuple(description["features"]["ngrams"]),
                            hash_bits=description["features"]["hash_bits"])
        judges = {target: LinearJudge(arrays[f"{target}_weights"], float(arrays[f"{target}_intercept"])) for target in description["targets"]}
        if any(judge.weights.shape != (2**features.hash_bits,) for judge in judges.values()):
            raise StageError(f"{directory}/judge.npz does not match judge.json's features; {fix}")
        return cls(features=features, judges=judges, summary={})


def check_preference_judge(directory: Path) -> None:
    if not current_path(directory / "judge.json").is_file() or not current_path(directory / "judge.npz").is_file():
        raise StageError(f"{directory}: no preference judge (judge.json and judge.npz); run `dvc repro judge_check` "
                         "(python -m stages.judge_check)")


def preference_scores(directory: Path, replies: list[str]) -> dict[str, float]:
    """The eval stage's ``judge_preference_rank`` (by win rate) and
    ``judge_preference_rank_length_controlled``: the mean predicted rank of the
    replies among the reference's real chat models, 0 = last, 1 = first; a
    reply unlike any of theirs can fall outside [0, 1]. {} for no replies."""
    if not replies:
        return {}
    judge = PreferenceJudge.load(directory)
    names = {"win_rate": "judge_preference_rank", "length_controlled_winrate": "judge_preference_rank_length_controlled"}
    return {names[target]: float(judge.score(replies, target).mean()) for target in judge.judges}
