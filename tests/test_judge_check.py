"""judge_check: held-out folds that never let a judge see the model it scores,
the statistics it reports, and the stage on a tiny reference in the exact
AlpacaEval 2.0 layout (leaderboard.csv, outputs.jsonl.gz, preferences.jsonl.gz)."""

import csv
import gzip
import json
import random

import numpy as np
import pytest

from conftest import SHARED_DATA
from synthtrain.evaluation import judge_check
from synthtrain.evaluation.preference_judge import DIRECTORY, Features, PreferenceJudge, preference_scores
from synthtrain.params import StageError, parse_params

FAMILIES = ("llama", "qwen", "mistral", "gemma", "claude", "vicuna")
# the same word lengths on both sides: quality is in which words, never in how long the reply is
GOOD = "clear accurate detailed helpful example reason because therefore".split()
FILLER = "table painting mountain blanket kitchen yellow cabbage somewhere".split()
PROMPTS = 12


def reply(quality: float, rng: random.Random) -> str:
    """Words drawn from GOOD with probability ``quality``; length independent of quality."""
    return " ".join(rng.choice(GOOD) if rng.random() < quality else rng.choice(FILLER) for _ in range(rng.randint(20, 60)))


def write_reference(directory, models: int = 18, seed: int = 0) -> dict[str, float]:
    """A reference whose win rates follow each model's (hidden) reply quality."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"{FAMILIES[i % len(FAMILIES)]}-{i}" for i in range(models)]
    quality = {name: (i + 0.5) / models for i, name in enumerate(rng.sample(names, models))}
    with open(directory / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "win_rate", "length_controlled_winrate", "avg_length"])
        for name in names:
            writer.writerow([name, 100 * quality[name], 100 * quality[name] ** 1.2, 200])
    with gzip.open(directory / "outputs.jsonl.gz", "wt") as out:
        for name in names:
            for index in range(PROMPTS):
                out.write(json.dumps({"model": name, "index": index, "instruction": f"question {index}", "output": reply(quality[name], rng)}) + "\n")
    with gzip.open(directory / "preferences.jsonl.gz", "wt") as out:
        for name in names[:6]:
            for index in range(PROMPTS):
                reference, own = reply(0.5, rng), reply(quality[name], rng)
                out.write(json.dumps({"model": name, "index": index, "instruction": f"question {index}", "output_1": reference,
                                      "generator_1": "gpt4_1106_preview", "output_2": own, "generator_2": name,
                                      "preference": 1.0 + float(quality[name] > 0.5)}) + "\n")
    return quality


def params_for(reference, **judge_check_keys):
    return parse_params({"sources": {"builtin": {"kind": "builtin"}},
                         "judge_check": {"reference": str(reference), "family_folds": 3, "model_folds": 4, "hash_bits": 12,
                                         "micro_judge_prompts": 0, "bootstrap": 100, **judge_check_keys}})


def test_folds_never_put_a_model_or_a_family_on_both_sides():
    reference = judge_check.read_reference(SHARED_DATA / "judged/alpaca_eval2")
    config = params_for(SHARED_DATA / "judged/alpaca_eval2").judge_check
    families = np.array([judge_check.model_family(name) for name in reference.models])
    for scheme, folds in judge_check.fold_schemes(reference.models, config).items():
        held_out = np.concatenate(folds)
        assert sorted(held_out) == list(range(len(reference.models))), scheme  # every model scored exactly once
        for test in folds:
            train = np.setdiff1d(np.arange(len(reference.models)), test)
            assert not set(test) & set(train)
            if scheme == "family":
                assert not set(families[test]) & set(families[train])
    assert len(set(families)) < len(reference.models)  # families really group fine-tunes: the family split is stricter


def test_a_held_out_models_score_does_not_depend_on_its_own_replies_or_win_rate(tmp_path):
    write_reference(tmp_path / "ref")
    reference = judge_check.read_reference(tmp_path / "ref")
    features = Features(hash_bits=12)
    pair_vectors = (features.transform(reference.pair_reference), features.transform(reference.pair_reply))
    folds = judge_check.fold_schemes(reference.models, params_for(tmp_path / "ref").judge_check)["family"]
    scored = lambda ref: judge_check.out_of_fold_scores(features.transform(ref.replies), pair_vectors, ref, folds, "win_rate", "rank", 10.0)[0]
    before = scored(reference)
    held_out, other = folds[0][0], folds[1][0]
    reference.leaderboard["win_rate"][held_out] = 1000.0  # its own label: invisible to the judge that scores it
    after = scored(reference)
    np.testing.assert_array_equal(after[reference.reply_model == held_out], before[reference.reply_model == held_out])
    reference.leaderboard["win_rate"][other] = -1000.0  # a label in its training folds: the score moves
    assert not np.array_equal(scored(reference)[reference.reply_model == held_out], before[reference.reply_model == held_out])


def test_partial_correlation_given_length_removes_what_length_explains():
    rng = np.random.default_rng(0)
    length = rng.normal(size=200)
    target = length + rng.normal(scale=0.5, size=200)
    assert judge_check.partial_spearman(length * 2 + 1, target, length) == pytest.approx(0.0, abs=1e-9)
    independent = rng.normal(size=200)
    assert judge_check.partial_spearman(target - length + 0.01 * independent, target, length) > 0.9


def test_pairwise_agreement_counts_ties_as_half_and_follows_the_preferred_side():
    preference = np.array([2.0, 1.0, 2.0, 1.0])
    assert judge_check.pairwise_agreement(np.array([1.0, -1.0, 1.0, -1.0]), preference) == 1.0
    assert judge_check.pairwise_agreement(np.array([-1.0, 1.0, -1.0, 1.0]), preference) == 0.0
    assert judge_check.pairwise_agreement(np.zeros(4), preference) == 0.5


def test_the_stage_ranks_a_tiny_reference_and_writes_a_judge_the_eval_stage_can_use(tmp_path, monkeypatch):
    quality = write_reference(tmp_path / "ref")
    monkeypatch.chdir(tmp_path)
    result = judge_check.run_judge_check(params_for(tmp_path / "ref"))
    written = json.loads((tmp_path / "metrics/judge_check.json").read_text())
    assert written["metrics"].keys() == result["metrics"].keys()
    learned = written["metrics"]["preference_judge"]["win_rate"]
    # quality is in the words, not the length: the judge finds it on models it never saw, length does not
    assert learned["spearman"] > 0.8 and learned["spearman_ci95"][0] <= learned["spearman"] <= learned["spearman_ci95"][1]
    assert abs(written["metrics"]["length_chars"]["win_rate"]["spearman"]) < 0.6
    assert written["folds"]["family"]["preference_judge"]["win_rate"]["fold_sizes"] == [6, 6, 6]
    assert (tmp_path / "plots/judge_check.png").stat().st_size > 0
    judge = PreferenceJudge.load(DIRECTORY)
    best, worst = max(quality, key=quality.get), min(quality, key=quality.get)
    rng = random.Random(1)
    assert judge.score([reply(quality[best], rng) for _ in range(20)]).mean() > judge.score([reply(quality[worst], rng) for _ in range(20)]).mean()
    scores = preference_scores(DIRECTORY, ["", "<|im_end|>", "  \n"])
    assert scores == {"judge_preference_rank": 0.0, "judge_preference_rank_length_controlled": 0.0}  # empty replies rank last


def test_a_reference_line_without_a_field_fails_naming_the_file_and_line(tmp_path):
    write_reference(tmp_path / "ref")
    path = tmp_path / "ref/outputs.jsonl.gz"
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    lines[4] = json.dumps({"model": "llama-0", "index": 4, "instruction": "q"})
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(StageError, match=r"outputs\.jsonl\.gz:5: no field 'output'"):
        judge_check.read_reference(tmp_path / "ref")
    with pytest.raises(StageError, match=r"leaderboard\.csv: no such file"):
        judge_check.read_reference(tmp_path / "missing")


def test_each_distinct_text_is_scored_once_and_the_result_does_not_depend_on_the_workers(tmp_path, monkeypatch):
    texts, rows = judge_check.distinct_texts(["a", "b", "a"], ["b", "c"])
    assert texts == ["a", "b", "c"] and [r.tolist() for r in rows] == [[0, 1, 0], [1, 2]]
    write_reference(tmp_path / "ref")
    # as in AlpacaEval: one reference reply per prompt shared by every pair, and pair replies that are replies too
    path = tmp_path / "ref/preferences.jsonl.gz"
    own = {(row["model"], row["index"]): row["output"] for row in map(json.loads, gzip.decompress((tmp_path / "ref/outputs.jsonl.gz").read_bytes()).splitlines())}
    pairs = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    for pair in pairs:
        pair["output_1"], pair["output_2"] = f"the reference reply to question {pair['index']}", own[pair["model"], pair["index"]]
    path.write_bytes(gzip.compress("".join(json.dumps(pair) + "\n" for pair in pairs).encode()))
    monkeypatch.chdir(tmp_path)
    written = {}
    for chunk in (7, 10**9):  # many worker jobs, or one
        monkeypatch.setattr(judge_check, "CHUNK_TEXTS", chunk)
        result = judge_check.run_judge_check(params_for(tmp_path / "ref"))
        del result["seconds"]
        written[chunk] = json.dumps(result, sort_keys=True), {p.name: p.read_bytes() for p in DIRECTORY.iterdir()}
    assert written[7] == written[10**9]
