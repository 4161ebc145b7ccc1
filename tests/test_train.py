"""The train stage on a tiny model: a standard model that loads offline, live
metrics, two processes that follow one, resume after SIGKILL and SIGTERM with
the uninterrupted run's weights, fine-tuning from a saved model (train.init),
the budget guard, and errors that say the fix."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO, stage
from synthtrain.sources.download import download
from synthtrain.params import ParamsError, StageError, parse_params
from synthtrain.hardware import cpu_datasheet_peak, matmul_peak, recorded_peak
from synthtrain.training import (TokenSet, final_peak, is_out_of_memory, layout, learning_rate, out_of_memory_advice, read_inputs,
                                 token_loss_sum)

SEQ_LEN = 64
STEPS = 24
TRAIN = {"model": "1M", "tokens": 1024 * STEPS, "batch_tokens": 1024, "micro_batch": 8, "lr": 0.003, "warmup_steps": 4,
         "eval_every": 8, "eval_sequences": 32, "checkpoint_every": 4, "precision": "fp32", "price_per_hour": 2.0}
PARAMS = {"sources": {"builtin": {"kind": "builtin"}}, "tokenizer": {"vocab_size": 1024, "train_records": 2000},
          "tokenize": {"seq_len": SEQ_LEN}, "train": TRAIN}
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
# DDP averages gradients that one process sums: the same arithmetic in another
# order, so fp32 losses agree to rounding, which 24 Adam steps amplify a little.
TWO_PROCESS_TOLERANCE = 1e-3
# inductor fuses and reorders the fp32 arithmetic; 24 steps from the same weights stay this close
COMPILED_TOLERANCE = 2e-3
# The runs that evaluate every step give their peak (TFLOP/s): a measured one is measured again at each
# evaluation, seconds of 4096² matmuls each, which was most of those tests' time
GIVEN_PEAK = 1.0


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    """A directory with models/tokenizer and data/tokens (seq_len 64, 1,024-token vocabulary) from built-in records."""
    root = tmp_path_factory.mktemp("tokens")
    download(parse_params({"sources": {"builtin": {"kind": "builtin", "max_samples": 3000}}}), "builtin", root)
    pool = pq.read_table(root / "data/raw/builtin.parquet")
    for path, rows in (("data/dedup/train.parquet", pool), ("data/mix/train.parquet", pool.slice(0, 2600)),
                       ("data/heldout/builtin.parquet", pool.slice(2600))):  # fmt: skip
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, root / path)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    stage(root, "stages.train_tokenizer")
    stage(root, "stages.tokenize")
    return root


def workdir(shards: Path, path: Path, **train) -> Path:
    """A fresh directory sharing the token shards and tokenizer, with train params changed by `train`."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "models").mkdir(exist_ok=True)
    for link in ("data", "models/tokenizer"):
        if not (path / link).exists():
            (path / link).symlink_to(shards / link)
    (path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "train": {**TRAIN, **train}}))
    return path


def train(root: Path, check: bool = True) -> subprocess.CompletedProcess:
    return stage(root, "stages.train", check=check)


def losses(root: Path, name: str = "train/loss") -> np.ndarray:
    rows = (root / f"metrics/train/plots/metrics/{name}.tsv").read_text().splitlines()[1:]
    return np.array([float(row.split("\t")[1]) for row in rows])


def weights(root: Path) -> dict[str, torch.Tensor]:
    return load_file(root / "models/current/model.safetensors")


def checkpoint_step(root: Path) -> int:
    state = root / "models/checkpoint/last/state.json"
    try:
        return json.loads(state.read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.fixture(scope="module")
def trained(tokens, tmp_path_factory) -> Path:
    root = workdir(tokens, tmp_path_factory.mktemp("trained"))
    train(root)
    return root


def test_the_model_loads_offline_with_its_tokenizer_and_chat_template(trained):
    model = AutoModelForCausalLM.from_pretrained(trained / "models/current", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(trained / "models/current", local_files_only=True)
    assert model.config.model_type == "llama" and model.config._attn_implementation == "sdpa" and model.config.use_cache
    assert model.config.vocab_size == len(tokenizer) == 1024 and model.config.max_position_embeddings == SEQ_LEN
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital?"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)  # fmt: skip
    assert model.generate(**inputs, max_new_tokens=5, do_sample=False).shape[1] > inputs["input_ids"].shape[1]
    assert sorted(p.suffix for p in (trained / "models/checkpoint/last").iterdir()) == [".json"] + [".safetensors"] * 3  # no pickle
    summary = json.loads((trained / "metrics/train/metrics.json").read_text())
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())  # a tied embedding once


def test_metrics_record_every_step_and_the_summary(trained):
    summary = json.loads((trained / "metrics/train/metrics.json").read_text())
    loss = losses(trained)
    assert len(loss) == STEPS and len(losses(trained, "train/mfu")) == STEPS and len(losses(trained, "heldout/loss")) == STEPS // 8
    assert loss[-4:].mean() < loss[:4].mean() - 0.5  # it learns
    assert summary["tokens"] == STEPS * 1024 and summary["steps"] == STEPS and summary["processes"] == 1
    assert summary["train_loss"] == pytest.approx(loss[-10:].mean()) and 0 < summary["heldout_loss"] < 7
    assert summary["cost_usd"] == pytest.approx(summary["device_hours"] * 2.0, abs=1e-4)
    assert 0 < summary["mfu"] < 1 and summary["peak_source"].startswith("measured fp32 matmul")
    # the peak is measured at start-up, at each evaluation and after training, and MFU divides by the best of them
    # and of this machine's record; the machine is named
    assert summary["peak_measurements"] == 1 + STEPS // 8 and summary["peak_tflops_this_run"] >= max(summary["peak_tflops_start"], summary["peak_tflops_end"])
    assert summary["peak_tflops"] == pytest.approx(max(summary["peak_tflops_this_run"], summary["peak_tflops_recorded_before"] or 0), rel=1e-3)
    assert summary["cpu"] and isinstance(summary["cpu_flags"], list) and summary["cores"] >= 1 and "4096²" in summary["peak_method"]
    assert summary["compiled"] is False and summary["warmup_s"] > 0  # 24 steps: train.compile auto does not compile
    assert summary["flops_per_token"] == 6 * summary["parameters"] + 12 * 4 * 4 * 16 * SEQ_LEN
    lr = losses(trained, "train/lr")
    assert lr[3] == pytest.approx(0.003) and lr[-1] == pytest.approx(0.0003)  # warmup to the peak, cosine to min_lr_ratio


def test_two_processes_follow_the_single_process_loss(trained, tokens, tmp_path):
    root = workdir(tokens, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "stages.train"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((root / "metrics/train/metrics.json").read_text())["processes"] == 2
    assert "(1 x 8 sequences per process)" in result.stderr
    np.testing.assert_allclose(losses(root), losses(trained), rtol=0, atol=TWO_PROCESS_TOLERANCE)
    np.testing.assert_allclose(losses(root, "heldout/loss"), losses(trained, "heldout/loss"), rtol=0, atol=TWO_PROCESS_TOLERANCE)


def steps_logged(root: Path) -> int:
    path = root / "metrics/train/plots/metrics/train/loss.tsv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def run_until(root: Path, done) -> subprocess.Popen:
    """Start training (evaluating every step, which is slower and does not change the weights) and return once done(root)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=root, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    while not done(root):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.01)
    return process


def test_resume_after_sigkill_gives_the_uninterrupted_weights(trained, tokens, tmp_path):
    root = workdir(tokens, tmp_path, eval_every=1, eval_sequences=64, peak_tflops=GIVEN_PEAK, checkpoint_every=2)
    process = run_until(root, lambda root: checkpoint_step(root) >= 6)
    process.kill()
    process.wait()
    killed_at = checkpoint_step(root)
    assert 6 <= killed_at < STEPS and not (root / "models/current").exists()
    result = train(root)
    assert f"resuming from the checkpoint at step {killed_at}" in result.stderr
    resumed, reference = weights(root), weights(trained)
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in reference)
    np.testing.assert_array_equal(losses(root), losses(trained))  # the history before the kill is kept


def test_sigterm_saves_a_checkpoint_and_resumes_to_the_same_weights(trained, tokens, tmp_path):
    root = workdir(tokens, tmp_path, eval_every=1, eval_sequences=64, peak_tflops=GIVEN_PEAK, checkpoint_every=100)
    process = run_until(root, lambda root: steps_logged(root) >= 3)  # no periodic checkpoint: SIGTERM writes one
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate()
    assert process.returncode == 1 and "stopped by SIGTERM after step" in stderr, stderr
    stopped_at = checkpoint_step(root)
    assert 0 < stopped_at < STEPS and f"after step {stopped_at};" in stderr
    train(root)
    assert all(torch.equal(a, b) for a, b in zip(weights(root).values(), weights(trained).values()))


def fine_tuning(shards: Path, path: Path, init: Path, **train) -> Path:
    """workdir with train.init (and tokenizer.pretrained, which must name the same model) set to ``init``."""
    root = workdir(shards, path, init=str(init), lr=0.001, **train)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tokenizer"]["pretrained"] = str(init)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_fine_tuning_from_init_starts_at_its_loss_and_resumes_after_sigkill(trained, tokens, tmp_path):
    init = trained / "models/current"
    reference = fine_tuning(tokens, tmp_path / "reference", init)
    result = train(reference)
    assert f"{init} (init): " in result.stderr
    # the first step's loss is the pretrained model's on that batch (computed before the update), not a new model's ln(1024)
    model = AutoModelForCausalLM.from_pretrained(init, local_files_only=True)
    tokens_, mask = TokenSet(tokens / "data/tokens/train").batch(0, TRAIN["batch_tokens"] // SEQ_LEN, torch.device("cpu"))
    with torch.no_grad():
        pretrained_loss = (token_loss_sum(model(input_ids=tokens_).logits, tokens_, mask) / mask[:, 1:].sum()).item()
    first = losses(reference)[0]
    assert first == pytest.approx(pretrained_loss, abs=1e-3) and first < losses(trained)[0] - 1.0
    summary = json.loads((reference / "metrics/train/metrics.json").read_text())
    assert summary["init"] == str(init) and summary["parameters"] == sum(p.numel() for p in model.parameters())
    assert 0 < summary["mfu"] < 1 and summary["heldout_loss"] < losses(trained)[0]
    tuned = AutoTokenizer.from_pretrained(reference / "models/current", local_files_only=True)
    assert tuned.chat_template == AutoTokenizer.from_pretrained(init, local_files_only=True).chat_template

    root = fine_tuning(tokens, tmp_path / "killed", init, eval_every=1, eval_sequences=64, peak_tflops=GIVEN_PEAK, checkpoint_every=2)
    process = run_until(root, lambda root: checkpoint_step(root) >= 6)
    process.kill()
    process.wait()
    killed_at = checkpoint_step(root)
    assert 6 <= killed_at < STEPS
    assert f"resuming from the checkpoint at step {killed_at}" in train(root).stderr
    resumed, uninterrupted = weights(root), weights(reference)
    assert resumed.keys() == uninterrupted.keys() and all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)

    # the run's fingerprint holds init: from scratch, the fine-tune's checkpoint is another run's
    scratch = workdir(tokens, tmp_path / "killed", lr=0.001)
    assert re.search(r"changed: [^)]*model.init_weights[^)]*train.init", train(scratch).stderr)


def test_init_needs_its_own_tokenizer_and_a_teacher_name_needs_the_teacher_stage(tokens, tmp_path, monkeypatch):
    with pytest.raises(ParamsError, match=r"train.init = 'models/x' needs data/tokens made with its tokenizer: set tokenizer.pretrained: 'models/x'"):
        parse_params({**PARAMS, "train": {**TRAIN, "init": "models/x"}})
    params = parse_params({**PARAMS, "tokenizer": {"pretrained": "smollm2-135m-instruct"},
                           "train": {**TRAIN, "init": "models/teachers/smollm2-135m-instruct"}})  # a name is its folder
    monkeypatch.chdir(workdir(tokens, tmp_path))
    with pytest.raises(StageError, match=r"teacher smollm2-135m-instruct: models/teachers/smollm2-135m-instruct/ does not exist: "
                                         r"run `dvc repro teacher`"):
        read_inputs(params.model_copy(update={"train": params.train.model_copy(update={"init": "smollm2-135m-instruct"})}))


def test_a_changed_model_shape_starts_afresh_and_says_so(trained, tokens, tmp_path):
    root = workdir(tokens, tmp_path, model="5M", tokens=2048)
    shutil.copytree(trained / "models/checkpoint", root / "models/checkpoint")
    result = train(root)
    assert "is for another run (changed: model.heads, model.hidden" in result.stderr and "starting from step 0" in result.stderr
    assert json.loads((root / "metrics/train/metrics.json").read_text())["steps"] == 2


def test_a_nan_loss_stops_at_its_step_and_keeps_the_last_checkpoint(tokens, tmp_path):
    root = workdir(tokens, tmp_path, eval_every=1, eval_sequences=64, peak_tflops=GIVEN_PEAK, checkpoint_every=4)
    process = run_until(root, lambda root: checkpoint_step(root) >= 4)
    process.kill()
    process.wait()
    step = checkpoint_step(root)
    path = root / "models/checkpoint/last/model.safetensors"
    poisoned = load_file(path)
    poisoned["model.norm.weight"] = torch.full_like(poisoned["model.norm.weight"], float("nan"))
    save_file(poisoned, path)
    result = train(root, check=False)
    assert result.returncode == 1
    assert f"loss nan, gradient norm nan at step {step + 1}: training stopped; the checkpoint of step {step}" in result.stderr
    assert checkpoint_step(root) == step and not (root / "models/current").exists()


def test_the_budget_guard_refuses_with_the_estimate_and_a_flag_overrides_it(tokens, tmp_path):
    root = workdir(tokens, tmp_path, price_per_hour=1000.0, budget_usd=0.01, guard_steps=2)
    result = train(root, check=False)
    assert result.returncode == 1 and not (root / "models/current").exists()
    assert "error: estimated about" in result.stderr and "over train.budget_usd" in result.stderr
    assert "set train.over_budget: true" in result.stderr and "at $1000.00 per device-hour" in result.stderr
    (root / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "train": {**TRAIN, "price_per_hour": 1000.0, "budget_usd": 0.01,
                                                                          "guard_steps": 2, "over_budget": True, "tokens": 8192}}))
    result = train(root)
    assert "(over budget, allowed by train.over_budget)" in result.stderr and (root / "models/current/model.safetensors").exists()


def test_bf16_autocast_trains(tokens, tmp_path):
    root = workdir(tokens, tmp_path, precision="bf16", tokens=1024 * 8, warmup_steps=2)
    train(root)
    summary = json.loads((root / "metrics/train/metrics.json").read_text())
    assert summary["precision"] == "bf16" and summary["peak_source"].startswith("measured bf16 matmul")
    assert losses(root)[-1] < losses(root)[0]


def test_a_compiled_run_follows_the_uncompiled_loss_and_saves_a_standard_model(trained, tokens, tmp_path):
    """train.compile: true (eager attention under inductor on a CPU) changes the arithmetic's order only, and a second
    compiled run on the same machine gives the same weights."""
    root = workdir(tokens, tmp_path, compile=True)
    train(root)
    summary = json.loads((root / "metrics/train/metrics.json").read_text())
    assert summary["compiled"] is True
    np.testing.assert_allclose(losses(root), losses(trained), atol=COMPILED_TOLERANCE)
    model = AutoModelForCausalLM.from_pretrained(root / "models/current", local_files_only=True)
    assert model.config._attn_implementation == "sdpa"  # the eager attention of the compiled step is not saved
    again = workdir(tokens, tmp_path / "again", compile=True)
    train(again)
    assert (again / "models/current/model.safetensors").read_bytes() == (root / "models/current/model.safetensors").read_bytes()


def test_the_peak_is_the_best_of_the_run_and_of_the_machines_record(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # this machine's record starts empty
    config, cpu = parse_params(PARAMS).train, torch.device("cpu")
    busy_start = final_peak({"peak_flops": 1.0, "precision": "fp32", "matmul_tflops": {"fp32": 1e-12}}, cpu, config)
    assert busy_start["peak_flops"] == pytest.approx(busy_start["peak_tflops_end"] * 1e12, rel=1e-3) and busy_start["peak_drift"] > 0.99
    assert busy_start["peak_tflops_recorded_before"] is None and recorded_peak("fp32") == busy_start["peak_flops"]
    quiet_start = final_peak({"peak_flops": 1e18, "precision": "fp32", "matmul_tflops": {"fp32": 1e6}}, cpu, config)
    assert quiet_start["peak_flops"] == 1e18 and quiet_start["peak_drift"] > 0.99 and recorded_peak("fp32") == 1e18
    # a later run on a busy machine divides by the record, not by its own slow measurements
    later = final_peak({"peak_flops": 1.0, "precision": "fp32", "matmul_tflops": {"fp32": 1e-12}}, cpu, config)
    assert later["peak_flops"] == 1e18 and later["peak_tflops_recorded_before"] == 1e6 and later["peak_tflops_this_run"] < 1e6
    given = parse_params({**PARAMS, "train": {**TRAIN, "peak_tflops": 2.0}}).train
    assert final_peak({"peak_flops": 2e12, "precision": "fp32"}, cpu, given) == {"peak_flops": 2e12}


def test_the_peak_tries_no_larger_matmul_once_one_outlasts_the_timing_budget():
    # bf16 without CPU support is emulated: a 4096² matmul took minutes. With no budget the first (smallest)
    # size ends it; had the 10⁶² one been tried, its allocation (4 TB) would have failed
    assert matmul_peak(torch.device("cpu"), torch.float32, sizes=(10**6, 64), seconds=0.0) > 0


def test_cpu_datasheet_peaks_for_known_models_only():
    peak, source = cpu_datasheet_peak("Intel(R) Xeon(R) Platinum 8480+", 2, "bf16")
    assert peak == pytest.approx(2 * 1024 * 2.0e9) and "8480" in source  # AMX: 1,024 bf16 FLOP per cycle per core
    assert cpu_datasheet_peak("Intel(R) Xeon(R) Platinum 8480+", 2, "fp32")[0] == pytest.approx(2 * 64 * 2.0e9)
    assert cpu_datasheet_peak("Intel(R) Xeon(R) Processor", 2, "bf16") == (None, "'Intel(R) Xeon(R) Processor' is not in CPU_PEAK_TFLOPS_PER_CORE")


def test_compile_is_auto_true_or_false():
    assert parse_params(PARAMS).train.compile == "auto"
    assert parse_params({**PARAMS, "train": {**TRAIN, "compile": False}}).train.compile is False
    with pytest.raises(ParamsError, match="train.compile"):
        parse_params({**PARAMS, "train": {**TRAIN, "compile": "sometimes"}})


def test_generate_samples_prints_a_completion_per_prompt(trained):
    result = subprocess.run([sys.executable, "-m", "research.print_samples", "--max-new-tokens", "4"], input="Hello?\n\nWho are you?\n",
                            cwd=trained, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("### ") == 2 and "### Who are you?" in result.stdout


# --- errors that say the fix ---------------------------------------------------------------------------
def test_missing_inputs_and_a_seq_len_mismatch_say_what_to_run(tokens, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError, match=r"data/tokens/ holds no token shards: run `dvc repro tokenize` first"):
        read_inputs(parse_params(PARAMS))
    root = workdir(tokens, tmp_path / "mismatch")
    monkeypatch.chdir(root)
    with pytest.raises(StageError, match=r"sequences of 64 tokens but tokenize.seq_len is 128 .*run `dvc repro tokenize`"):
        read_inputs(parse_params({**PARAMS, "tokenize": {"seq_len": 128}}))


def test_batch_layout_errors_name_the_params():
    config = parse_params(PARAMS).train
    assert layout(config, SEQ_LEN, 2, 1000).accumulation == 1 and layout(config, SEQ_LEN, 1, 1000).accumulation == 2
    with pytest.raises(StageError, match=r"train.batch_tokens = 1,024 is 16 sequences of 64, not a multiple of train.micro_batch = 8 x 3"):
        layout(config, SEQ_LEN, 3, 1000)
    with pytest.raises(StageError, match=r"not a multiple of tokenize.seq_len = 48"):
        layout(config, 48, 1, 1000)
    with pytest.raises(ParamsError, match=r"train.model.*'7M'.*'1M', '5M', '25M', '125M', '360M', '500M' or '1B'"):
        parse_params({**PARAMS, "train": {"model": "7M"}})


def test_out_of_memory_suggests_a_smaller_micro_batch_or_checkpointing():
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**62, dtype=torch.uint8)
    assert is_out_of_memory(caught.value)
    advice = out_of_memory_advice(parse_params(PARAMS).train, caught.value)
    assert "lower train.micro_batch" in advice and "train.gradient_checkpointing: true" in advice


def test_schedules_warm_up_then_decay_to_the_floor():
    cosine = parse_params({**PARAMS, "train": {"lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1}}).train
    lrs = [learning_rate(step, 100, cosine) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[-1] == pytest.approx(0.1) and np.all(np.diff(lrs[9:]) <= 0)
    wsd = parse_params({**PARAMS, "train": {"lr": 1.0, "warmup_steps": 10, "schedule": "wsd", "decay_fraction": 0.2}}).train
    lrs = [learning_rate(step, 100, wsd) for step in range(100)]
    assert lrs[10:80] == [1.0] * 70 and lrs[80] < 1.0 and lrs[-1] == pytest.approx(0.0 + 0.1)
