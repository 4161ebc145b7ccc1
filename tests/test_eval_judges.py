"""The judges stage on built-in records: held-out accuracy above a floor with
both encoders, scores that tell real responses from mismatched, corrupted and
empty ones, byte-identical files from the same seed, training pairs that do not
depend on the generator's ground truth, real instruction pairs (GPTeacher)
that raise the accuracy on real held-out pairs, the pair samplers, the
corruptions, and errors that say the fix."""

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import SHARED_DATA, run_quality, stage
from synthtrain.sources.download import download
from synthtrain.evaluation import judges
from synthtrain.evaluation.textmetrics import is_repetition_loop
from synthtrain.params import ParamsError, StageError, load_params, parse_params
from synthtrain.records import SCHEMA, RecordWriter, make_record

RECORDS = 6000      # built-in records; about one in four is a clean single-turn instruction pair
HELDOUT = 1500      # of them go to data/heldout (over 350 pairs)
TRAIN_PAIRS = 400
# Held-out accuracy floors (data/heldout, 400 pairs), with margin below what this
# fixture's judges reached with seeds 0, 1 and 2 (trained on the pairs the quality
# stage kept): minilm relevance 0.938-0.960, coherence 0.871-0.906; hashing
# relevance 0.761-0.800, coherence 0.759-0.772.
FLOORS = {"minilm": {"relevance": 0.9, "coherence": 0.8}, "hashing": {"relevance": 0.7, "coherence": 0.7}}
TEST_SPLIT_SLACK = 0.1  # the accuracy on the 20% test split (80 pairs) is noisier: hashing relevance 0.675-0.719


INPUTS = ("data/dedup/train.parquet", "data/quality/scored.parquet", "data/heldout/builtin.parquet")
GPTEACHER = {"gpteacher_codegen": {"path": str(SHARED_DATA / "synthetic/gpteacher-codegen.json")},
             "gpteacher_toolformer": {"path": str(SHARED_DATA / "synthetic/gpteacher-toolformer.json")}}
REAL_PAIRS = 200


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """Built-in records split into data/dedup/train.parquet and data/heldout, and the quality stage's decisions on the first."""
    root = tmp_path_factory.mktemp("builtin")
    download(parse_params({"sources": {"builtin": {"kind": "builtin", "max_samples": RECORDS}}, "download": {"workers": 1}}), "builtin", root)
    records = pq.read_table(root / "data/raw/builtin.parquet")
    for path, rows in (("data/dedup/train.parquet", records.slice(0, RECORDS - HELDOUT)),
                       ("data/heldout/builtin.parquet", records.slice(RECORDS - HELDOUT))):  # fmt: skip
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, root / path)
    run_quality(root)
    return root


def workdir(root: Path, upstream: Path, **judge_params) -> Path:
    """A directory with the files of INPUTS and params.yaml."""
    for path in INPUTS:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(upstream / path, root / path)
    params = {"sources": {"builtin": {"kind": "builtin"}}, "eval": {"judges": {"train_pairs": TRAIN_PAIRS, **judge_params}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def build(root: Path) -> dict:
    return judges.train_judges(load_params(root / "params.yaml"), root)


@pytest.fixture(scope="module")
def trained(upstream, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Judges of both encoders: encoder -> (workdir, metrics)."""
    roots = {encoder: workdir(tmp_path_factory.mktemp(encoder), upstream, encoder=encoder) for encoder in FLOORS}
    return {encoder: (root, build(root)) for encoder, root in roots.items()}


def heldout_pairs(root: Path) -> list[judges.Pair]:
    pairs, _ = judges.sample_pairs([root / "data/heldout/builtin.parquet"], 200, 1, judges.CLEAN)
    return pairs


@pytest.mark.parametrize("encoder", FLOORS)
def test_judges_are_accurate_on_heldout_records(trained, encoder):
    _, metrics = trained[encoder]
    assert metrics["encoder"] == encoder and metrics["pairs"] == TRAIN_PAIRS and metrics["heldout_pairs"] >= 100
    for judge, floor in FLOORS[encoder].items():
        assert metrics[f"{judge}_heldout_accuracy"] >= floor, (judge, metrics)
        assert metrics[f"{judge}_accuracy"] >= floor - TEST_SPLIT_SLACK, (judge, metrics)


def test_relevance_scores_real_responses_above_responses_to_other_instructions(trained):
    root, _ = trained["minilm"]
    pairs = heldout_pairs(root)
    instructions, responses = [p.instruction for p in pairs], [p.response for p in pairs]
    mismatched = responses[1:] + responses[:1]
    real, other = judges.score(root / judges.OUTPUT, instructions, responses), judges.score(root / judges.OUTPUT, instructions, mismatched)
    assert set(real) == {"relevance_score", "coherence_score"}
    assert real["relevance_score"] > 0.8 > 0.2 > other["relevance_score"], (real, other)
    probabilities = judges.judge_probabilities(root / judges.OUTPUT, instructions, responses)
    assert {name: p.shape for name, p in probabilities.items()} == {"relevance": (len(pairs),), "coherence": (len(pairs),)}
    assert real["relevance_score"] == pytest.approx(probabilities["relevance"].mean())


def test_coherence_scores_real_responses_above_loops_and_shuffled_words(trained):
    root, _ = trained["minilm"]
    rng = random.Random(0)
    responses = [p.response for p in heldout_pairs(root) if len(p.response.split()) >= 8][:60]
    instructions = [""] * len(responses)
    coherence = {name: judges.score(root / judges.OUTPUT, instructions, texts)["coherence_score"] for name, texts in (
        ("real", responses), ("loop", [judges.repeat_loop(rng, r) for r in responses]),
        ("shuffled", [judges.shuffle_words(rng, r) for r in responses]))}
    assert coherence["real"] > 0.7 and coherence["loop"] < 0.3 and coherence["shuffled"] < 0.3, coherence


@pytest.mark.parametrize("encoder", FLOORS)
def test_an_empty_reply_scores_0_in_each_judge(trained, encoder):
    """Whitespace and chat markup have none of the flaws the judges learnt to
    see, but they answer nothing."""
    root, _ = trained[encoder]
    pairs = heldout_pairs(root)[:5]
    instructions = [p.instruction for p in pairs]
    empty = ["", " \n\t", "<|im_end|>", "<|im_start|>assistant\n<|im_end|>\n", "assistant\n"]
    probabilities = judges.judge_probabilities(root / judges.OUTPUT, instructions * 2, empty + [p.response for p in pairs])
    assert set(probabilities) == set(judges.JUDGES)
    for name, p in probabilities.items():
        assert (p[:5] == 0).all() and (p[5:] > 0).all(), (name, p)
    assert judges.score(root / judges.OUTPUT, instructions, empty) == {"relevance_score": 0.0, "coherence_score": 0.0}


def test_no_responses_score_nothing(trained):
    root, _ = trained["hashing"]
    assert judges.score(root / judges.OUTPUT, [], []) == {}
    assert {name: len(p) for name, p in judges.judge_probabilities(root / judges.OUTPUT, [], []).items()} == {"relevance": 0, "coherence": 0}


def test_the_same_seed_writes_the_same_files_and_another_seed_other_ones(trained, upstream, tmp_path):
    first, _ = trained["hashing"]
    again = workdir(tmp_path / "again", upstream, encoder="hashing")
    stage(again, "stages.judges")  # as DVC runs it
    files = sorted(p.name for p in (first / judges.OUTPUT).iterdir())
    assert files == ["coherence.npz", "judges.json", "relevance.npz"]
    assert all((first / judges.OUTPUT / f).read_bytes() == (again / judges.OUTPUT / f).read_bytes() for f in files)

    other = workdir(tmp_path / "other", upstream, encoder="hashing")
    params = yaml.safe_load((other / "params.yaml").read_text())
    (other / "params.yaml").write_text(yaml.safe_dump({**params, "eval": {**params["eval"], "seed": 1}}))
    build(other)
    assert (first / judges.OUTPUT / "relevance.npz").read_bytes() != (other / judges.OUTPUT / "relevance.npz").read_bytes()


def without_flaws(path: Path) -> None:
    """Rewrite a records file with meta.flaw taken out of every record's meta."""
    table = pq.read_table(path)
    metas = [json.dumps({k: v for k, v in json.loads(m).items() if k != "flaw"}, sort_keys=True, separators=(",", ":"))
             for m in table.column("meta").to_pylist()]
    index = table.schema.get_field_index("meta")
    pq.write_table(table.set_column(index, table.schema.field(index), pa.array(metas, pa.string())), path)


def test_the_training_pairs_do_not_depend_on_the_ground_truth(trained, upstream, tmp_path):
    """meta.flaw only scores the judges: without it in any training input, the
    same judges are trained, from the pairs the quality stage kept."""
    first, _ = trained["hashing"]
    blind = workdir(tmp_path, upstream, encoder="hashing")
    for path in ("data/dedup/train.parquet", "data/quality/scored.parquet"):
        without_flaws(blind / path)
    assert '"flaw"' not in "".join(pq.read_table(blind / judges.INPUT, columns=["meta"]).column(0).to_pylist())
    build(blind)
    for name in ("relevance.npz", "coherence.npz", "judges.json"):
        assert (blind / judges.OUTPUT / name).read_bytes() == (first / judges.OUTPUT / name).read_bytes(), name

    pairs, read = judges.sample_pairs([blind / judges.INPUT], TRAIN_PAIRS, 0, judges.KEPT_BY_QUALITY)
    assert pairs == judges.sample_pairs([first / judges.INPUT], TRAIN_PAIRS, 0, judges.KEPT_BY_QUALITY)[0]
    scored = pq.read_table(first / judges.INPUT, columns=["category", "messages", "reject_reason"]).to_pylist()
    kept = {judges.single_turn(r["messages"]) for r in scored if r["category"] == "instruction" and r["reject_reason"] is None}
    rejected = {judges.single_turn(r["messages"]) for r in scored if r["category"] == "instruction" and r["reject_reason"]}
    assert all((p.instruction, p.response) in kept and p.flaw is None for p in pairs)
    assert rejected - kept and read["selected"] == len([r for r in scored if r["category"] == "instruction" and r["reject_reason"] is None])


def test_the_judges_files_hold_no_pickle(trained):
    root, metrics = trained["minilm"]
    description = json.loads((root / judges.OUTPUT / "judges.json").read_text())
    assert description["encoder"] == "minilm" and description["judges"]["relevance"]["columns"] == 4 * 384
    for name in judges.JUDGES:
        with np.load(root / judges.OUTPUT / f"{name}.npz", allow_pickle=False) as arrays:
            assert sorted(arrays.files) == ["coefficients", "intercept", "mean", "scale"]
        assert description["judges"][name]["heldout_accuracy"] == metrics[f"{name}_heldout_accuracy"]


# --- real instruction data -------------------------------------------------------------

def real_heldout_accuracy(judges_dir: Path, judge: str, config, seed: int) -> float:
    """The accuracy of the judge in judges_dir on the examples the stage makes from the real held-out pairs of ``config``."""
    _, heldout = judges.split_pairs(judges.read_real(config.real_files, config.real_pairs, seed), config.heldout_fraction, seed)
    examples = judges.examples_of(judge, heldout, f"{judge}:real_heldout:{seed}")
    description, trained = judges.load_judges(judges_dir)
    vectors = judges.embed(judges.encoder_of(description), examples.instructions + examples.responses)
    return judges.accuracy(trained[judge], judges.features(judge, vectors, examples.instructions, examples.responses), examples.labels)


def test_judges_trained_on_real_pairs_too_are_accurate_on_real_heldout_pairs(upstream, tmp_path):
    """GPTeacher pairs (code, tool use) the judges never trained on, scored next
    to the built-in held-out records, and better than by judges that saw no
    real pair (with seeds 0, 1 and 2: relevance 0.86-0.91 against 0.61-0.71,
    coherence 0.63-0.77 against 0.54-0.66)."""
    root = workdir(tmp_path / "real", upstream, encoder="hashing", real_files=GPTEACHER, real_pairs=REAL_PAIRS)
    metrics = build(root)
    assert metrics["real_train_pairs"] == 160 and metrics["real_heldout_pairs"] == 40
    description = json.loads((root / judges.OUTPUT / "judges.json").read_text())
    assert description["pairs"] == {"train": TRAIN_PAIRS, "heldout": metrics["heldout_pairs"], "real_train": 160, "real_heldout": 40}
    builtin_only = workdir(tmp_path / "builtin_only", upstream, encoder="hashing")
    assert build(builtin_only)["real_heldout_pairs"] == 0
    config = load_params(root / "params.yaml").eval.judges
    for judge, floor in FLOORS["hashing"].items():
        assert metrics[f"{judge}_real_heldout_examples"] > 40 and metrics[f"{judge}_real_train_examples"] > 160, (judge, metrics)
        assert metrics[f"{judge}_heldout_accuracy"] >= floor, (judge, metrics)  # the built-in number stays
        assert description["judges"][judge]["real_heldout_accuracy"] == metrics[f"{judge}_real_heldout_accuracy"]
        assert real_heldout_accuracy(root / judges.OUTPUT, judge, config, 0) == metrics[f"{judge}_real_heldout_accuracy"]
        without_real = real_heldout_accuracy(builtin_only / judges.OUTPUT, judge, config, 0)
        assert metrics[f"{judge}_real_heldout_accuracy"] > max(0.5, without_real), (judge, without_real)


def alpaca_file(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows))
    return path


def test_real_pairs_are_read_once_each_and_split_so_that_no_pair_is_on_both_sides(tmp_path):
    rows = [{"instruction": f"Add {i} and 1.", "input": "", "response": f"{i + 1}."} for i in range(30)]
    rows += [{"instruction": "Sort these.", "input": "3, 1, 2", "response": "1, 2, 3"},
             {"instruction": "Say nothing.", "input": "", "response": " "}]  # an empty response makes no record
    files = {"a": {"path": str(alpaca_file(tmp_path / "a.json", rows))},
             "b": {"path": str(alpaca_file(tmp_path / "b.json", rows[:10][::-1]))}}  # the same pairs again
    config = parse_params({"sources": {"builtin": {"kind": "builtin"}}, "eval": {"judges": {"real_files": files}}}).eval.judges
    pairs, read = judges.read_real_pairs(config.real_files, 100, 0)
    assert read == {"files": 2, "rows": 42, "pairs": 31} and len(set(pairs)) == len(pairs) == 31
    assert judges.Pair("Sort these.\n\n3, 1, 2", "1, 2, 3") in pairs  # the input follows the instruction, as a local source renders it
    swapped = {name: config.real_files[name] for name in ("b", "a")}
    assert judges.read_real_pairs(swapped, 10, 0)[0] == judges.read_real_pairs(config.real_files, 10, 0)[0] == pairs[:10]
    assert judges.read_real_pairs(config.real_files, 10, 1)[0] != pairs[:10]  # another seed, another sample
    train, heldout = judges.split_pairs(pairs, 0.2, 0)
    assert len(heldout) == 6 and not set(train) & set(heldout) and sorted(train + heldout, key=str) == sorted(pairs, key=str)


def test_a_missing_real_file_fails_in_one_line_naming_its_key(tmp_path):
    absent = {"gpteacher_codegen": {"path": str(tmp_path / "absent.json")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sources": {"builtin": {"kind": "builtin"}},
                                                          "eval": {"judges": {"real_files": absent}}}))
    result = stage(tmp_path, "stages.judges", check=False)
    errors = [line for line in result.stderr.splitlines() if "eval.judges.real_files" in line]
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(errors) == 1, result.stderr
    assert f"eval.judges.real_files.gpteacher_codegen.path: {tmp_path}/absent.json is missing" in errors[0]

    base = {"sources": {"builtin": {"kind": "builtin"}}}
    optional = {"gpteacher_codegen": {**absent["gpteacher_codegen"], "required": False}}
    skipped = parse_params({**base, "eval": {"judges": {"real_files": optional}}})
    with pytest.raises(StageError, match=r"scored.parquet: no such file"):  # skipped: the stage goes on to its own input
        judges.train_judges(skipped, tmp_path)
    few = {"few": {"path": str(alpaca_file(tmp_path / "few.json", [{"instruction": f"Q{i}?", "response": f"A{i}."} for i in range(5)]))}}
    with pytest.raises(StageError, match=r"^eval.judges.real_files: 5 usable \(instruction, response\) pairs in 5 rows of .*few.json, "
                                         r"the judges need at least 20"):
        judges.train_judges(parse_params({**base, "eval": {"judges": {"real_files": few}}}), tmp_path)


# --- the pair sampler and the corruptions ---------------------------------------------

def conversation(user: str, assistant: str, system: str | None = None, **meta) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return make_record("test", "instruction", messages=messages, meta=meta)


def write(path: Path, records: list[dict]) -> Path:
    with RecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path


def test_the_sample_holds_the_selected_single_turn_instruction_pairs_whatever_the_order(tmp_path):
    clean = [conversation(f"What is {i} + 1?", f"It is {i + 1}.", system="Be brief." if i % 2 else None, flaw=None) for i in range(30)]
    others = [conversation("Say hi.", "I cannot help with that.", flaw="refusal"),
              make_record("test", "instruction", messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                                           {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}]),
              make_record("test", "knowledge", text="The river Dune flows north."),
              make_record("test", "web", messages=[{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Here."}])]
    forward, _ = judges.sample_pairs([write(tmp_path / "a.parquet", clean + others)], 10, 0, judges.CLEAN)
    backward, read = judges.sample_pairs([write(tmp_path / "b.parquet", (clean + others)[::-1])], 10, 0, judges.CLEAN)
    assert forward == backward and len(forward) == 10
    assert all(p.flaw is None and p.response == f"It is {int(p.instruction.split()[2]) + 1}." for p in forward)
    assert read == {"records": 34, "instruction": 32, "selected": 31}  # the multi-turn conversation is selected, but no pair
    assert judges.sample_pairs([tmp_path / "a.parquet"], 10, 1, judges.CLEAN)[0] != forward  # another seed, another sample
    flawed, _ = judges.sample_pairs([tmp_path / "a.parquet"], 10, 0, judges.FLAWED)
    assert flawed == [judges.Pair("Say hi.", "I cannot help with that.", "refusal")]

    # The quality stage's decisions, in a file without meta: the refusal rejected, the rest kept.
    table = pa.Table.from_pylist(clean + others, schema=SCHEMA).drop_columns(["meta"])
    pq.write_table(table.append_column("reject_reason", pa.array([None] * 30 + ["refusal", None, None, None], pa.string())),
                   tmp_path / "scored.parquet")
    kept, read = judges.sample_pairs([tmp_path / "scored.parquet"], 40, 0, judges.KEPT_BY_QUALITY)
    assert sorted(p.response for p in kept) == sorted(r["messages"][-1]["content"] for r in clean)
    assert read == {"records": 34, "instruction": 32, "selected": 31}


TEXT = "Add the ones: 3 + 4 = 7.\nAdd the tens: 2 + 5 = 7.\nWrite them side by side.\nFinal answer: 77"


def test_corruptions_break_the_text_as_documented_and_keep_its_layout():
    rng = random.Random(0)
    truncated = judges.truncate(rng, TEXT)
    assert TEXT.startswith(truncated) and 4 <= len(truncated.split()) <= 2 * len(TEXT.split()) // 3 + 1 and truncated[-1] not in ".!?"
    assert is_repetition_loop(judges.repeat_loop(rng, TEXT)) and not is_repetition_loop(TEXT)
    for shuffle, parts in ((judges.shuffle_words, str.split), (judges.shuffle_sentences, judges.sentences)):
        shuffled = shuffle(rng, TEXT)
        assert shuffled != TEXT and sorted(parts(shuffled)) == sorted(parts(TEXT)) and shuffled.count("\n") == TEXT.count("\n")
    assert judges.shuffle_sentences(rng, "Dune is blue. Dune is long.") is None  # two sentences read fine either way
    assert all(corrupt(rng, "16") is None for corrupt in judges.CORRUPTIONS.values())


# --- errors ---------------------------------------------------------------------------

def test_a_missing_or_too_small_training_file_names_the_file_and_what_is_missing(tmp_path):
    params = parse_params({"sources": {"builtin": {"kind": "builtin"}}})
    with pytest.raises(StageError, match=r"data/quality/scored.parquet: no such file \(run the quality stage first\)"):
        judges.train_judges(params, tmp_path)
    records = [conversation(f"Q{i}?", f"A{i}.") for i in range(8)] + [make_record("test", "web", text="A page.")]
    table = pa.Table.from_pylist(records, schema=SCHEMA).append_column("reject_reason", pa.array([None] * 5 + ["refusal"] * 4))
    (tmp_path / "data/quality").mkdir(parents=True)
    pq.write_table(table, tmp_path / judges.INPUT)
    with pytest.raises(StageError, match=r"scored.parquet: 5 usable \(instruction, response\) pairs, the judges need at least 20: "
                                         r"single-turn .* kept by the quality stage; the file has 9 records, 8 of category "
                                         r"instruction, 5 of them kept by the quality stage"):
        judges.train_judges(params, tmp_path)


def test_the_command_line_reports_errors_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sources": {"builtin": {"kind": "builtin"}}, "eval": {"judges": {"encoder": "bert"}}}))
    result = stage(tmp_path, "stages.judges", check=False)
    assert result.returncode == 1 and "eval.judges.encoder" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(ParamsError, match="eval.judges.train_pairs"):
        parse_params({"sources": {"builtin": {"kind": "builtin"}}, "eval": {"judges": {"train_pairs": 5}}})


def test_scoring_without_judges_or_with_other_ones_says_how_to_make_them(trained, tmp_path):
    with pytest.raises(StageError, match=r"no trained judges .*dvc repro judges"):
        judges.score(tmp_path / "models/judges", ["Q?"], ["A."])
    root, _ = trained["hashing"]
    old = tmp_path / "old"
    old.mkdir()
    for name in ("relevance.npz", "coherence.npz"):
        (old / name).write_bytes((root / judges.OUTPUT / name).read_bytes())
    description = json.loads((root / judges.OUTPUT / "judges.json").read_text())
    (old / "judges.json").write_text(json.dumps({**description, "format": 0}))
    with pytest.raises(StageError, match=r"another version of synthtrain/evaluation/judges.py; run `dvc repro judges`"):
        judges.score(old, ["Q?"], ["A."])
    (old / "judges.json").write_text(json.dumps({**description, "hash_bits": 8}))  # another feature width
    with pytest.raises(StageError, match=r"relevance.npz: 4096 features, but its encoder gives 1024; run `dvc repro judges`"):
        judges.score(old, ["Q?"], ["A."])
