"""The experiment definitions (synthtrain/experiments.py, research/experiments.py) and the report's correlations
(research/report.py); its comparisons and baselines are in test_report_statistics.py, the queue, --run-all and the
report end to end in test_pipeline.py."""

import os
import re

import numpy as np
import pytest
import yaml

from conftest import REPO
from research.experiments import link_siblings, main, print_estimate
from synthtrain.experiments import Definition, ExperimentRun, check_keys, expand, format_value, load_definition, run_params, unique_runs
from synthtrain.params import StageError, load_params
from research.report import correlations, Result, spearman


@pytest.fixture
def in_repo():
    cwd = os.getcwd()
    os.chdir(REPO)
    yield REPO
    os.chdir(cwd)


def test_the_cpu_profile_has_every_experiment_with_three_seeds_and_shares_equal_runs(in_repo):
    definition = load_definition("cpu")
    runs = expand(definition)
    configs = {(run.experiment, run.config) for run in runs}
    assert {experiment for experiment, _ in configs} == {"exp1", "exp2", "exp3", "exp4"}
    for experiment, config in configs:
        seeds = sorted(r.seed for r in runs if (r.experiment, r.config) == (experiment, config))
        assert seeds == ([0] if experiment == "exp4" else [0, 1, 2])  # exp4: a population for correlations, not a comparison
    exp2 = {r.config for r in runs if r.experiment == "exp2"}
    assert exp2 == {"10K-top_quality", "10K-random", "1M-random"}  # quality at equal size, quantity at equal strategy
    # the curated and the random 10K differ in the sample strategy alone, the two random samples in the pool alone
    exp2_sets = {r.config: r.sets for r in runs if r.experiment == "exp2" and r.seed == 0}
    differ = lambda a, b: {key for key in exp2_sets[a].keys() | exp2_sets[b].keys() if exp2_sets[a].get(key) != exp2_sets[b].get(key)}
    assert differ("10K-top_quality", "10K-random") == {"sample.strategy"}
    assert differ("10K-random", "1M-random") == {"mix.pool"}
    assert len({r.config for r in runs if r.experiment == "exp3"}) == 6
    for experiment in ("exp1", "exp2", "exp3"):
        assert len({r.sets["train.tokens"] for r in runs if r.experiment == experiment}) == 1  # equal compute within an experiment
    # exp1's two arms are exp3 runs: the same sets, so the same name, trained once
    shared = {(r.experiment, r.config): r.name for r in runs if r.seed == 0}
    assert shared["exp3", "instruction_only"] == shared["exp1", "instruction_only"] == "exp1-instruction_only-s0"
    assert shared["exp3", "plan_40_30_30"] == "exp1-mixed-s0"
    assert [r.name for r in expand(definition, ["exp3"]) if r.config == "plan_40_30_30"] == [f"exp1-mixed-s{seed}" for seed in (0, 1, 2)]
    assert len(unique_runs(runs)) == len(runs) - 2 * 3 == len({r.name for r in runs})
    main(["list", "--profile", "cpu"])  # every -S key exists in params.yaml


def test_a_run_sets_profile_then_fixed_then_its_own_then_the_seed():
    definition = Definition.model_validate({
        "profile": {"train.model": "1M", "mix.pool": "10K"}, "seeds": [3], "seed_params": ["train.seed", "mix.seed"],
        "experiments": {"e": {"question": "?", "grid": {"mix.pool": ["a", "b"], "sample.strategy": ["x"]},
                              "fixed": {"train.model": "5M"}, "runs": {"epoch": {"mix.tokens": None}}}}})
    runs = expand(definition)
    assert [r.name for r in runs] == ["e-a-x-s3", "e-b-x-s3", "e-epoch-s3"]
    two_seeds = expand(definition.model_copy(update={"seeds": [3, 4]}))
    assert [r.name for r in two_seeds] == ["e-a-x-s3", "e-b-x-s3", "e-epoch-s3", "e-a-x-s4", "e-b-x-s4", "e-epoch-s4"]  # seed by seed
    assert runs[1].sets == {"train.model": "5M", "mix.pool": "b", "sample.strategy": "x", "train.seed": 3, "mix.seed": 3}
    assert runs[2].command()[:6] == ["dvc", "exp", "run", "--queue", "-n", "e-epoch-s3"]
    assert "mix.tokens=null" in runs[2].command() and format_value(True) == "true" and format_value(0.5) == "0.5"
    with pytest.raises(StageError, match="unknown experiment nope; the definition has e"):
        expand(definition, ["nope"])


def test_a_run_adds_a_source_outside_the_pool_with_a_plus_key(in_repo):
    params = load_params(REPO / "params.yaml")
    human = {"kind": "local", "path": "../shared/data/human/c4-sample.jsonl", "category": "web", "max_samples": 10, "pool": False}
    run = ExperimentRun(experiment="e", name="e-h-s0", config="h", seed=0, sets={"+sources.human": human, "mix.sources": ["human"]})
    check_keys([run], params)
    own = run_params(run, params)
    assert not own.sources["human"].pool and own.mix.sources == ["human"] and own.sources["builtin"] == params.sources["builtin"]
    command = run.command()  # DVC's Hydra override grammar: +key appends, strings quoted inside a mapping or list
    assert "+sources.human={kind: 'local', path: '../shared/data/human/c4-sample.jsonl', category: 'web', max_samples: 10, pool: false}" in command
    assert "mix.sources=['human']" in command
    for sets, message in (({"+mix.pool": "10K"}, "-S +mix.pool: params.yaml has it already: drop the +"),
                          ({"+nope.x": 1}, "-S +nope.x: params.yaml has no key 'nope' there")):
        with pytest.raises(StageError, match=re.escape(message)):
            check_keys([run.model_copy(update={"sets": sets})], params)
    human_arm = [r for r in expand(load_definition("cpu"), ["exp1"]) if r.config == "human"]
    assert len(human_arm) == 3 and all(not run_params(r, params).sources["human_web"].pool for r in human_arm)


def test_bad_definitions_and_keys_fail_with_the_name(in_repo, tmp_path, monkeypatch):
    with pytest.raises(StageError, match="experiments/nope.yaml is missing; the profiles are: cpu, gpu"):
        load_definition("nope")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments/bad.yaml").write_text(yaml.safe_dump({"seeds": [], "seed_params": ["train.seed"], "experiments": {"e": {"question": "?"}}}))
    with pytest.raises(StageError, match="seeds: List should have at least 1 item.*experiments.e: Value error, give a grid or runs"):
        load_definition("bad")
    (tmp_path / "experiments/typo.yaml").write_text(yaml.safe_dump(
        {"seeds": [0], "seed_params": ["train.seed"], "experiments": {"e": {"question": "?", "runs": {"r": {"train.lrr": 1}}}}}))
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    with pytest.raises(StageError, match="run e-r-s0: -S train.lrr: params.yaml has no such key"):
        main(["queue", "--profile", "typo", "--dry-run"])


def test_queued_runs_find_sibling_directories(tmp_path, monkeypatch):
    (tmp_path / "shared/data").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    (tmp_path / "repo/params.yaml").write_text(yaml.safe_dump({"eval": {"benchmarks": {"b": {"path": "../shared/data/b.jsonl"}}}}))
    links = link_siblings(tmp_path / "repo/params.yaml", [])
    assert [str(link) for link in links] == [".dvc/tmp/exps/shared"]
    # a queued run's workspace is .dvc/tmp/exps/<tmp>/: its ../shared is now the real one
    (tmp_path / "repo/.dvc/tmp/exps/tmp123").mkdir()
    assert (tmp_path / "repo/.dvc/tmp/exps/tmp123/../shared/data").resolve() == (tmp_path / "shared/data").resolve()
    assert link_siblings(tmp_path / "repo/params.yaml", []) == []  # already there


def test_the_gpu_profile_validates_and_its_estimate_fits_the_plan(in_repo, capsys):
    params = load_params(REPO / "params-gpu.yaml")
    assert params.train.model == "125M" and {s.kind for s in params.sources.values()} == {"hub", "builtin"}
    definition = load_definition("gpu")
    assert {r.sets.get("train.model") for r in expand(definition)} == {"125M", "500M"}
    total = print_estimate(definition, expand(definition), params)
    printed = capsys.readouterr().out
    assert 0 < total <= 50 and "within the plan's $50" in printed and printed.count(" runs, ") == 3


def test_spearman_and_its_bootstrap_interval():
    rng = np.random.default_rng(0)
    x = np.arange(20.0)
    rho, low, high = spearman(x, x + rng.normal(0, 3, 20), rng)
    assert 0.7 < rho <= 1 and low <= rho <= high <= 1
    assert spearman(x, np.zeros(20), rng) is None  # a constant reference has no ranking
    rho, _, _ = spearman(x, -x, rng)
    assert rho == -1


def test_correlations_negate_lower_is_better_metrics():
    results = [Result(run=ExperimentRun(experiment="e", name=f"e-{i}-s0", config=str(i), seed=0, sets={}), rev="",
                      metrics={"heldout_bpb": 3 - i / 10, "tasks_accuracy": i / 10, "blimp_acc": 0.5}) for i in range(10)]
    table = correlations(results)
    assert table["heldout_bpb", "tasks_accuracy"][0] == pytest.approx(1.0)  # lower bpb, higher accuracy: agreement
    assert table["heldout_bpb", "blimp_acc"] is None and table["rougeL", "tasks_accuracy"] is None
    # seven models, each also read by a second experiment: still seven models, too few to rank
    shared = [Result(r.run.model_copy(update={"experiment": "f"}), r.rev, r.metrics) for r in results[:7]]
    assert all(value is None for value in correlations(results[:7] + shared).values())


def test_the_docs_gpteacher_override_gives_valid_params(tmp_path):
    from dvc.utils.hydra import apply_overrides

    readme = (REPO / "docs/experiments.md").read_text()
    overrides = re.findall(r"-S '([^']+)'", readme.split("**exp1 on GPT-4-generated data, offline.**")[1].split("```", 2)[1])
    assert any(o.startswith("+sources.gpteacher=") for o in overrides), overrides
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    apply_overrides(str(tmp_path / "params.yaml"), overrides)
    params = load_params(tmp_path / "params.yaml")
    assert params.sources["gpteacher"].kind == "local" and params.mix.strategy == "instruction_only"
