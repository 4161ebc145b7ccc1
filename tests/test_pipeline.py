"""`dvc repro` end to end on a tiny params file: every kind of source, a no-op
rerun, and `dvc exp run -S ...` ablations that rerun only what they change."""

import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import FIXTURES, REPO, SHARED_DATA, build_teacher

DVC = str(Path(sys.executable).parent / "dvc")


def dvc(workdir: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    # Stages write __pycache__ into stages/ as users' Pythons do; .dvcignore must keep it out of the deps' hashes.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    result = subprocess.run([DVC, *args], cwd=workdir, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr  # a stage's own log is on stderr


def small_judged_reference(directory: Path, prompts: int) -> Path:
    """The AlpacaEval 2.0 reference of ../shared cut to its first ``prompts``
    prompts, in the same files and layout: judge_check in seconds, not minutes."""
    source = SHARED_DATA / "judged/alpaca_eval2"
    directory.mkdir()
    shutil.copy(source / "leaderboard.csv", directory)
    for name in ("outputs.jsonl.gz", "preferences.jsonl.gz"):
        with gzip.open(source / name, "rt") as lines, gzip.open(directory / name, "wt") as out:
            out.writelines(line for line in lines if json.loads(line)["index"] < prompts)
    return directory


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for package in ("stages", "synthtrain", "research"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "Makefile", "requirements.txt", ".gitignore"):
        shutil.copy2(REPO / name, root)  # copy2: requirements.txt keeps its age, so make sees the venv as installed
    (root / ".venv").symlink_to(sys.prefix)  # the venv `make` made, as in a clone where `make repro` ran
    # dvc.yaml lists the files the stages read from ../shared: they are beside the project, as in a clone
    (root.parent / "shared").symlink_to(SHARED_DATA.parent)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    teacher = str(build_teacher(tmp_path_factory.mktemp("teacher")))
    generate = {"kind": "generate", "teacher": teacher, "n": 20, "shard_prompts": 16, "sampling": {"max_new_tokens": 24}}
    seeds = str(SHARED_DATA / "human/self-instruct-seed-tasks.jsonl")
    params["sources"] = {
        "builtin": {**params["sources"]["builtin"], "max_samples": 3000},
        "c4": {"kind": "local", "path": str(SHARED_DATA / "human/c4-sample.jsonl"), "category": "web", "max_samples": 100},
        "fineweb": {"kind": "hub", "name": str(FIXTURES / "hub/HuggingFaceFW/fineweb-edu"), "config": "sample-10BT", "max_samples": 100},
        "self_instruct": {**generate, "method": "self_instruct", "seed_file": seeds},
        "evol_instruct": {**generate, "method": "evol_instruct", "seed_file": seeds},
        "magpie": {**generate, "method": "magpie", "preferences": {"temperatures": [0.5, 1.0, 1.5], "teacher_judge": True}},
    }
    params["quality"]["lm_scorer"]["model"] = teacher  # the tiny teacher reads the real sources in seconds
    params["builtin_eval"]["per_family"] = 20
    params["sample"]["sizes"] = {"small": 300, "large": 1000}
    params["mix"].update(pool="large", tokens=30_000)
    params["train"].update(model="1M", tokens=2 * 16_384, batch_tokens=8192, warmup_steps=1, eval_sequences=16)
    params["eval"].update(heldout_records=200, tasks_per_family=5, references=10, behaviour_per_suite=3,
                          generation={"max_new_tokens": 16, "batch_size": 16}, judges={"encoder": "hashing", "train_pairs": 300},
                          benchmarks={"winogrande": {"path": str(SHARED_DATA / "eval/icl/winogrande.jsonl"), "format": "winogrande", "limit": 20}})
    params["judge_check"].update(reference=str(small_judged_reference(root / "judged", prompts=8)), micro_judge_prompts=2, bootstrap=100,
                                 hash_bits=12, family_folds=3, model_folds=3)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for key, value in (("user.name", "test"), ("user.email", "test@example.com")):
        subprocess.run(["git", "config", key, value], cwd=root, check=True)
    dvc(root, "init", "-q")
    shutil.copy(REPO / ".dvcignore", root)
    # as in a clone: dvclive (train) fails in a repository without commits (treeverse/dvclive#522)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "project"], cwd=root, check=True)
    dvc(root, "repro")
    return root


def test_repro_writes_every_source_and_the_eval_set(project):
    for name, kept in {"builtin": 3000, "c4": 100, "fineweb": 15}.items():
        metrics = json.loads((project / f"metrics/download/{name}.json").read_text())
        assert metrics["kept"] == kept and metrics["read"] == metrics["kept"] + metrics["rejected"]
        assert (project / f"data/raw/{name}.parquet").exists() and (project / f"data/rejects/download-{name}.parquet").exists()
    assert json.loads((project / "metrics/builtin_eval.json").read_text())["problems"] == 100
    assert "metrics/download/builtin.json" in dvc(project, "metrics", "show", "--json")


def test_generate_sources_flow_through_the_pipeline_and_give_preference_pairs(project):
    dedup = json.loads((project / "metrics/dedup.json").read_text())
    for method in ("self_instruct", "evol_instruct", "magpie"):
        metrics = json.loads((project / f"metrics/download/{method}.json").read_text())
        assert metrics["kind"] == "generate" and metrics["kept"] == 20 and metrics["read"] == 20 + metrics["rejected"]
        assert metrics["rejected_by_reason"].get("capped_response", 0) + metrics["rejected_by_reason"].get("empty_response", 0) > 0
        meta = json.loads(pq.read_table(project / f"data/raw/{method}.parquet").column("meta")[0].as_py())
        assert meta["method"] == method and meta["teacher"].endswith("teacher0") and meta["sampling"]["max_new_tokens"] == 24
        assert dedup["by_source"][method]["in"] == 20  # dedup read the source like any other
    # the LM scorer read every record of the sources that are not built in, and the comparison files
    lm_scorer = json.loads((project / "metrics/quality_scores.json").read_text())["lm_scorer"]
    real = sum(entry["kept"] for name, entry in dedup["by_source"].items() if name != "builtin")
    assert lm_scorer["real_records"] == lm_scorer["pool_records_read"] == real > 0 and lm_scorer["file_records_read"] > 0
    preferences = json.loads((project / "metrics/preferences.json").read_text())["sources"]
    assert set(preferences) == {"magpie"} and preferences["magpie"]["judges"] == ["coherence", "relevance", "teacher"]
    lines = (project / "data/preferences/magpie.jsonl").read_text().splitlines()
    assert len(lines) == preferences["magpie"]["pairs"] > 0


def test_second_repro_is_a_no_op(project):
    before = {p: p.stat().st_mtime_ns for p in (project / "data").rglob("*.parquet")}
    # as on a machine that has not yet imported the stages (or a clone of dvc.lock made elsewhere)
    for cache in (project / "stages").rglob("__pycache__"):
        shutil.rmtree(cache)
    output = dvc(project, "repro")
    assert "Running stage" not in output and "up to date" in output
    assert {p: p.stat().st_mtime_ns for p in (project / "data").rglob("*.parquet")} == before


def test_a_param_change_reruns_only_its_source(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sources"]["c4"]["max_samples"] = 50
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = dvc(project, "repro")
    assert "Running stage 'download@c4'" in output
    assert "Running stage 'download@builtin'" not in output and "Running stage 'builtin_eval'" not in output
    assert json.loads((project / "metrics/download/c4.json").read_text())["kept"] == 50


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_repro_evaluates_the_model(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    metrics = json.loads((project / "metrics/eval.json").read_text())
    heldout = pq.read_metadata(project / "data/heldout/builtin.parquet").num_rows  # 1 % of the source: fewer than heldout_records
    assert metrics["winogrande_items"] == 20 and metrics["tasks_items"] == 25 and metrics["heldout_builtin_records"] == heldout > 0
    # four training steps (32,768 tokens in batches of 8,192): the loss is still near an untrained model's ln(vocabulary)
    assert 0 < metrics["heldout_loss"] < math.log(params["tokenizer"]["vocab_size"]) + 0.5 and 0 <= metrics["judge_relevance_score"] <= 1
    assert json.loads((project / "metrics/judges.json").read_text())["encoder"] == "hashing"


def shell(workdir: Path, script: str) -> subprocess.CompletedProcess:
    """Run a bash script as a user's new shell would: the venv's bin is not on the PATH."""
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != Path(sys.executable).parent)
    result = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_readme_commands_rerun_only_mix_tokenize_train_and_eval_for_a_mix_weight(project):
    """The README's quick start as a user types it: make repro, the activation line, an ablation, the diff."""
    activate = "source .venv/bin/activate"
    assert activate in (REPO / "README.md").read_text()
    shell(project, "make repro")
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=project, check=True)
    run = shell(project, f"{activate} && dvc exp run -S mix.instruction=0.5")
    assert stages_run(run.stdout + run.stderr) == {"mix", "tokenize", "train", "eval"}, run.stdout + run.stderr
    diff = json.loads(shell(project, f"{activate} && dvc metrics diff --json").stdout)
    assert {"heldout_loss", "heldout_bpb"} <= set(diff["metrics/eval.json"]), diff  # the baseline's eval against the experiment's
    instruction = json.loads((project / "metrics/mix.json").read_text())["by_category"]["instruction"]
    assert instruction["requested_share"] == round(0.5 / 1.1, 4)
    assert abs(instruction["effective_share"] - 0.5 / 1.1) < 0.02


def test_exp_run_of_the_pool_compares_quantity(project):
    runs = {}
    for pool in ("small", "large"):
        output = dvc(project, "exp", "run", "-S", f"mix.pool={pool}")
        assert stages_run(output) <= {"mix", "tokenize", "train", "eval"}, output
        runs[pool] = json.loads((project / "metrics/mix.json").read_text())
    assert runs["small"]["pool"] == "small" and runs["large"]["pool"] == "large"
    for category in ("instruction", "knowledge", "web"):
        small, large = runs["small"]["by_category"][category], runs["large"]["by_category"][category]
        assert small["available_tokens"] < large["available_tokens"]
        assert small["passes"] > large["passes"]  # the same budget from less data: more repeats


def test_exp_run_of_a_train_param_reruns_only_train_and_eval_and_plots_the_loss(project):
    output = dvc(project, "exp", "run", "-S", "train.lr=0.001")
    assert stages_run(output) == {"train", "eval"}, output
    assert re.search(r"is for another run \(changed: [^)]*train\.lr\)", output)  # the persisted checkpoint is not resumed
    summary = json.loads((project / "metrics/train/metrics.json").read_text())
    assert summary["model"] == "1M" and summary["steps"] == 4 and summary["train_loss"] > 0
    assert (project / "models/current/model.safetensors").exists()
    plots = json.loads(subprocess.run([DVC, "plots", "show", "--json"], cwd=project, capture_output=True, text=True, check=True).stdout)
    assert {"Loss per step (train and held-out)", "metrics/train/plots/metrics/train/grad_norm.tsv", "plots/eval/tasks.csv"} <= set(plots["data"])


def test_a_queued_grid_runs_with_run_all_and_reports(project):
    # the queue runs HEAD plus the workspace's changes: undo earlier tests' -S sets, commit the rest
    subprocess.run(["git", "checkout", "-q", "HEAD", "--", "params.yaml"], cwd=project, check=True)
    (project / "experiments").mkdir()
    (project / "experiments/tiny.yaml").write_text(yaml.safe_dump({
        "seeds": [0], "seed_params": ["train.seed"],
        "experiments": {"exp3": {"question": "Which mix is best?", "grid": {"mix.strategy": ["equal", "web_heavy"]}}}}))
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "grid baseline"], cwd=project, check=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")

    def python(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", *args], cwd=project, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert "queued 2 of 2 runs" in python("research.experiments", "queue", "--profile", "tiny")
    output = dvc(project, "exp", "run", "--run-all", "-j", "2")
    assert stages_run(output) == {"mix", "tokenize", "train", "eval"}, output
    assert "queued 0 of 2 runs" in python("research.experiments", "queue", "--profile", "tiny")  # finished runs are skipped

    shown = json.loads(subprocess.run([DVC, "exp", "show", "--json", "-A"], cwd=project, env=env, capture_output=True, text=True, check=True).stdout)
    bpb = {e["name"]: e["revs"][0]["data"]["metrics"]["metrics/eval.json"]["data"]["heldout_bpb"]
           for commit in shown for e in commit.get("experiments") or [] if e["name"] in ("exp3-equal-s0", "exp3-web_heavy-s0")}
    assert len(bpb) == 2

    # a commit while the runs ran (the runner commits each row): their rows come from the commit they started from
    baseline = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "moved on while the runs ran"], cwd=project, check=True)
    assert "report: 0 runs finished on HEAD" in python("research.report", "--profile", "tiny", "--runs-only")
    assert f"report: 2 runs finished on {baseline}" in python("research.report", "--profile", "tiny", "--runs-only", "--rev", baseline)
    assert "report: 2 runs (0 missing or failed)" in python("research.report", "--profile", "tiny")
    results = (project / "reports/tiny/results.md").read_text()  # a profile other than cpu: reports/<profile>/
    rows = {}  # each configuration's first row: the results table (the per-category table follows it)
    for line in results.splitlines():
        if line.startswith(("| equal ", "| web_heavy ")):
            rows.setdefault(line.split("|")[1].strip(), line)
    assert set(rows) == {"equal", "web_heavy"}, results
    for config in rows:
        assert f"| {bpb[f'exp3-{config}-s0']:.3f} |" in rows[config]  # the table's bpb is the experiment's own (one seed: no interval)
    runs = (project / "reports/tiny/runs.csv").read_text().splitlines()
    assert len(runs) == 3 and runs[0].startswith("name,experiment,config,seed,rev,training_tokens")
    for plot in ("quality_vs_quantity", "mix", "correlation", "loss_curves"):
        assert (project / f"plots/report/{plot}.png").read_bytes()[:4] == b"\x89PNG"
