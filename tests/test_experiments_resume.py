"""Experiments that survive a change of machine (each finished run's row in runs.csv, runs with a row
skipped) and the check of a definition before anything trains (research.experiments check)."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import REPO
from research.experiments import commit_rows, main
from research.report import Result, collect, models, recorded_curves, write_curves, write_runs_csv
from synthtrain.experiments import activation_bytes, curves_path, expand, load_definition, model_size, recorded_runs, save_rows, unrecorded
from synthtrain.params import StageError
from synthtrain.records import output_transaction

TINY = {"seeds": [0, 1], "seed_params": ["train.seed"],
        "experiments": {"exp3": {"question": "Which mix is best?", "grid": {"mix.strategy": ["equal", "web_heavy"]}, "fixed": {"mix.pool": "10K"}}}}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A directory laid out as the repository for research.experiments: params.yaml, the metrics of its last
    `dvc repro` (the pools' measured tokens) and experiments/tiny.yaml."""
    shutil.copy(REPO / "params.yaml", tmp_path)
    shutil.copytree(REPO / "metrics/sample", tmp_path / "metrics/sample")
    shutil.copytree(REPO / "metrics/download", tmp_path / "metrics/download")
    shutil.copy(REPO / "metrics/tokenizer.json", tmp_path / "metrics")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments/tiny.yaml").write_text(yaml.safe_dump(TINY))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_rows(path, names):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_rows(path, ["name", "heldout_bpb"], [{"name": name, "heldout_bpb": "2.5"} for name in names])


# --- resume ---------------------------------------------------------------------------------------
def test_the_plan_skips_exactly_the_runs_with_a_row(project, capsys):
    runs = expand(load_definition("tiny"))
    assert [run.name for run in runs] == ["exp3-equal-s0", "exp3-web_heavy-s0", "exp3-equal-s1", "exp3-web_heavy-s1"]
    path = project / "reports/tiny/runs.csv"  # a profile other than cpu: its own runs.csv (the run names are the same)
    write_rows(path, ["exp3-equal-s1", "exp3-web_heavy-s0", "exp9-other-s0"])
    assert [run.name for run in unrecorded(runs, path)] == ["exp3-equal-s0", "exp3-web_heavy-s1"]

    main(["run", "--profile", "tiny", "--dry-run"])  # the runner's plan, without dvc
    printed = capsys.readouterr().out
    assert "2 of 4 runs have a row in reports/tiny/runs.csv, skipped" in printed
    commands = [line for line in printed.splitlines() if line.startswith("dvc exp run")]
    assert [command.split()[5] for command in commands] == ["exp3-equal-s0", "exp3-web_heavy-s1"]
    assert all(command.startswith("dvc exp run --temp -n ") and "-S mix.pool=10K" in command for command in commands)

    write_rows(project / "reports/runs.csv", ["exp3-equal-s0"])  # the default profile's rows do not count for tiny
    main(["run", "--profile", "tiny", "--dry-run"])
    assert "2 of 4 runs have a row" in capsys.readouterr().out
    main(["queue", "--profile", "tiny", "--dry-run"])  # DVC's queue, for several at a time, skips them too
    printed = capsys.readouterr().out
    assert [line.split()[5] for line in printed.splitlines() if line.startswith("dvc exp run --queue")] == ["exp3-equal-s0", "exp3-web_heavy-s1"]


def test_rows_are_added_or_replaced_atomically_under_one_header(tmp_path):
    path = tmp_path / "runs.csv"
    save_rows(path, ["name", "seed", "bpb"], [{"name": "a", "seed": "0", "bpb": "3.1"}])
    save_rows(path, ["name", "seed", "bpb"], [{"name": "b", "seed": "0", "bpb": "2.9"}])
    save_rows(path, ["name", "seed", "bpb"], [{"name": "a", "seed": "0", "bpb": "3.0"}])  # a ran again: replaced, in place
    lines = path.read_text().splitlines()
    assert lines == ["name,seed,bpb", "a,0,3.0", "b,0,2.9"]
    # a failure while writing (here: after the write, before the transaction ends) leaves the old file whole
    with pytest.raises(KeyboardInterrupt), output_transaction():
        save_rows(path, ["name", "seed", "bpb"], [{"name": "c", "seed": "0", "bpb": "2.0"}])
        raise KeyboardInterrupt
    assert path.read_text().splitlines() == lines and [p.name for p in tmp_path.iterdir()] == ["runs.csv"]
    # a column the file has and the writer does not (an older report's) stays; a new column is added, empty for old rows
    save_rows(path, ["name", "seed", "loss"], [{"name": "c", "seed": "1", "loss": "4.2"}])
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"name": "a", "seed": "0", "loss": "", "bpb": "3.0"}, {"name": "b", "seed": "0", "loss": "", "bpb": "2.9"},
                    {"name": "c", "seed": "1", "loss": "4.2", "bpb": ""}]
    assert recorded_runs(path) == {"a", "b", "c"} and recorded_runs(tmp_path / "none.csv") == set()


def test_the_report_keeps_the_rows_of_runs_from_another_machine(project):
    runs = expand(load_definition("tiny"))
    path = project / "reports/tiny/runs.csv"
    write_rows(path, ["exp3-equal-s0"])  # finished elsewhere: this machine's dvc has no such experiment
    write_runs_csv([Result(runs[2], "0123456789abcdef", {"heldout_bpb": 2.25, "training_tokens": 327680.0})], path)
    with path.open(newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"exp3-equal-s0", "exp3-equal-s1"} and rows["exp3-equal-s0"]["heldout_bpb"] == "2.5"
    assert rows["exp3-equal-s1"]["rev"] == "0123456" and rows["exp3-equal-s1"]["training_tokens"] == "327680"
    header = path.read_text().splitlines()[0]
    assert header.startswith("name,experiment,config,seed,rev,training_tokens,heldout_loss") and header.count("name") == 1


def test_runs_only_reads_the_experiments_of_head_and_keeps_the_other_rows(project):
    """`research.report --runs-only`, what the runner calls after each run, on a real DVC repository (no experiment
    has run in it: the rows of another machine stay, under the report's header)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(REPO))
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=project, env=env, check=True)
    write_rows(project / "reports/tiny/runs.csv", ["exp3-equal-s0"])
    done = subprocess.run([sys.executable, "-m", "research.report", "--profile", "tiny", "--runs-only"], cwd=project, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "report: 0 runs finished on HEAD -> reports/tiny/runs.csv" in done.stdout
    with (project / "reports/tiny/runs.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames[:6] == ["name", "experiment", "config", "seed", "rev", "training_tokens"]
    assert [(row["name"], row["heldout_bpb"]) for row in rows] == [("exp3-equal-s0", "2.5")]


def test_commit_rows_commits_runs_csv_and_the_loss_curves_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    git("config", "user.name", "test")
    git("config", "user.email", "test@example.com")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    git("add", "params.yaml")
    git("commit", "-q", "-m", "start")
    (tmp_path / "params.yaml").write_text("a: 2\n")
    git("add", "params.yaml")  # the user's own staged change: it stays staged, out of the commit
    write_rows(tmp_path / "reports/runs.csv", ["exp3-equal-s0"])
    (tmp_path / "reports/loss_curves.csv").write_text("name,step,loss\nexp3-equal-s0,1,7.5\n")
    commit_rows([tmp_path / "reports/runs.csv", tmp_path / "reports/loss_curves.csv"], "exp3-equal-s0")
    assert git("log", "-1", "--format=%s") == "experiments: exp3-equal-s0\n"
    assert git("show", "--name-only", "--format=", "HEAD").split() == ["reports/loss_curves.csv", "reports/runs.csv"]
    assert git("diff", "--cached", "--name-only").split() == ["params.yaml"]
    # a fresh clone has the row, so its runner skips the run
    subprocess.run(["git", "clone", "-q", str(tmp_path), str(tmp_path / "clone")], check=True)
    assert recorded_runs(tmp_path / "clone/reports/runs.csv") == {"exp3-equal-s0"}


# --- check ----------------------------------------------------------------------------------------
def check(project, definition: dict, capsys) -> tuple[str, str]:
    (project / "experiments/check.yaml").write_text(yaml.safe_dump(definition))
    with pytest.raises(StageError, match=r"problems above; nothing has run"):
        main(["check", "--profile", "check"])
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_check_fails_on_a_mix_that_needs_more_passes_than_allowed(project, capsys):
    out, err = check(project, {**TINY, "experiments": {"exp2": {"question": "?", "runs": {
        "10K-huge": {"mix.pool": "10K", "mix.strategy": "instruction_only", "mix.tokens": 10**9, "train.tokens": 10**9},
        "10K-small": {"mix.pool": "10K", "mix.strategy": "instruction_only", "mix.tokens": 335000, "train.tokens": 327680}}}}}, capsys)
    assert "pool 10K: measured (metrics/sample/10K.json)" in out
    tokens = json.loads((project / "metrics/sample/10K.json").read_text())["by_category"]["instruction"]["tokens"]
    problems = err.strip().splitlines()
    assert len(problems) == 2  # the two seeds of the huge run; the small one fits
    assert problems[0] == (f"check: run exp2-10K-huge-s0: {10**9 / tokens:.1f} passes over the instruction records of pool 10K "
                           f"(1,000,000,000 tokens drawn of {tokens:,}) but mix.max_epochs = 4")


def test_check_fails_on_a_model_that_does_not_fit_the_gpu(project, capsys):
    estimate = {"gpu": "L4", "mfu": 0.3, "price_per_hour": 1.0, "budget_usd": 1000}
    out, err = check(project, {**TINY, "seeds": [0], "estimate": estimate, "experiments": {"exp1": {"question": "?", "runs": {
        "1B": {"train.model": "1B", "train.micro_batch": 64, "train.tokens": 8192 * 4},
        "1B-checkpointed": {"train.model": "1B", "train.micro_batch": 1, "train.gradient_checkpointing": True, "train.tokens": 8192 * 4}}}}},
        capsys)
    assert "at 30% MFU (assumed: not measured on this GPU)" in out
    problems = err.strip().splitlines()
    assert len(problems) == 1 and problems[0].startswith("check: run exp1-1B-s0: a step needs ")
    _, parameters = model_size("1B", yaml.safe_load((project / "params.yaml").read_text())["tokenizer"]["vocab_size"], 256)
    assert f"but the L4 has 24 GiB (90% usable): 1B is {parameters / 1e6:.0f}M parameters" in problems[0]
    assert "train.micro_batch = 64 x 256 tokens without gradient checkpointing" in problems[0]


def test_check_passes_on_the_shipped_gpu_profile(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    main(["check", "--profile", "gpu", "--params", "params-gpu.yaml"])
    out = capsys.readouterr().out
    assert "can run as defined" in out and "within the plan's $50" in out and "(assumed: not measured on this GPU)" in out
    # measured where metrics/ come from params-gpu.yaml, estimated (and why) where they are the CPU profile's
    assert re.search(r"^pool 10K: (measured \(metrics/sample/10K.json\)|estimated, 10,000 records x 500 tokens .*)$", out, re.M)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_activation_estimate_matches_what_autograd_keeps(checkpointing):
    """The bytes per token that activation_bytes counts against the tensors autograd saves for backward in a real
    forward pass under bf16 autocast (CPU here; the same transformers code runs on a GPU), weights' copies excluded."""
    from synthtrain.model import build_model

    config, _ = model_size("5M", 8192, 64)
    torch.manual_seed(0)
    model = build_model(config)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # as the train stage does
    model.train()

    def saved_bytes(sequences: int) -> int:
        storages = {}

        def pack(tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        tokens = torch.randint(0, 8192, (sequences, 64))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(input_ids=tokens).logits
            F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())
        return sum(storages.values())

    measured = (saved_bytes(4) - saved_bytes(2)) / (2 * 64)  # per token: what does not grow with tokens (weights) cancels
    kept, _ = activation_bytes(config, bf16=True, checkpointing=checkpointing)
    assert kept == pytest.approx(measured, rel=0.03)


def test_a_fresh_clone_reports_from_the_committed_rows_and_a_shared_run_counts_once(project, monkeypatch):
    """No DVC experiment on this machine: collect reads each run from its row of runs.csv, a run two experiments
    share gives each experiment its result, and the correlations and rows count it as one model."""
    shared = {"seeds": [0], "seed_params": ["train.seed"],
              "experiments": {"exp1": {"question": "?", "runs": {"mixed": {"mix.pool": "10K", "mix.strategy": "equal"}}},
                              **TINY["experiments"]}}
    (project / "experiments/shared.yaml").write_text(yaml.safe_dump(shared))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=project, check=True)
    runs = expand(load_definition("shared"))
    assert [(run.experiment, run.config, run.name) for run in runs] == [
        ("exp1", "mixed", "exp1-mixed-s0"), ("exp3", "equal", "exp1-mixed-s0"), ("exp3", "web_heavy", "exp3-web_heavy-s0")]
    path = project / "reports/shared/runs.csv"
    save_rows(path, ["name", "rev", "heldout_bpb", "tasks_fact_recall_accuracy"],
              [{"name": "exp1-mixed-s0", "rev": "abc1234", "heldout_bpb": "2.5", "tasks_fact_recall_accuracy": ""}])
    curves = curves_path(path)  # its commit (abc1234) is not here: its loss curve comes from the committed file
    curves.write_text("name,step,loss\nexp1-mixed-s0,1,7.5\nexp1-mixed-s0,2,7.25\n")
    results, missing = collect(runs, rows=path)
    assert missing == ["exp3-web_heavy-s0"]
    assert [(r.run.experiment, r.rev, r.metrics) for r in results] == [("exp1", "abc1234", {"heldout_bpb": 2.5}),
                                                                      ("exp3", "abc1234", {"heldout_bpb": 2.5})]
    assert [r.loss_curve for r in results] == [[(1, 7.5), (2, 7.25)]] * 2
    assert [r.run.name for r in models(results)] == ["exp1-mixed-s0"]
    # a run that finishes here adds its curve; the other machine's stays, and the shared run's is written once
    write_curves([*results, Result(runs[2], "def5678", {}, [(1, 8.0)])], curves)
    assert recorded_curves(curves) == {"exp1-mixed-s0": [(1, 7.5), (2, 7.25)], "exp3-web_heavy-s0": [(1, 8.0)]}
    assert unrecorded(runs, path) == [runs[2]] and collect(runs)[0] == []  # without the rows: nothing finished here
