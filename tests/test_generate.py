"""kind: generate sources (synthtrain/synthesis) with a tiny local teacher: the three
methods, interrupt and resume, preference pairs in TRL's columns, bad input,
and the collapse driver's pieces (research/collapse.py)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from datasets import load_dataset
from rouge_score import rouge_scorer

from conftest import REPO, SHARED_DATA, build_teacher, split_builtin_records, stage
from research.collapse import CollapseRun, collapse, data_metrics, plan, rare_units, training_texts
from synthtrain.generation import Generator, load_model, use_faster_precision
from synthtrain.precision import PRECISIONS, faster_dtype
from synthtrain.sources.download import download
from synthtrain.synthesis.self_instruct import Pool, rouge_l
from synthtrain.synthesis.generate import SHARDS_ENV, generate, read_seeds
from synthtrain.synthesis.preferences import preferences
from synthtrain.records import RecordWriter, RejectWriter
from synthtrain.params import TEACHER_NAMES, TEACHERS, Collapse, GenerateSource, StageError, TeacherSampling, parse_params
from synthtrain.tokens.bpe import train_bpe

SEEDS = str(SHARED_DATA / "human/self-instruct-seed-tasks.jsonl")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A teacher under teacher/, and the records and judges the preferences stage reads."""
    root = tmp_path_factory.mktemp("generate")
    build_teacher(root / "teacher")
    split_builtin_records(root, 2000, 1700)
    (root / "params.yaml").write_text(yaml.safe_dump({"sources": {"builtin": {"kind": "builtin"}},
                                                      "eval": {"judges": {"encoder": "hashing", "train_pairs": 300}}}))
    stage(root, "stages.judges")
    return root


def source(method: str, **settings) -> dict:
    return {"kind": "generate", "teacher": "teacher", "method": method, "n": 30, "shard_prompts": 16,
            "sampling": {"max_new_tokens": 24}, **({"seed_file": SEEDS} if method != "magpie" else {}), **settings}


def run(workdir: Path, sources: dict, name: str, **sections) -> dict:
    """The download stage in this process (the pipeline test runs it under dvc), in workdir."""
    (workdir / "params.yaml").write_text(yaml.safe_dump({"sources": sources, **sections}))
    cwd = os.getcwd()
    os.chdir(workdir)  # the teacher and seed paths are relative to the project, as in params.yaml
    try:
        return download(parse_params({"sources": sources, **sections}), name)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("method", ["self_instruct", "evol_instruct", "magpie"])
def test_each_method_keeps_n_records_with_provenance_and_accounts_for_every_prompt(workdir, method):
    run(workdir, {method: source(method)}, method)
    metrics = json.loads((workdir / f"metrics/download/{method}.json").read_text())
    assert metrics["kept"] == 30 and metrics["read"] == metrics["kept"] + metrics["rejected"] > 30
    records = pq.read_table(workdir / f"data/raw/{method}.parquet").to_pylist()
    assert len(records) == 30 and all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in records)
    meta = json.loads(records[0]["meta"])
    assert {"teacher", "teacher_weights", "precision", "method", "template", "sampling", "seed"} <= set(meta) and meta["method"] == method
    assert meta["precision"] == metrics["precision"] and metrics["precision"] in {"fp32", "bf16"}
    assert meta["sampling"] == {"max_new_tokens": 24, "batch_size": 32, "do_sample": True, "temperature": 0.7, "top_p": 0.95}
    rejects = pq.read_table(workdir / f"data/rejects/download-{method}.parquet").to_pylist()
    assert len(rejects) == metrics["rejected"]
    reasons = {r["reason"] for r in rejects}
    assert {"empty_response", "capped_response"} <= reasons  # the tiny teacher stops early and runs on, by design
    if method == "magpie":
        assert meta["template"] == "<|im_start|>user\n"
    if method == "evol_instruct":
        assert meta["evolution"] in {"constraints", "deepen", "concretizing", "reasoning", "breadth"} and meta["depth"] >= 1
    if method == "self_instruct":
        assert "instruction_length" in reasons  # the paper's 3-150 word bounds


def test_an_interrupted_run_resumes_and_writes_the_same_records(workdir, tmp_path):
    settings = {"resumed": source("magpie", n=160, shard_prompts=8)}
    run(workdir, settings, "resumed")
    uninterrupted = pq.read_table(workdir / "data/raw/resumed.parquet")
    shards = next((workdir / "data/generate").glob("resumed-*"))
    for shard in sorted(shards.glob("shard-*.parquet"))[3:]:
        shard.unlink()  # as if killed after the third shard; then a real kill, mid-run
    process = subprocess.Popen([sys.executable, "-m", "stages.download", "resumed"], cwd=workdir,
                               env=dict(os.environ, PYTHONPATH=str(REPO)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not (shards / "shard-00005.parquet").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be interrupted"
    run(workdir, settings, "resumed")
    metrics = json.loads((workdir / "metrics/download/resumed.json").read_text())
    assert metrics["shards_resumed"] >= 5 and metrics["kept"] == 160
    assert pq.read_table(workdir / "data/raw/resumed.parquet").equals(uninterrupted)


def test_the_teacher_writes_in_the_precision_asked_and_in_bf16_only_where_it_is_clearly_faster(workdir):
    model, _ = load_model(workdir / "teacher")
    assert use_faster_precision(model, 4, "bf16") == "bf16" and model.dtype == torch.bfloat16
    assert use_faster_precision(model, 4, "fp32") == "fp32" and model.dtype == torch.float32
    assert model.dtype == PRECISIONS[use_faster_precision(model, 4)]  # timed here: either, and the model is cast to it

    def forward(bf16_seconds: float, fp32_seconds: float = 0.05):
        return lambda: time.sleep(bf16_seconds if next(model.parameters()).dtype == torch.bfloat16 else fp32_seconds)

    # 4 % faster is within the margin: a close timing keeps fp32, so it cannot flip from one run to the next
    model.to(torch.float32)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert faster_dtype(model, forward(0.048)) == torch.float32 and faster_dtype(model, forward(0.01)) == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the timing leaves the model in fp32
    # with the weights it had, not rounded by the cast to bf16 and back
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())


def test_a_resumed_run_goes_on_in_the_precision_its_shards_were_written_in(workdir, tmp_path):
    # the tiny teacher times close in both, so "auto" could pick either; shards written in bf16 decide it
    settings = GenerateSource.model_validate(source("magpie", n=24, shard_prompts=8))
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        def generate_once(precision: str, name: str) -> dict:
            with RecordWriter(tmp_path / f"{name}.parquet") as records, RejectWriter(tmp_path / f"{name}-rejects.parquet", "precision") as rejects:
                return generate(settings, "precision", 200_000, records, rejects, tmp_path, precision=precision)

        first = generate_once("bf16", "first")
        resumed = generate_once("auto", "resumed")
    finally:
        os.chdir(cwd)
    assert first["precision"] == resumed["precision"] == "bf16" and resumed["shards_resumed"] == len(list(tmp_path.glob("data/generate/precision-*/shard-*"))) >= 3
    assert pq.read_table(tmp_path / "resumed.parquet").equals(pq.read_table(tmp_path / "first.parquet"))


def test_new_settings_do_not_resume_old_shards(workdir):
    run(workdir, {"again": source("magpie", n=10)}, "again")
    run(workdir, {"again": source("magpie", n=10, seed=1)}, "again")
    assert len(list((workdir / "data/generate").glob("again-*"))) == 1  # the other settings' shards are gone
    assert json.loads((workdir / "metrics/download/again.json").read_text())["shards_resumed"] == 0


def test_shards_go_where_the_environment_says_and_a_rerun_resumes_them_there(workdir, tmp_path, monkeypatch):
    # research.experiments points DVC's temporary workspaces at the main workspace's shards this way
    monkeypatch.setenv(SHARDS_ENV, str(tmp_path / "main-workspace-shards"))
    run(workdir, {"elsewhere": source("magpie", n=24, shard_prompts=8)}, "elsewhere")
    first = pq.read_table(workdir / "data/raw/elsewhere.parquet")
    shards = list((tmp_path / "main-workspace-shards").glob("elsewhere-*/shard-*.parquet"))
    assert len(shards) >= 3 and not list((workdir / "data/generate").glob("elsewhere-*"))
    run(workdir, {"elsewhere": source("magpie", n=24, shard_prompts=8)}, "elsewhere")
    assert json.loads((workdir / "metrics/download/elsewhere.json").read_text())["shards_resumed"] == len(shards)
    assert pq.read_table(workdir / "data/raw/elsewhere.parquet").equals(first)


def test_preference_pairs_have_the_columns_trl_reads(workdir, monkeypatch):
    sources = {"pairs": source("magpie", preferences={"temperatures": [0.3, 1.0, 1.7], "teacher_judge": True})}
    run(workdir, sources, "pairs", eval={"judges": {"encoder": "hashing", "train_pairs": 300}})
    monkeypatch.chdir(workdir)  # the stage runs in the project, where the teacher's path is relative to
    preferences(parse_params({"sources": sources}))
    metrics = json.loads((workdir / "metrics/preferences.json").read_text())["sources"]["pairs"]
    assert metrics["prompts"] == 30 == metrics["pairs"] + metrics["rejected"] and metrics["pairs"] > 10
    # TRL DPOTrainer: "prompt", "chosen", "rejected"; conversational: lists of {"role", "content"} messages
    dataset = load_dataset("json", data_files=str(workdir / "data/preferences/pairs.jsonl"), split="train")
    assert dataset.column_names == ["prompt", "chosen", "rejected"] and len(dataset) == metrics["pairs"]
    for pair in dataset:
        assert [m["role"] for m in pair["prompt"]] == ["user"]
        assert [m["role"] for m in pair["chosen"]] == [m["role"] for m in pair["rejected"]] == ["assistant"]
        assert pair["chosen"][0]["content"] and pair["rejected"][0]["content"] and pair["chosen"] != pair["rejected"]
    assert metrics["judges"] == ["coherence", "relevance", "teacher"] and sum(metrics["chosen_by_temperature"].values()) == metrics["pairs"]


# --- bad input -----------------------------------------------------------------------
def test_a_missing_teacher_fails_with_the_path(workdir):
    with pytest.raises(StageError, match=r"models/nothing holds no model.*sources\.gen\.teacher must be"):
        run(workdir, {"gen": source("magpie", teacher="models/nothing")}, "gen")


def test_a_teacher_that_is_not_a_causal_lm_fails_with_the_path(workdir):
    from transformers import T5Config, T5ForConditionalGeneration

    encoder_decoder = workdir / "t5"
    T5ForConditionalGeneration(T5Config(vocab_size=1024, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)).save_pretrained(encoder_decoder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (workdir / "teacher" / name).exists():
            (encoder_decoder / name).write_bytes((workdir / "teacher" / name).read_bytes())
    with pytest.raises(StageError, match=f"{encoder_decoder} is not a causal language model"):
        run(workdir, {"gen": source("magpie", teacher=str(encoder_decoder))}, "gen")


@pytest.mark.parametrize("name,content,supported", [
    ("seeds.csv", "instruction,output\nSay hi,hi\n", "(expected one of .jsonl, .ndjson, .json, .parquet, .txt, .md; format: text reads any file"),
    ("seeds.jsonl", '{"question": "Say hi"}\n', "supported formats: alpaca, sharegpt, messages, prompt_completion, self_instruct, text, "
     "preference, hh_rlhf, sharegpt_preference, turns;")])
def test_a_seed_file_of_an_unknown_type_or_format_fails_saying_what_is_supported(workdir, name, content, supported):
    (workdir / name).write_text(content)
    with pytest.raises(StageError) as error:
        run(workdir, {"gen": source("self_instruct", seed_file=name)}, "gen")
    assert str(error.value).startswith(f"seed_file: {name}") and supported in str(error.value)
    assert str(error.value).count("supported formats") <= 1  # said once


def test_zero_valid_records_fail_with_the_filter_counts(workdir):
    with pytest.raises(StageError, match=r"10 generations left no valid record after filtering \(rejected by reason: \{'capped_instruction': \d+"):
        run(workdir, {"gen": source("magpie", n=5, max_attempts=2, sampling={"max_new_tokens": 1})}, "gen")


def test_the_stage_reports_a_bad_teacher_in_one_line(workdir):
    (workdir / "params.yaml").write_text(yaml.safe_dump({"sources": {"gen": source("magpie", teacher="nowhere/teacher")}}))
    result = stage(workdir, "stages.download", "gen", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: nowhere/teacher holds no model: no such directory, and no hub model of that id in the local cache" in result.stderr


def test_seeded_methods_need_a_seed_file():
    with pytest.raises(Exception, match="method evol_instruct needs seed_file"):
        parse_params({"sources": {"gen": {"kind": "generate", "teacher": "t", "method": "evol_instruct", "n": 1}}})


def test_self_instruct_shows_seed_tasks_by_their_instruction_without_the_input():
    """Wang et al.'s prompt lists instructions only; a seed's input (a passage, up to 2,000 tokens here) would make
    the prompt long and teach the teacher to write inputs on the task line. Evol-Instruct evolves the whole turn."""
    tasks = [json.loads(line) for line in Path(SEEDS).read_text().splitlines()]
    with_input = next(t for t in tasks if len(t["instances"][0]["input"].split()) > 20)
    instruction, passage = " ".join(with_input["instruction"].split()), " ".join(with_input["instances"][0]["input"].split())
    settings = {"kind": "generate", "teacher": "t", "n": 1, "seed_file": SEEDS}
    self_instruct_seeds = read_seeds(GenerateSource(method="self_instruct", **settings))
    evol_seeds = read_seeds(GenerateSource(method="evol_instruct", **settings))
    assert instruction in self_instruct_seeds and not any(passage in seed for seed in self_instruct_seeds)
    assert f"{instruction} {passage}" in evol_seeds and len(self_instruct_seeds) == len(evol_seeds) == len(tasks)


def test_a_call_can_cap_its_replies_below_the_configured_cap(workdir):
    """Self-Instruct's instruction turn stops at 64 tokens, not at the 256 sized for replies."""
    model, tokenizer = load_model(workdir / "teacher")
    generator = Generator(model, tokenizer, TeacherSampling(max_new_tokens=40, batch_size=4), seed=0)
    texts = [generator.chat_prompt(f"Tell me about topic {i}") for i in range(4)]
    generator.complete(texts, max_new_tokens=3)
    assert 4 <= generator.new_tokens <= 4 * 3  # generated tokens, counted to each reply's end
    generator.complete(texts, min_new_tokens=10)
    assert generator.new_tokens >= 4 * 3 + 4 * 10


# --- self-instruct's similarity filter ------------------------------------------------
@pytest.mark.parametrize("a,b", [("Write a poem about the sea", "Write a short poem about the sea"),
                                 ("Give me three tips for staying healthy", "List three ways to stay healthy today"),
                                 ("Translate this sentence into French", "What is the capital of France")])  # fmt: skip
def test_rouge_l_agrees_with_rouge_score(a, b):
    reference = rouge_scorer.RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure
    assert rouge_l(a.lower().split(), b.lower().split()) == pytest.approx(reference)


def test_the_pool_rejects_near_copies_and_keeps_new_instructions():
    pool = Pool()
    pool.add("Write a poem about the sea at night.")
    similar = pool.most_similar("Write a short poem about the sea at night.", 0.7)
    assert similar is not None and similar[0] > 0.9 and similar[1].startswith("Write a poem")
    assert pool.most_similar("Explain how a bicycle gear works.", 0.7) is None


# --- the collapse driver's pieces -----------------------------------------------------
def test_the_plan_chains_each_arm_from_generation_0_per_seed():
    runs = plan(Collapse(generations=2, seeds=[0, 1]))
    assert [(r.name, r.parent) for r in runs[:5]] == [("s0-gen0", None), ("s0-gen1-pure", "s0-gen0"), ("s0-gen2-pure", "s0-gen1-pure"),
                                                     ("s0-gen1-mixed", "s0-gen0"), ("s0-gen2-mixed", "s0-gen1-mixed")]  # fmt: skip
    assert [r.name for r in runs[5:]] == ["s1-gen0", "s1-gen1-pure", "s1-gen2-pure", "s1-gen1-mixed", "s1-gen2-mixed"]


def test_the_mixed_arm_keeps_the_real_fraction_of_human_blocks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/collapse/s0-gen0").mkdir(parents=True)
    pq.write_table(pa.table({"text": [f"generated {i}" for i in range(50)]}), tmp_path / "data/collapse/s0-gen0/generated.parquet")
    human = [f"human {i}" for i in range(50)]
    config = Collapse(blocks=50, real_fraction=0.1)
    for arm, real in (("pure", 0), ("mixed", 5)):
        texts = training_texts(CollapseRun(f"s0-gen1-{arm}", 0, 1, arm, "s0-gen0"), config, human)
        assert len(texts) == 50 and sum(t.startswith("human") for t in texts) == real
    assert training_texts(CollapseRun("s0-gen0", 0, 0, "original", None), config, human) == human


def test_the_tails_are_the_rare_tokens_and_bigrams_and_a_narrow_text_keeps_fewer(tmp_path):
    tokens, bigrams = rare_units([[1, 2, 3, 1], [2, 3, 4]], rare_count=1)
    assert tokens == {4} and bigrams == {(1, 2), (3, 1), (3, 4)}
    tokenizer = train_bpe((SHARED_DATA / "human/wiki-sample.txt").read_text().splitlines(), 1024, split_digits=True)
    varied = ["How do plants grow in winter?", "Write a poem about rain and the sea.", "What is seventeen times three?", "Name a red fruit."]
    same = ["Name a red fruit."] * 4
    tails = rare_units([tokenizer(t, add_special_tokens=False)["input_ids"] for t in varied], 1)
    config = Collapse(spread_records=10)
    wide, narrow = data_metrics(varied, tokenizer, tails, config), data_metrics(same, tokenizer, tails, config)
    assert wide["rare_tokens_kept"] == 1.0 > narrow["rare_tokens_kept"] and wide["rare_bigrams_kept"] > narrow["rare_bigrams_kept"]
    assert wide["spread"] > narrow["spread"] and wide["distinct_2"] > narrow["distinct_2"] and narrow["self_bleu"] > wide["self_bleu"]


def test_make_collapse_fine_tunes_the_teacher_per_generation_records_each_run_and_skips_it_after(tmp_path, monkeypatch):
    # installed where the teacher stage puts it and named as make collapse names it: each run's stages start in
    # their own directory, where the name must still find the folder
    teacher = build_teacher(tmp_path / TEACHERS / TEACHER_NAMES[0])
    monkeypatch.chdir(tmp_path)
    tiny = {"teacher": TEACHER_NAMES[0], "text": str(SHARED_DATA / "human/wiki-sample.txt"), "heldout_documents": 2, "block_tokens": 16,
            "blocks": 32, "generations": 1, "seeds": [0], "spread_records": 20, "sampling": {"max_new_tokens": 16, "batch_size": 32},
            "train": {"tokens": 1024, "batch_tokens": 256, "micro_batch": 4, "lr": 0.0001, "warmup_steps": 1, "eval_every": 4,
                      "eval_sequences": 4, "checkpoint_every": 4},
            "tokenize": {"seq_len": 64, "assistant_only": False},
            "eval": {"heldout_records": 1, "tasks_per_family": 0, "references": 0, "behaviour_per_suite": 0, "benchmarks": {}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sources": {"builtin": {"kind": "builtin", "max_samples": 100}},
                                                          "builtin_eval": {"per_family": 5}, "collapse": tiny}))
    stage(tmp_path, "stages.builtin_eval")
    results = collapse()
    assert list(results) == ["s0-gen0", "s0-gen1-pure", "s0-gen1-mixed"]
    # the teacher itself, not fine-tuned, is scored once as the zero-shot baseline, after the runs
    recorded = [json.loads(line) for line in Path("reports/collapse_runs.jsonl").read_text().splitlines()]
    assert [row["name"] for row in recorded] == [*results, "zero-shot"] and recorded[-1]["heldout_ppl"] > 1
    generated = pq.read_table("data/collapse/s0-gen0/generated.parquet").column("text").to_pylist()
    assert len(generated) == 32 and all(generated)
    # every generation trains on as many records as long as the human blocks, each fine-tuning the teacher afresh
    lengths = [r["training_data"]["tokens_per_record"] for r in results.values()]
    assert all(r["training_data"]["records"] == 32 for r in results.values()) and max(lengths) - min(lengths) < 4, lengths
    for name in results:
        assert json.loads(Path(f"data/collapse/{name}/metrics/train/metrics.json").read_text())["init"] == str(teacher.resolve())
    rows = [line for line in Path("reports/collapse.md").read_text().splitlines() if line.startswith("| s0-gen")]
    assert results["s0-gen0"]["heldout_ppl"] > 1 and len(rows) == 3
    # recorded runs are skipped: with their directories gone, nothing trains again and the report is the same
    shutil.rmtree("data/collapse")
    assert collapse() == results and not Path("data/collapse").exists()
