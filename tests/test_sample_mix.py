"""sample and mix stages on a small real pipeline: built-in records, dedup,
quality and the tokenizer run for real once, then each test samples and mixes."""

import json
import shutil
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import stage
from synthtrain.params import ParamsError, parse_params
from synthtrain.records import SCHEMA
from synthtrain.sampling import quotas
from synthtrain.tokens.encoding import count_tokens, load_tokenizer

SIZES = {"small": 400, "large": 1500}


def write_params(root, sample=None, mix=None, sources=None):
    params = {"sources": {"builtin": {"kind": "builtin", "max_samples": 3000}, **(sources or {})},
              "download": {"workers": 2},
              "quality": {"classifier": {"train_records": 500}, "reference_lm": {"train_records": 1000, "calibration_records": 100}},
              "sample": {"sizes": SIZES, **(sample or {})},
              "mix": {"pool": "large", "tokens": 60_000, **(mix or {})}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    write_params(root)
    for args in (("stages.download", "builtin"), ("stages.builtin_eval",), ("stages.dedup",), ("stages.quality_score",),
                 ("stages.quality",), ("stages.train_tokenizer",)):
        stage(root, *args)
    return root


@pytest.fixture
def workdir(upstream, tmp_path):
    for part in ("data/quality", "models", "data/heldout"):
        shutil.copytree(upstream / part, tmp_path / part)
    return tmp_path


def metrics(root, name):
    return json.loads((root / f"metrics/{name}.json").read_text())


def pool_of(root):
    scored = pq.read_table(root / "data/quality/scored.parquet", columns=["id", "category", "quality", "reject_reason"]).to_pylist()
    return [r for r in scored if r["reject_reason"] in (None, "below_threshold")]


def test_quotas_are_proportional_and_sum_to_the_size():
    assert quotas({"a": 500, "b": 300, "c": 200}, 10) == {"a": 5, "b": 3, "c": 2}
    assert sum(quotas({"a": 1, "b": 1, "c": 1}, 100).values()) == 100
    assert quotas({"a": 2, "b": 1}, 3) == {"a": 2, "b": 1}


@pytest.mark.parametrize("strategy", ["top_quality", "random", "diverse"])
def test_every_strategy_gives_the_exact_size_with_the_pool_category_shares(workdir, strategy):
    write_params(workdir, sample={"strategy": strategy, "clusters": 8})
    stage(workdir, "stages.sample", "small")
    rows = pq.read_table(workdir / "data/sample/small.parquet").to_pylist()
    assert len(rows) == SIZES["small"] == len({r["id"] for r in rows})
    pool = pool_of(workdir)
    for category in ("instruction", "knowledge", "web"):
        share = sum(r["category"] == category for r in pool) / len(pool)
        assert abs(sum(r["category"] == category for r in rows) - share * SIZES["small"]) <= 1
    result = metrics(workdir, "sample/small")
    assert result["records"] == SIZES["small"] and not result["short"] and result["strategy"] == strategy
    tokens, _ = count_tokens(load_tokenizer(workdir / "models/tokenizer"), pq.read_table(workdir / "data/sample/small.parquet"), True)
    assert result["tokens"] == int(tokens.sum())
    # what the strategy chose within each category, counted from the rows written
    families = Counter(f"{r['category']}/{json.loads(r['meta'])['family']}" for r in rows)
    assert result["by_family"] == dict(sorted(families.items())) and sum(families.values()) == SIZES["small"]


def test_top_quality_takes_the_best_of_each_category_and_random_does_not(workdir):
    write_params(workdir)
    stage(workdir, "stages.sample", "small")
    chosen = {r["id"] for r in pq.read_table(workdir / "data/sample/small.parquet", columns=["id"]).to_pylist()}
    pool = pool_of(workdir)
    for category in ("instruction", "knowledge", "web"):
        inside = [r["quality"] for r in pool if r["category"] == category and r["id"] in chosen]
        outside = [r["quality"] for r in pool if r["category"] == category and r["id"] not in chosen]
        assert min(inside) >= max(outside)
    top_quality = metrics(workdir, "sample/small")
    write_params(workdir, sample={"strategy": "random"})
    stage(workdir, "stages.sample", "small")
    random = metrics(workdir, "sample/small")
    assert top_quality["flaw_rate"] < random["flaw_rate"]  # the ground truth agrees that quality ranks well
    mean = lambda m: np.mean([e["mean_quality"] for e in m["by_category"].values()])  # noqa: E731
    assert mean(top_quality) > mean(random)


def test_a_pool_smaller_than_the_size_fails_unless_allowed(workdir):
    write_params(workdir, sample={"sizes": {"huge": 50_000}}, mix={"pool": "huge"})
    result = stage(workdir, "stages.sample", "huge", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "sample.sizes.huge = 50,000 but the pool has only" in result.stderr
    write_params(workdir, sample={"sizes": {"huge": 50_000}, "allow_short": True}, mix={"pool": "huge"})
    result = stage(workdir, "stages.sample", "huge")
    assert "the pool has only" in result.stderr
    short = metrics(workdir, "sample/huge")
    assert short["short"] and short["records"] == short["pool"] == len(pool_of(workdir)) < 50_000


@pytest.fixture
def pooled(workdir):
    write_params(workdir)
    stage(workdir, "stages.sample", "large")
    return workdir


def test_mix_hits_the_token_shares(pooled):
    write_params(pooled, mix={"instruction": 0.5, "knowledge": 0.3, "web": 0.3})
    output = stage(pooled, "stages.mix").stderr
    result = metrics(pooled, "mix")
    assert "instruction 0.45" in output
    rows = pq.read_table(pooled / "data/mix/train.parquet")
    tokens, _ = count_tokens(load_tokenizer(pooled / "models/tokenizer"), rows, True)
    assert result["tokens"] == int(tokens.sum()) <= 60_000 and result["records"] == rows.num_rows
    longest = int(tokens.max())
    for category, weight in {"instruction": 0.5, "knowledge": 0.3, "web": 0.3}.items():
        entry = result["by_category"][category]
        assert entry["requested_share"] == round(weight / 1.1, 4)
        assert abs(entry["tokens"] - 60_000 * weight / 1.1) <= longest  # whole records, none over budget
        assert entry["effective_share"] == round(entry["tokens"] / result["tokens"], 4)


def test_a_short_category_is_repeated_up_to_max_epochs_then_fails_or_scales_down(pooled):
    write_params(pooled, mix={"tokens": 400_000, "max_epochs": 50})
    stage(pooled, "stages.mix")
    result = metrics(pooled, "mix")
    assert result["repeated_records"] > 0 and all(e["passes"] > 1 for e in result["by_category"].values())
    available = result["by_category"]["web"]["available_tokens"]
    write_params(pooled, mix={"tokens": 400_000, "max_epochs": 1})
    failed = stage(pooled, "stages.mix", check=False)
    assert failed.returncode == 1 and "mix.max_epochs" in failed.stderr and "mix.scale_down: true" in failed.stderr
    write_params(pooled, mix={"tokens": 400_000, "max_epochs": 1, "scale_down": True})
    assert "scaling the budget down" in stage(pooled, "stages.mix").stderr
    scaled = metrics(pooled, "mix")
    assert scaled["scale"] < 1 and scaled["repeated_records"] == 0
    assert scaled["by_category"]["web"]["tokens"] <= available


def test_a_null_budget_takes_one_epoch_of_the_pool(pooled):
    write_params(pooled, mix={"tokens": None, "strategy": "instruction_only"})  # the strategy's shares give way to the pool's
    stage(pooled, "stages.mix")
    pool = pq.read_table(pooled / "data/sample/large.parquet")
    mixed = pq.read_table(pooled / "data/mix/train.parquet")
    assert sorted(mixed.column("id").to_pylist()) == sorted(pool.column("id").to_pylist())  # every record, once
    result = metrics(pooled, "mix")
    tokens, _ = count_tokens(load_tokenizer(pooled / "models/tokenizer"), pool, True)
    assert result["requested_tokens"] == result["tokens"] == int(tokens.sum()) and result["repeated_records"] == 0
    assert all(entry["passes"] == 1.0 for entry in result["by_category"].values())


def test_named_strategies_and_the_curriculum_order(pooled):
    write_params(pooled, mix={"strategy": "instruction_only"})
    stage(pooled, "stages.mix")
    assert set(pq.read_table(pooled / "data/mix/train.parquet").column("category").to_pylist()) == {"instruction"}
    write_params(pooled, mix={"strategy": "curriculum"})
    stage(pooled, "stages.mix")
    categories = pq.read_table(pooled / "data/mix/train.parquet").column("category").to_pylist()
    switch = categories.index("instruction")
    assert set(categories[:switch]) == {"knowledge", "web"} and set(categories[switch:]) == {"instruction"}


def test_mix_sources_train_on_a_source_outside_the_pool_in_its_own_shares(pooled):
    # what dedup writes for a source with pool: false: its kept records, outside the samples
    outside = pq.read_table(pooled / "data/sample/large.parquet").slice(0, 300).select(SCHEMA.names)
    (pooled / "data/dedup/sources").mkdir(parents=True)
    pq.write_table(outside, pooled / "data/dedup/sources/human.parquet")
    tokens, _ = count_tokens(load_tokenizer(pooled / "models/tokenizer"), outside, True)
    human = {"human": {"kind": "local", "path": "human.jsonl", "category": "web", "max_samples": 300, "pool": False}}
    write_params(pooled, mix={"sources": ["human"], "strategy": "natural", "tokens": 2 * int(tokens.sum()), "max_epochs": 3}, sources=human)
    stage(pooled, "stages.mix")
    result = metrics(pooled, "mix")
    assert result["pool"] == "human" and result["tokens"] <= 2 * int(tokens.sum())
    assert set(pq.read_table(pooled / "data/mix/train.parquet").column("id").to_pylist()) <= set(outside.column("id").to_pylist())
    for category, entry in result["by_category"].items():  # natural: every category twice over, in the source's own shares
        assert entry["available_tokens"] == int(tokens[np.array(outside.column("category").to_pylist()) == category].sum())
        assert abs(entry["passes"] - 2) < 0.05 and abs(entry["requested_share"] - entry["available_tokens"] / tokens.sum()) < 1e-4


def test_the_same_params_give_the_same_mix(pooled):
    write_params(pooled)
    stage(pooled, "stages.mix")
    first = (pooled / "data/mix/train.parquet").read_bytes()
    stage(pooled, "stages.mix")
    assert (pooled / "data/mix/train.parquet").read_bytes() == first


@pytest.mark.parametrize("mix, message", [
    ({"instruction": 0, "knowledge": 0, "web": 0}, "the weights instruction, knowledge and web are all 0"),
    ({"web": -1}, "mix.web = -1: Input should be greater than or equal to 0"),
    ({"strategy": "webby"}, "mix.strategy = 'webby': Input should be 'custom', 'natural', 'instruction_only'"),
    ({"sources": ["b"]}, "mix.sources has 'b', which is not a source with pool: false (allowed: none: set pool: false on a source)"),
    ({"pool": "5K"}, "mix.pool = '5K' is not a sample; choose one of 10K, 30K, 100K, 300K, 1M (sample.sizes)"),
])
def test_bad_mix_params_fail_naming_the_key(mix, message):
    with pytest.raises(ParamsError) as error:
        parse_params({"sources": {"b": {"kind": "builtin"}}, "mix": mix})
    assert message in str(error.value), str(error.value)
