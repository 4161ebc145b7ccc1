"""Issue 17, the params, train and eval parts: strict types in params (booleans are
not numbers, numbers are not booleans), a source written as a string, a refused
training run that leaves every file as it was, another run's checkpoint moved
aside (or deleted on request) instead of deleted, an eval stage that checks
all of its inputs before it scores anything, and the outputs written whole or
not at all: output directories (token shards, held-out files, a model) swapped
in when the stage succeeds, text outputs (the eval plots) renamed with them."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import SHARED_DATA, save_untrained_model, split_builtin_records, stage, write_preference_judge, write_train_tokens
from synthtrain.dedup import dedup
from synthtrain.evaluation import suite
from synthtrain.params import ParamsError, StageError, load_params, parse_params
from synthtrain.records import (RecordWriter, current_path, make_record, open_parquet, output_directory, output_transaction,
                                write_output_text)
from synthtrain.tokens.packing import tokenize
from synthtrain.training import CHECKPOINTS, find_checkpoint, make_room
from test_train import PARAMS as TRAIN_PARAMS
from test_train import TRAIN, tokens, workdir  # noqa: F401  (tokens: the module's token shards fixture)

BUILTIN = {"kind": "builtin", "max_samples": 10}


def error_of(raw: dict) -> str:
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    return str(info.value)


# --- params: strict types ----------------------------------------------------------------
@pytest.mark.parametrize("section, key, value", [
    ("sources.builtin", "max_samples", True), ("sources.builtin", "seed", False), ("world", "qa_fraction", True),
    ("train", "lr", True), ("train", "tokens", True), ("mix", "tokens", False), ("train", "peak_tflops", True),
])  # fmt: skip
def test_a_boolean_is_not_a_number(section, key, value):
    raw = {"sources": {"builtin": dict(BUILTIN)}}
    target = raw["sources"]["builtin"] if section == "sources.builtin" else raw.setdefault(section, {})
    target[key] = value
    message = error_of(raw)
    assert f"{section}.{key} = {value!r}: a boolean is not a number" in message and "yes/no" in message


def test_booleans_inside_lists_and_maps_are_refused_too():
    assert "sample.sizes.10K = True: a boolean is not a number" in error_of(
        {"sources": {"builtin": BUILTIN}, "sample": {"sizes": {"10K": True}}})
    generate = {"kind": "generate", "teacher": "t", "method": "magpie", "n": 1, "preferences": {"temperatures": [0.5, True]}}
    assert "sources.gen.preferences.temperatures.1 = True: a boolean is not a number" in error_of({"sources": {"gen": generate}})


def test_yaml_yes_is_a_boolean_so_it_is_refused_as_a_number(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("sources:\n  builtin:\n    kind: builtin\n    max_samples: yes\n")
    with pytest.raises(ParamsError, match=r"sources\.builtin\.max_samples = True: a boolean is not a number"):
        load_params(path)


@pytest.mark.parametrize("value", [1, 0, "true", "yes"])
def test_a_number_or_a_string_is_not_a_boolean(value):
    message = error_of({"sources": {"builtin": BUILTIN}, "train": {"over_budget": value}})
    assert f"train.over_budget = {value!r}: write true or false" in message


def test_valid_params_keep_working(tmp_path):
    """Floats take YAML integers and the exponent floats PyYAML reads as strings;
    booleans take YAML 1.1's yes/no and on/off (documented in params.py)."""
    path = tmp_path / "params.yaml"
    path.write_text("sources:\n  builtin: {kind: builtin, max_samples: 1000}\n"
                    "train: {lr: 3e-4, max_hours: 2, budget_usd: 1, over_budget: yes, compile: off, tokens: null}\n"
                    "mix: {tokens: 2_000_000}\n")  # fmt: skip
    train = load_params(path).train
    assert train.lr == 3e-4 and train.max_hours == 2.0 and isinstance(train.max_hours, float) and train.budget_usd == 1.0
    assert train.over_budget is True and train.compile is False and train.tokens is None
    assert load_params(path).mix.tokens == 2_000_000


def test_a_boolean_for_a_string_says_to_quote_it():
    hub = {"kind": "hub", "name": "some/dataset", "config": False, "max_samples": 1}
    message = error_of({"sources": {"web": hub}})
    assert "sources.web.config = False" in message and "yes/no and on/off as booleans: quote the value" in message


def test_the_repo_params_files_are_valid_and_default_to_keeping_checkpoints():
    for name in ("params.yaml", "params-gpu.yaml"):
        assert load_params(Path(__file__).parent.parent / name).train.discard_checkpoint is False


# --- params: a source that is not a mapping ------------------------------------------------
@pytest.mark.parametrize("value, said", [
    ("builtin", "got the string 'builtin'; write for example `builtin: {kind: builtin}`"),
    ("web", "got the string 'web'"), (None, "got no value"), (5, "got the number 5"), (["kind", "builtin"], "got a list of 2 item(s)"),
])  # fmt: skip
def test_a_source_that_is_not_a_mapping_says_what_is_expected(value, said):
    message = error_of({"sources": {"builtin": value}})
    assert message == ("params.yaml: sources.builtin: expected a mapping with a kind (one of builtin, hub, local, generate) "
                       f"and its settings, {said}")


# --- train: a refused run destroys nothing ---------------------------------------------------
def write_train_params(root: Path, **train) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump({**TRAIN_PARAMS, "train": {**TRAIN, **train}}))


def snapshot(root: Path, *directories: str) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for directory in directories
            for path in sorted((root / directory).rglob("*")) if path.is_file()}  # fmt: skip


OUTPUTS = ("models/checkpoint", "models/current", "metrics/train")


@pytest.fixture(scope="module")
def four_steps(tokens, tmp_path_factory) -> Path:  # noqa: F811
    """A workdir after a 4-step run: its checkpoint (step 4), model and metrics."""
    root = workdir(tokens, tmp_path_factory.mktemp("four_steps"), tokens=1024 * 4)
    stage(root, "stages.train")
    return root


def copy_of(four_steps: Path, shards: Path, path: Path, **train) -> Path:
    """A workdir holding a copy of the 4-step run's outputs, with train params changed by `train`."""
    root = workdir(shards, path, **train)
    for directory in OUTPUTS:
        shutil.copytree(four_steps / directory, root / directory)
    return root


def asides(root: Path) -> list[str]:
    return sorted(path.name for path in (root / "models").glob("checkpoint-*"))


def test_a_refused_run_leaves_the_checkpoint_and_the_outputs_as_they_were(four_steps, tokens, tmp_path):  # noqa: F811
    root = copy_of(four_steps, tokens, tmp_path, tokens=1024 * 24, max_hours=1e-6, guard_steps=2)
    before = snapshot(root, *OUTPUTS)
    result = stage(root, "stages.train", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "over train.max_hours" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert "the checkpoint at step 4 is for another run (changed: train.tokens)" in result.stderr
    assert "is kept until the budget guard accepts this run, then moved aside to models/checkpoint-4-" in result.stderr
    assert snapshot(root, *OUTPUTS) == before and asides(root) == []  # same files, same bytes, nothing moved


def test_an_accepted_run_moves_the_other_runs_checkpoint_aside_and_names_it(four_steps, tokens, tmp_path):  # noqa: F811
    root = copy_of(four_steps, tokens, tmp_path, tokens=1024 * 8, guard_steps=2)
    before = snapshot(root, "models/checkpoint")
    result = stage(root, "stages.train")
    moved = re.search(r"moved the checkpoint at step 4 of the other run aside to (models/checkpoint-4-[0-9a-f]{8})/", result.stderr)
    assert moved, result.stderr
    assert f"then moved aside to {moved[1]}/" in result.stderr  # announced before, under the same name
    assert asides(root) == [Path(moved[1]).name]
    assert snapshot(root, moved[1]) == {name.replace("models/checkpoint", moved[1], 1): data for name, data in before.items()}
    assert json.loads((root / "models/checkpoint/last/state.json").read_text())["step"] == 8

    write_train_params(root, tokens=1024 * 6, guard_steps=2, discard_checkpoint=True)
    result = stage(root, "stages.train")
    assert "deleted the checkpoint at step 8 of the other run in models/checkpoint/ (train.discard_checkpoint: true)" in result.stderr
    assert asides(root) == [Path(moved[1]).name]  # nothing new moved aside
    assert json.loads((root / "models/checkpoint/last/state.json").read_text())["step"] == 6


def test_finding_a_checkpoint_changes_nothing_and_make_room_tidies_after(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, content in ((".previous", {"step": 3, "run": {"train": {"seed": 1}}}), (".staging", {"step": 9})):
        (CHECKPOINTS / name).mkdir(parents=True)
        (CHECKPOINTS / name / "state.json").write_text(json.dumps(content))
    before = snapshot(tmp_path, "models")
    found = find_checkpoint({"train": {"seed": 0}})
    assert found.directory == CHECKPOINTS / ".previous" and found.state is None and found.step == 3
    assert "is for another run (changed: train.seed)" in found.why and snapshot(tmp_path, "models") == before
    assert make_room(found, discard=False) == (f"moved the checkpoint at step 3 of the other run aside to {found.aside}/ (to resume "
                                               "that run, set its params back and make it models/checkpoint again; "
                                               "delete it when it is no longer needed)")  # fmt: skip
    assert sorted(p.name for p in found.aside.iterdir()) == ["last"] and not CHECKPOINTS.exists()  # .previous restored, .staging gone

    (CHECKPOINTS / "last").mkdir(parents=True)
    (CHECKPOINTS / "last/state.json").write_text("{not json")
    found = find_checkpoint({"train": {"seed": 0}})
    assert found.state is None and "is unreadable (JSONDecodeError" in found.why and found.aside.name.startswith("checkpoint-unreadable-")
    assert make_room(found, discard=True).startswith("deleted the unreadable checkpoint") and not CHECKPOINTS.exists()
    assert len(asides(tmp_path)) == 1


# --- eval: every input checked before anything is scored ----------------------------------------
VOCAB = 1024
EVAL_PARAMS = {"sources": {"builtin": {"kind": "builtin"}}, "builtin_eval": {"per_family": 2},
               "tokenizer": {"vocab_size": VOCAB, "train_records": 500}, "tokenize": {"seq_len": 64},
               "eval": {"heldout_records": 50, "tasks_per_family": 2, "references": 4, "behaviour_per_suite": 1,
                        "generation": {"max_new_tokens": 4}, "judges": {"encoder": "hashing", "train_pairs": 100}}}
EVAL_INPUTS = ("data/heldout", "data/raw/builtin_eval.parquet", "data/tokens", "models/current", "models/judges", "models/preference_judge")


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory) -> Path:
    """Everything the eval stage reads: held-out records, built-in problems, judges and an untrained 1M model."""
    root = tmp_path_factory.mktemp("eval_inputs")
    split_builtin_records(root, 1000, 800)
    (root / "params.yaml").write_text(yaml.safe_dump(EVAL_PARAMS))
    for module in ("stages.builtin_eval", "stages.train_tokenizer", "stages.judges"):
        stage(root, module)
    write_train_tokens(root)
    write_preference_judge(root)
    save_untrained_model(root, 64)
    return root


def eval_workdir(inputs: Path, path: Path, without: tuple[str, ...] = (), **eval_keys) -> Path:
    """A workdir linking the inputs (but those in `without`) with eval keys changed."""
    for name in EVAL_INPUTS:
        if name not in without:
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).symlink_to(inputs / name)
    (path / "params.yaml").write_text(yaml.safe_dump({**EVAL_PARAMS, "eval": {**EVAL_PARAMS["eval"], **eval_keys}}))
    return path


def good_benchmark() -> dict:
    return {"path": str(SHARED_DATA / "eval/icl/winogrande.jsonl"), "format": "winogrande", "limit": 4}


def test_a_missing_required_benchmark_fails_before_anything_is_scored(eval_inputs, tmp_path):
    root = eval_workdir(eval_inputs, tmp_path, benchmarks={"winogrande": good_benchmark(),
                                                           "arc": {"path": "bench/arc.jsonl", "format": "multiple_choice"}})
    result = stage(root, "stages.eval", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors == ["error: eval.benchmarks.arc.path: bench/arc.jsonl is missing; put the file there, correct the path, "
                      "or set required: false to skip it"]
    assert not (root / "data/eval").exists() and not (root / "metrics").exists() and not (root / "plots").exists()


def broken_heldout(root: Path) -> None:
    (root / "data/heldout").mkdir(parents=True)
    (root / "data/heldout/builtin.parquet").write_bytes(b"not a parquet file")


def wrong_fields(root: Path) -> dict:
    (root / "bench.jsonl").write_text('{"question": "?", "answer": 1}\n')
    return {"bench": {"path": "bench.jsonl", "format": "multiple_choice"}}


@pytest.mark.parametrize("case, without, expected", [
    ("benchmark", (), r"^eval\.benchmarks\.arc\.path: bench/arc\.jsonl is missing"),
    ("fields", (), r"bench\.jsonl: line 1 has no field 'query' of format multiple_choice"),
    ("directory", (), r"a_directory: cannot be read as a JSONL file of format hellaswag \(IsADirectoryError"),
    ("judges", ("models/judges",), r"^models/judges: no trained judges .*run `dvc repro judges`"),
    ("preference judge", ("models/preference_judge",), r"^models/preference_judge: no preference judge .*run `dvc repro judge_check`"),
    ("problems", ("data/raw/builtin_eval.parquet",), r"^data/raw/builtin_eval\.parquet is missing: run `dvc repro builtin_eval`"),
    ("heldout", ("data/heldout",), r"^data/heldout/ is missing: run `dvc repro dedup`"),
    ("garbage", ("data/heldout",), r"^data/heldout/builtin\.parquet cannot be read as Parquet .*run `dvc repro dedup`"),
    ("model", ("models/current",), r"^models/current holds no model"),
])  # fmt: skip
def test_each_input_is_checked_before_scoring(eval_inputs, tmp_path, monkeypatch, case, without, expected):
    root = eval_workdir(eval_inputs, tmp_path, without)
    benchmarks = {"arc": {"path": "bench/arc.jsonl", "format": "multiple_choice"}} if case == "benchmark" else {}
    if case == "fields":
        benchmarks = wrong_fields(root)
    if case == "directory":
        (root / "a_directory").mkdir()
        benchmarks = {"dir": {"path": "a_directory", "format": "hellaswag"}}
    if case == "garbage":
        broken_heldout(root)
    params = parse_params({**EVAL_PARAMS, "eval": {**EVAL_PARAMS["eval"], "benchmarks": benchmarks}})
    monkeypatch.chdir(root)

    def scoring(*args, **kwargs):
        raise AssertionError("scoring started before every input was checked")

    for name in ("heldout_metrics", "Generator", "task_problems"):
        monkeypatch.setattr(suite, name, scoring)
    with pytest.raises(StageError) as info:
        suite.evaluate(params, suite.MODEL)
    assert re.search(expected, str(info.value)), str(info.value)


def test_an_optional_missing_benchmark_does_not_stop_the_checks(eval_inputs, tmp_path, monkeypatch):
    root = eval_workdir(eval_inputs, tmp_path)
    params = parse_params({**EVAL_PARAMS, "eval": {**EVAL_PARAMS["eval"], "benchmarks": {
        "arc": {"path": "bench/arc.jsonl", "format": "multiple_choice", "required": False}, "winogrande": good_benchmark()}}})
    monkeypatch.chdir(root)
    assert suite.check_inputs(params) == [Path("data/heldout/builtin.parquet")]


# --- atomic outputs: directories, text files, and the stages that write them ----------------------
def temporaries(root: Path) -> list[Path]:
    """What a write leaves besides its outputs: "<name>.tmp-<pid>" files and directories, "<name>.old-<pid>" directories."""
    return sorted(path for pattern in ("*.tmp-*", "*.old-*") for path in root.rglob(pattern))


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_an_output_directory_replaces_the_whole_directory_or_nothing(tmp_path):
    target = tmp_path / "out/tokens"
    (target / "heldout").mkdir(parents=True)
    (target / "old.npy").write_bytes(b"old")
    (target / "heldout/gone.npy").write_bytes(b"a source that is no more")
    before = snapshot(tmp_path, "out")

    with pytest.raises(RuntimeError), output_transaction():  # the stage fails after writing the directory and a file
        with output_directory(target) as new:
            (new / "new.npy").write_bytes(b"new")
        write_output_text(tmp_path / "out/plot.csv", "x,y\n")
        raise RuntimeError("the stage fails after writing")
    assert snapshot(tmp_path, "out") == before and not temporaries(tmp_path)

    with pytest.raises(RuntimeError), output_directory(target) as new:  # no transaction: fails inside the block
        (new / "new.npy").write_bytes(b"new")
        raise RuntimeError("the writer fails")
    assert snapshot(tmp_path, "out") == before and not temporaries(tmp_path)

    with output_transaction():
        with output_directory(target) as new:
            (new / "new.npy").write_bytes(b"new")
            with RecordWriter(new / "sub/records.parquet") as writer:  # a file with a temporary of its own, inside
                writer.write(make_record("s", "web", text="kept"))
        assert snapshot(tmp_path, "out/tokens") == before  # held back until the stage succeeds
        assert current_path(target / "new.npy").read_bytes() == b"new"  # but the stage reads what it wrote
        assert open_parquet(target / "sub/records.parquet").read().num_rows == 1
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == ["new.npy", "sub/records.parquet"]
    assert not temporaries(tmp_path)


def test_an_output_directory_tidies_what_a_killed_write_left(tmp_path):
    target = tmp_path / "models/tokenizer"
    target.mkdir(parents=True)
    (target / "tokenizer.json").write_text("old")
    pid = dead_pid()
    # killed between the swap's two renames: the old directory is aside, the new one not in place
    target.rename(tmp_path / f"models/tokenizer.old-{pid}")
    (tmp_path / f"models/tokenizer.tmp-{pid}").mkdir()
    (tmp_path / f"models/tokenizer.tmp-{pid}/tokenizer.json").write_text("half")
    with pytest.raises(RuntimeError), output_directory(target):
        raise RuntimeError("this run fails too")
    assert (target / "tokenizer.json").read_text() == "old" and not temporaries(tmp_path)
    with output_directory(target) as new:
        (new / "tokenizer.json").write_text("new")
    assert [p.name for p in target.iterdir()] == ["tokenizer.json"] and (target / "tokenizer.json").read_text() == "new"
    assert not temporaries(tmp_path)


def test_a_failed_stage_removes_the_directories_it_made_for_its_outputs(tmp_path):
    (tmp_path / "data/kept").mkdir(parents=True)
    with pytest.raises(RuntimeError), output_transaction():
        write_output_text(tmp_path / "data/raw/new/a.csv", "x\n")
        write_output_text(tmp_path / "data/kept/b.csv", "y\n")
        with output_directory(tmp_path / "models/current"):
            pass
        raise RuntimeError("the stage fails")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["data", "data/kept"]


def test_a_failed_tokenize_keeps_the_previous_token_shards(tokens, tmp_path, monkeypatch):  # noqa: F811
    for name in ("models/tokenizer", "data/mix", "data/heldout", "data/tokens"):
        shutil.copytree(tokens / name, tmp_path / name)
    (tmp_path / "data/heldout/zzz.parquet").write_bytes(b"not Parquet")  # read last, after the other shards are written
    before = snapshot(tmp_path, "data/tokens")
    params = parse_params({**TRAIN_PARAMS, "tokenize": {"seq_len": 32}})  # other shards than those on disk
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError, match="zzz.parquet: not a readable Parquet file"), output_transaction():
        tokenize(params)
    assert snapshot(tmp_path, "data/tokens") == before and not temporaries(tmp_path)

    (tmp_path / "data/heldout/zzz.parquet").unlink()
    (tmp_path / "data/tokens/heldout/gone").mkdir()
    (tmp_path / "data/tokens/heldout/gone/index.json").write_text("{}")  # the shards of a source that is no more
    with output_transaction():
        tokenize(params)
        assert (tmp_path / "data/tokens/heldout/gone").exists()  # replaced only when the stage succeeds
    assert sorted(p.name for p in (tmp_path / "data/tokens/heldout").iterdir()) == ["builtin"]
    assert json.loads((tmp_path / "data/tokens/metadata.json").read_text())["seq_len"] == 32
    assert json.loads((tmp_path / "data/tokens/train/index.json").read_text())["seq_len"] == 32
    assert not temporaries(tmp_path)


def test_eval_plots_change_only_when_the_stage_succeeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite.write_plots({"tasks_arithmetic_accuracy": 0.5, "heldout_builtin_web_bpb": 2.0})
    before = snapshot(tmp_path, "plots")
    with pytest.raises(RuntimeError), output_transaction():
        suite.write_plots({"tasks_arithmetic_accuracy": 0.75, "heldout_builtin_web_bpb": 1.5})
        raise RuntimeError("the stage fails after writing its plots")
    assert snapshot(tmp_path, "plots") == before and not temporaries(tmp_path)
    with output_transaction():
        suite.write_plots({"tasks_arithmetic_accuracy": 0.75, "heldout_builtin_web_bpb": 1.5})
    assert (tmp_path / "plots/eval/tasks.csv").read_text() == "family,accuracy\narithmetic,0.75\n"
    assert (tmp_path / "plots/eval/heldout.csv").read_text() == "set,bpb\nbuiltin_web,1.5\n"


def dedup_inputs(root: Path) -> None:
    """Two sources of distinct documents in data/raw."""
    for source in ("a", "b"):
        with RecordWriter(root / f"data/raw/{source}.parquet") as writer:
            for i in range(30):
                words = [f"{source}{i}word{k}" for k in range(40)]
                writer.write(make_record(source, "knowledge", text=" ".join(words)))


def dedup_params(*sources: str):
    return parse_params({"sources": {name: {"kind": "local", "path": f"{name}.jsonl", "category": "knowledge", "max_samples": 100}
                                     for name in sources},
                         "dedup": {"heldout": {"fraction": 0.2, "max_per_source": 3}, "workers": 1}})


def test_a_failed_dedup_keeps_every_held_out_file(tmp_path, monkeypatch):
    dedup_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    with output_transaction():
        dedup(dedup_params("a", "b"))
    assert sorted(p.name for p in (tmp_path / "data/heldout").iterdir()) == ["a.parquet", "b.parquet"]
    before = snapshot(tmp_path, "data/heldout", "data/dedup")
    with pytest.raises(RuntimeError), output_transaction():  # source b is dropped, then the stage fails
        dedup(dedup_params("a"))
        raise RuntimeError("the stage fails after dedup")
    assert snapshot(tmp_path, "data/heldout", "data/dedup") == before and not temporaries(tmp_path)
    with output_transaction():
        dedup(dedup_params("a"))
    assert sorted(p.name for p in (tmp_path / "data/heldout").iterdir()) == ["a.parquet"]  # b's file goes when the stage succeeds
    assert (tmp_path / "data/heldout/a.parquet").read_bytes() == before["data/heldout/a.parquet"]
    assert not temporaries(tmp_path)


def test_eval_samples_change_only_when_the_stage_succeeds(eval_inputs, tmp_path, monkeypatch):
    quick = {"heldout_records": 0, "tasks_per_family": 1, "references": 2, "generation": {"max_new_tokens": 2}}  # two runs of a few s
    root = eval_workdir(eval_inputs, tmp_path, **quick)
    (root / "data/eval/tasks").mkdir(parents=True)
    (root / "data/eval/samples.jsonl").write_text('{"suite": "old"}\n')
    (root / "data/eval/tasks/dropped.yaml").write_text("task: synth_dropped\n")  # of a benchmark no longer asked for
    before = snapshot(root, "data/eval")
    params = load_params(root / "params.yaml")
    monkeypatch.chdir(root)
    with pytest.raises(RuntimeError), output_transaction():
        suite.evaluate(params, suite.MODEL)
        raise RuntimeError("the stage fails after evaluating")
    assert snapshot(root, "data/eval") == before and not (root / "plots").exists() and not temporaries(root)
    with output_transaction():
        suite.evaluate(params, suite.MODEL)
    assert sorted(p.name for p in (root / "data/eval").iterdir()) == ["samples.jsonl"]
    assert all(json.loads(line)["suite"] != "old" for line in (root / "data/eval/samples.jsonl").read_text().splitlines())
    assert sorted(p.name for p in (root / "plots/eval").iterdir()) == ["benchmarks.csv", "heldout.csv", "tasks.csv"]
    assert not temporaries(root)
