"""The research report's statistics (synthtrain/statistics.py, research/report.py) on hand-built runs: no dvc experiments."""

import math

import pytest
from scipy import stats

from research.report import (PRIMARY, Family, Result, answer_distillation, answer_quality, category_table, current_chance, expected_pool, markdown, plot_loss_curves, plot_mix,
                             plot_quality_vs_quantity, table, unexpected, write_runs_csv)
from synthtrain.statistics import NO_SIGNAL, SIGNAL, UNKNOWN, holm, signal, t_interval, welch
from synthtrain.experiments import Definition, ExperimentRun

# a run that beats its bigram baseline by a nat on every category and answers half the arithmetic tasks
LEARNED = {"heldout_builtin_web_loss": 3.0, "heldout_builtin_web_bigram_loss": 4.0, "heldout_builtin_web_unigram_loss": 6.0,
           "heldout_builtin_instruction_loss": 3.5, "heldout_builtin_instruction_bigram_loss": 4.5,
           "heldout_builtin_instruction_unigram_loss": 6.5, "tasks_arithmetic_accuracy": 0.5, "tasks_arithmetic_items": 40}


def run(config: str, seed: int, experiment: str = "exp3", sets: dict | None = None, **metrics: float) -> Result:
    name = f"{experiment}-{config}-s{seed}"
    return Result(ExperimentRun(experiment=experiment, name=name, config=config, seed=seed, sets=sets or {}), "0" * 40, metrics)


def groups_of(bpb: dict[str, list[float]], **metrics: float) -> dict[str, list[Result]]:
    return {config: [run(config, seed, heldout_bpb=value, **(LEARNED | metrics)) for seed, value in enumerate(values)]
            for config, values in bpb.items()}


def test_the_t_interval_is_the_hand_computed_one():
    interval = t_interval([1.0, 2.0, 3.0])  # mean 2, s = 1, n = 3
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2 degrees of freedom) from a table, times s/sqrt(n)
    assert (interval.mean, interval.n) == (2.0, 3)
    assert interval.low == pytest.approx(2 - half, rel=1e-9) and interval.high == pytest.approx(2 + half, rel=1e-9)
    assert interval.text(3) == "2.000 [-0.484, 4.484]"
    one = t_interval([5.0])
    assert one.text(2) == "5.00" and one.half_width == 0.0  # one seed: no interval


def test_holm_adjusts_p_values_as_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept at 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.02]) == [0.02]  # a family of one is not adjusted


def test_a_large_difference_names_the_leader_with_holm_corrected_significance():
    groups = groups_of({"A": [1.00, 1.02, 0.98], "B": [2.00, 2.03, 1.97], "C": [3.00, 3.01, 2.99]})
    family = Family(groups, PRIMARY)
    raw = [stats.ttest_ind([1.00, 1.02, 0.98], other, equal_var=False).pvalue for other in ([2.00, 2.03, 1.97], [3.00, 3.01, 2.99])]
    raw.append(stats.ttest_ind([2.00, 2.03, 1.97], [3.00, 3.01, 2.99], equal_var=False).pvalue)
    adjusted = holm(raw)
    assert [family.comparisons["A", "B"].adjusted, family.comparisons["A", "C"].adjusted, family.comparisons["B", "C"].adjusted] == pytest.approx(adjusted)
    assert max(adjusted) < 0.05 and min(adjusted) == pytest.approx(3 * min(raw))  # significant after the correction, which tripled the smallest
    ranking, text = family.ranking()
    assert ranking.leader == "A" and ranking.tied == ["A"] and not ranking.needs_seeds
    assert "**A**" in text and "significantly below every other configuration" in text and "tied" not in text


def test_a_difference_far_below_noise_is_a_tie_that_needs_more_seeds():
    groups = groups_of({"A": [2.00, 2.05, 1.95], "B": [2.001, 2.051, 1.951], "C": [5.0, 5.01, 4.99]})
    ranking, text = Family(groups, PRIMARY).ranking()
    assert ranking.leader is None and ranking.tied == ["A", "B"]
    assert text.startswith("tied: A, B (") and "needs 5 seeds" in text
    assert ranking.lead.crosses_zero and not ranking.lead.significant


def test_with_five_seeds_an_unresolved_tie_does_not_ask_for_more():
    noise = [0.0, 0.05, -0.05, 0.02, -0.02]
    ranking, text = Family(groups_of({"A": [2 + n for n in noise], "B": [2.001 + n for n in noise]}), PRIMARY).ranking()
    assert ranking.tied == ["A", "B"] and "needs 5 seeds" not in text


def test_a_run_at_its_bigram_baseline_has_no_signal():
    at_bigram = LEARNED | {"heldout_builtin_web_loss": 3.98}  # 0.02 below the bigram: within the 0.05 margin
    label = signal(at_bigram)
    assert label.label == NO_SIGNAL and "builtin_web" in label.reasons[0] and "builtin_instruction" not in label.reasons[0]
    assert signal(LEARNED).label == SIGNAL
    at_chance = LEARNED | {"tasks_arithmetic_accuracy": 0.025, "blimp_acc": 0.52, "blimp_chance": 0.5, "blimp_items": 335}
    assert signal(at_chance).reasons == ("every task family and benchmark at chance",)  # both within two binomial SEs
    old = {"heldout_loss": 3.0, "tasks_arithmetic_accuracy": 0.5, "tasks_arithmetic_items": 40}  # from before the baselines
    assert signal(old).label == UNKNOWN and signal(old).reasons == ("no n-gram baselines",)
    infinite = LEARNED | {"heldout_builtin_web_bigram_loss": math.inf, "heldout_builtin_instruction_bigram_loss": math.nan}
    assert signal(infinite).label == UNKNOWN  # an infinite bigram is no baseline beaten


def test_a_configuration_without_signal_is_named_not_ranked():
    groups = groups_of({"A": [1.0, 1.01, 0.99], "B": [2.0, 2.01, 1.99]})
    groups["C"] = [run("C", seed, heldout_bpb=0.5, **(LEARNED | {"heldout_builtin_web_loss": 4.0})) for seed in range(3)]
    family = Family(groups, PRIMARY)
    ranking, text = family.ranking()
    assert ranking.order == ["A", "B"] and "no signal, so not ranked: C" in text  # C's low bpb is not a win
    assert family.compare("A", "C") == (None, "no signal from C, so no conclusion")


def test_the_report_writes_baselines_and_old_runs_as_unknown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no metrics/judge_check.json here
    sizes = {"10K": 10_000, "100K": 100_000}
    baselines = LEARNED | {"heldout_loss": 3.2, "heldout_unigram_loss": 6.2, "heldout_bigram_loss": 4.2, "heldout_unigram_bpb": 2.8,
                           "heldout_bigram_bpb": 1.9, "benchmark_mean": 0.4, "benchmark_chance": 0.25, "training_tokens": 1000.0}
    results = [run(mix, seed, heldout_bpb=1.0 + i + seed / 100, **baselines) for i, mix in enumerate(["plan_40_30_30", "equal"]) for seed in range(3)]
    results += [run(f"{pool}-random", seed, "exp2", {"mix.pool": pool, "sample.strategy": "random"}, heldout_bpb=1.5 + seed / 100,
                    heldout_loss=3.3, tasks_arithmetic_accuracy=0.5, training_tokens=1000.0) for pool in sizes for seed in range(3)]
    definition = Definition.model_validate({"seeds": [0, 1, 2], "seed_params": ["train.seed"], "experiments": {
        "exp2": {"question": "Quality?", "grid": {"mix.pool": ["10K", "100K"], "sample.strategy": ["random"]}},
        "exp3": {"question": "Mix?", "grid": {"mix.strategy": ["plan_40_30_30", "equal"]}}}})
    text = markdown(definition, results, [], {}, "tiny", tmp_path, sizes)
    assert "Of the 12 runs, 6 show signal, 0 no signal and 6 are unknown" in text
    assert "| the 40/30/30 mix is optimal | by held-out bits/byte, the lowest held-out bits/byte is **plan_40_30_30**" in text
    assert text.count("| met |") == 1 and "| ~50K samples give 80% of the best | unigram baselines unknown" in text
    # a mix that has not run yet: no verdict on the whole experiment, and its answer says it is partial
    definition.experiments["exp3"].grid["mix.strategy"].append("web_heavy")
    partial = markdown(definition, results, [], {}, "tiny", tmp_path, sizes)
    assert "| the 40/30/30 mix is optimal | 2 of 3 configurations of exp3 have run (not yet: web_heavy) | not measured |" in partial
    assert "3. **Mix?** Partial: 2 of 3 configurations of exp3 have run (not yet: web_heavy). Among the mixes" in partial
    exp3 = {config: [r for r in results if r.run.config == config] for config in ("plan_40_30_30", "equal")}
    header = table(exp3)[0]
    assert "held-out bits/byte ↓ | unigram bits/byte | bigram bits/byte | held-out loss (nats/token) ↓ | unigram loss | bigram loss" in header
    categories = category_table(exp3)
    assert "| run | builtin_instruction model | builtin_instruction bigram | builtin_instruction unigram | builtin_web model |" in categories[3]
    assert categories[5].startswith("| plan_40_30_30 | 3.500 [3.500, 3.500] | 4.500 [4.500, 4.500] | 6.500 [6.500, 6.500] | 3.000 [3.000, 3.000] |")
    write_runs_csv(results, tmp_path / "runs.csv")
    rows = (tmp_path / "runs.csv").read_text().splitlines()
    assert "heldout_bigram_loss" in rows[0] and rows[0].endswith(",signal,signal_reasons") and rows[-1].endswith(",unknown,no n-gram baselines")
    plot_quality_vs_quantity(results, sizes, tmp_path / "quality.png")
    plot_mix(results, tmp_path / "mix.png")
    plot_loss_curves(results, ["exp2", "exp3"], tmp_path / "loss.png")
    for plot in ("quality", "mix", "loss"):
        assert (tmp_path / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"


def test_a_50k_pool_is_judged_by_its_share_of_the_best_gain_over_the_unigram_baseline():
    sizes = {"50K": 50_000, "1M": 1_000_000}
    gains = {"50K": 0.85, "1M": 1.0}  # bits/byte below each run's own unigram baseline of 3.0
    results = [run(f"{pool}-random", seed, "exp2", {"mix.pool": pool}, heldout_bpb=3.0 - gain, heldout_unigram_bpb=3.0, **LEARNED)
               for pool, gain in gains.items() for seed in range(3)]
    assert expected_pool(results, sizes) == ("50K records (between 50K and 50K); share of 1M-random's gain over the unigram baseline in "
                                             "held-out bits/byte, per pool: 50K 85% [85%, 85%], 1M 100% [100%, 100%]", "met")
    sizes = {"10K": 10_000, "30K": 30_000, "100K": 100_000}
    noisy = {"10K": [0.5, 0.55, 0.6], "30K": [0.75, 0.85, 0.95], "100K": [1.0, 1.0, 1.0]}  # 30K's interval straddles 80 %
    results = [run(f"{pool}-random", seed, "exp2", {"mix.pool": pool}, heldout_bpb=3.0 - gain, heldout_unigram_bpb=3.0, **LEARNED)
               for pool, values in noisy.items() for seed, gain in enumerate(values)]
    text, verdict = expected_pool(results, sizes)
    assert text.startswith("30K records (between 30K and 100K); ") and verdict == "met"  # 50K lies between
    old = [run(r.run.config, r.run.seed, "exp2", r.run.sets, heldout_bpb=r.metrics["heldout_bpb"], **LEARNED) for r in results]
    assert expected_pool(old, sizes)[1] == "not measured"  # no unigram baseline: no share
    one_pool = [r for r in results if r.run.sets["mix.pool"] == "10K"]
    assert expected_pool(one_pool, sizes) == ("only the 10K pool has runs with signal (10K-random): no second pool to compare", "no signal")


def test_exp2_answers_quality_at_equal_size_quantity_at_equal_strategy_and_each_capability():
    sizes = {"10K": 10_000, "1M": 1_000_000}
    bpb = {"10K-top_quality": [1.50, 1.52, 1.48], "10K-random": [1.51, 1.49, 1.53], "1M-random": [1.00, 1.01, 0.99]}
    facts = {"10K-top_quality": [0.5, 0.52, 0.48], "10K-random": [0.3, 0.31, 0.29], "1M-random": [0.3, 0.32, 0.28]}
    results = [run(config, seed, "exp2", {"mix.pool": config.split("-")[0], "sample.strategy": config.split("-")[1]}, heldout_bpb=value,
                   tasks_fact_recall_accuracy=facts[config][seed], tasks_fact_recall_items=200, **LEARNED)
               for config, values in bpb.items() for seed, value in enumerate(values)]
    lines, surprises = answer_quality(results, sizes)
    text = " ".join(lines)
    assert lines[0].startswith("At equal compute, the lowest held-out bits/byte is **1M-random**")
    assert "Curated against random at equal size (10K): 10K-top_quality 1.500 [1.450, 1.550] against 10K-random 1.510 [1.460, 1.560]" in text and "not significant" in lines[1]
    assert "More data at equal strategy (random): 1M-random 1.000 [0.975, 1.025] against 10K-random" in text
    assert "significant" in lines[3] and "not significant" not in lines[3]
    # by capability the curated sample leads fact recall, though it does not lead held-out bits/byte
    assert "fact recall: the highest fact recall is **10K-top_quality**" in text
    assert surprises == [f"The curated 10K did not beat the noisy 1M pool at equal compute ({lines[2].split('(', 1)[1][:-2]})."]


def test_welch_without_spread_or_with_one_seed():
    assert welch([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]).p == 1.0 and welch([0.0, 0.0], [1.0, 1.0]).p == 0.0
    one = welch([1.0], [2.0, 2.1])
    assert one.p == 1.0 and one.crosses_zero  # no noise estimate from one seed: never significant


def test_an_expectation_that_is_tied_or_not_met_is_a_surprise_and_one_not_measured_is_not():
    rows = [("the 40/30/30 mix is optimal", "plan_40_30_30 0.844 tied with web_heavy", "tied"),
            ("perplexity < 20", "12.0", "met"), ("~50K samples give 80% of the best", "exp2 has not run", "not measured"),
            ("zero-cost metrics correlate > 0.8", "0.5", "not met")]
    assert unexpected(rows) == ["The research plan expected the 40/30/30 mix is optimal; measured: tied (plan_40_30_30 0.844 tied with web_heavy).",
                                "The research plan expected zero-cost metrics correlate > 0.8; measured: not met (0.5)."]
    assert unexpected(rows[1:3]) == []


def test_a_run_scored_before_the_open_answer_chance_gets_the_current_chance_and_loses_a_signal_it_owed_to_it():
    reference = {"tasks_fact_recall_chance": 0.1477, "tasks_fact_recall_items": 40, "tasks_string_chance": 0.1, "tasks_string_items": 40,
                 "tasks_format_chance": 0.35, "tasks_format_items": 40}
    old = {**reference, "tasks_string_chance": 0.0, "tasks_fact_recall_accuracy": 0.15, "tasks_format_accuracy": 0.3,
           "tasks_string_accuracy": 0.1, "heldout_builtin_web_loss": 3.0, "heldout_builtin_web_bigram_loss": 4.0}
    assert signal(old).label == SIGNAL  # string 0.1 against a chance of 0
    rescored = current_chance(old, reference)
    assert rescored["tasks_string_chance"] == 0.1 and signal(rescored).label == NO_SIGNAL
    other_problems = {**old, "tasks_string_items": 20}
    assert current_chance(other_problems, reference) == other_problems  # not the same problems: left as it was scored


def test_the_distilled_and_human_arms_are_compared_where_both_learned_with_holm_over_the_metrics():
    """Both never saw the world (no signal by the rule), but both beat their bigram on the instruction held-out set."""
    def arm(config, bpb, preference, knows_instructions=True):
        return [run(config, seed, "exp1", heldout_clean_instruction_bpb=value, heldout_clean_instruction_bigram_bpb=4.0,
                    heldout_clean_instruction_loss=5.0 if knows_instructions else 7.0, heldout_clean_instruction_bigram_loss=6.0,
                    heldout_builtin_web_loss=9.0, heldout_builtin_web_bigram_loss=8.0, judge_preference_rank_length_controlled=p,
                    judge_coherence_score=0.5, judge_relevance_score=0.1 * seed)
                for seed, (value, p) in enumerate(zip(bpb, preference))]
    distilled, human = arm("distilled", [3.00, 3.01, 2.99], [0.2, 0.3, 0.1]), arm("human", [3.60, 3.62, 3.58], [0.2, 0.25, 0.15])
    assert all(signal(r.metrics).label == NO_SIGNAL for r in distilled + human)
    text = answer_distillation(distilled + human)
    raw = [welch([3.00, 3.01, 2.99], [3.60, 3.62, 3.58]).p, welch([0.2, 0.3, 0.1], [0.2, 0.25, 0.15]).p, 1.0, 1.0]
    assert "Holm over these 4 metrics" in text and "clean instruction held-out bits/byte 3.000 [" in text
    assert f"Holm p = {holm(raw)[0]:.3g}: significant" in text and "Verdict: significant on clean instruction held-out bits/byte." in text
    # a run that did not learn the instruction set either: only the replies are compared, and they tie
    human[0] = arm("human", [3.6], [0.2], knows_instructions=False)[0]
    text = answer_distillation(distilled + human)
    assert "Holm over these 3 metrics" in text and "not on held-out loss" in text and "held-out bits/byte 3.000" not in text
    assert text.endswith("Verdict: no significant difference on any: at this scale the teacher's data and human text are tied.")
    assert answer_distillation(distilled) == ""  # no human arm: nothing to compare
