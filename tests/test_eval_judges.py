"""The judges stage on built-in records: held-out accuracy above a floor with
both encoders, scores that tell real responses from mismatched and corrupted
ones, byte-identical files from the same seed, the pair sampler, the
corruptions, and errors that say the fix."""

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import stage
from synthtrain.sources.download import download
from synthtrain.evaluation import judges
from synthtrain.evaluation.textmetrics import is_repetition_loop
from synthtrain.params import ParamsError, StageError, load_params, parse_params
from synthtrain.records import RecordWriter, make_record

RECORDS = 6000      # built-in records; about one in four is a clean single-turn instruction pair
HELDOUT = 1500      # of them go to data/heldout (over 350 pairs)
TRAIN_PAIRS = 400
# Held-out accuracy floors (data/heldout, 400 pairs), with margin below what this
# fixture's judges reached with seeds 0, 1 and 2: minilm relevance 0.956-0.966,
# coherence 0.855-0.878; hashing relevance 0.75-0.82, coherence 0.75-0.78. On the
# pipeline's data (2,000 pairs) minilm reaches 0.96 and 0.91, hashing 0.86 and 0.84.
FLOORS = {"minilm": {"relevance": 0.9, "coherence": 0.8}, "hashing": {"relevance": 0.7, "coherence": 0.7}}
TEST_SPLIT_SLACK = 0.1  # the accuracy on the 20% test split (80 pairs) is noisier: hashing coherence 0.64-0.82


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("builtin")
    download(parse_params({"sources": {"builtin": {"kind": "builtin", "max_samples": RECORDS}}, "download": {"workers": 1}}), "builtin", root)
    return root / "data/raw/builtin.parquet"


def workdir(root: Path, pool: Path, **judge_params) -> Path:
    """A directory with data/dedup/train.parquet, data/heldout/builtin.parquet and params.yaml."""
    records = pq.read_table(pool)
    for path, rows in (("data/dedup/train.parquet", records.slice(0, RECORDS - HELDOUT)),
                       ("data/heldout/builtin.parquet", records.slice(RECORDS - HELDOUT))):  # fmt: skip
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, root / path)
    params = {"sources": {"builtin": {"kind": "builtin"}}, "eval": {"judges": {"train_pairs": TRAIN_PAIRS, **judge_params}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def build(root: Path) -> dict:
    return judges.train_judges(load_params(root / "params.yaml"), root)


@pytest.fixture(scope="module")
def trained(pool, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Judges of both encoders: encoder -> (workdir, metrics)."""
    roots = {encoder: workdir(tmp_path_factory.mktemp(encoder), pool, encoder=encoder) for encoder in FLOORS}
    return {encoder: (root, build(root)) for encoder, root in roots.items()}


def heldout_pairs(root: Path) -> list[judges.Pair]:
    pairs, _ = judges.sample_pairs([root / "data/heldout/builtin.parquet"], 200, seed=1)
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


def test_no_responses_score_nothing(trained):
    root, _ = trained["hashing"]
    assert judges.score(root / judges.OUTPUT, [], []) == {}
    assert {name: len(p) for name, p in judges.judge_probabilities(root / judges.OUTPUT, [], []).items()} == {"relevance": 0, "coherence": 0}


def test_the_same_seed_writes_the_same_files_and_another_seed_other_ones(trained, pool, tmp_path):
    first, _ = trained["hashing"]
    again = workdir(tmp_path / "again", pool, encoder="hashing")
    stage(again, "stages.judges")  # as DVC runs it
    files = sorted(p.name for p in (first / judges.OUTPUT).iterdir())
    assert files == ["coherence.npz", "judges.json", "relevance.npz"]
    assert all((first / judges.OUTPUT / f).read_bytes() == (again / judges.OUTPUT / f).read_bytes() for f in files)

    other = workdir(tmp_path / "other", pool, encoder="hashing")
    params = yaml.safe_load((other / "params.yaml").read_text())
    (other / "params.yaml").write_text(yaml.safe_dump({**params, "eval": {**params["eval"], "seed": 1}}))
    build(other)
    assert (first / judges.OUTPUT / "relevance.npz").read_bytes() != (other / judges.OUTPUT / "relevance.npz").read_bytes()


def test_the_judges_files_hold_no_pickle(trained):
    root, metrics = trained["minilm"]
    description = json.loads((root / judges.OUTPUT / "judges.json").read_text())
    assert description["encoder"] == "minilm" and description["judges"]["relevance"]["columns"] == 4 * 384
    for name in judges.JUDGES:
        with np.load(root / judges.OUTPUT / f"{name}.npz", allow_pickle=False) as arrays:
            assert sorted(arrays.files) == ["coefficients", "intercept", "mean", "scale"]
        assert description["judges"][name]["heldout_accuracy"] == metrics[f"{name}_heldout_accuracy"]


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


def test_the_sample_holds_clean_single_turn_instruction_pairs_whatever_the_order(tmp_path):
    clean = [conversation(f"What is {i} + 1?", f"It is {i + 1}.", system="Be brief." if i % 2 else None, flaw=None) for i in range(30)]
    others = [conversation("Say hi.", "I cannot help with that.", flaw="refusal"),
              make_record("test", "instruction", messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                                           {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}]),
              make_record("test", "knowledge", text="The river Dune flows north."),
              make_record("test", "web", messages=[{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Here."}])]
    forward, _ = judges.sample_pairs([write(tmp_path / "a.parquet", clean + others)], 10, seed=0)
    backward, read = judges.sample_pairs([write(tmp_path / "b.parquet", (clean + others)[::-1])], 10, seed=0)
    assert forward == backward and len(forward) == 10
    assert all(p.flaw is None and p.response == f"It is {int(p.instruction.split()[2]) + 1}." for p in forward)
    assert read == {"records": 34, "instruction": 32, "flawed": 1}
    assert judges.sample_pairs([tmp_path / "a.parquet"], 10, seed=1)[0] != forward  # another seed, another sample
    flawed, _ = judges.sample_pairs([tmp_path / "a.parquet"], 10, seed=0, flawed=True)
    assert flawed == [judges.Pair("Say hi.", "I cannot help with that.", "refusal")]


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
    with pytest.raises(StageError, match=r"data/dedup/train.parquet: no such file \(run the dedup stage first\)"):
        judges.train_judges(params, tmp_path)
    write(tmp_path / "data/dedup/train.parquet", [conversation(f"Q{i}?", f"A{i}.") for i in range(5)]
          + [make_record("test", "web", text="A page.")])
    with pytest.raises(StageError, match=r"train.parquet: 5 usable \(instruction, response\) pairs, the judges need at least 20: "
                                         r"single-turn .* the file has 6 records, 5 of category instruction, 0 of them flawed"):
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
