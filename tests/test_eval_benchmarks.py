"""synthtrain/evaluation/benchmarks.py: local benchmarks as lm-eval tasks, scored on a tiny random model.

No mocks: a byte-level BPE tokenizer trained on TinyStories and a randomly
initialised 1M-preset Llama, scored by lm-eval itself, in-process and through its
command line on the written task YAMLs.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SHARED_DATA
from synthtrain.evaluation.benchmarks import check_benchmarks, check_format, run_benchmarks, write_task_yamls
from synthtrain.model import build_model, llama_config
from synthtrain.params import BENCHMARK_FORMATS, EvalBenchmark, StageError
from synthtrain.tokens.bpe import train_bpe

EVAL = SHARED_DATA / "eval"
BATCH = 16
pytestmark = pytest.mark.skipif(not EVAL.is_dir(), reason="needs ../shared/data/eval")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: light on a shared 2-core machine, where two threads of a
    model this small spent more time waiting on each other than computing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 1M-preset model and a 512-token BPE tokenizer, saved as models/current is."""
    path = tmp_path_factory.mktemp("model")
    stories = (SHARED_DATA / "synthetic/tinystories-val.txt").read_text().split("\n\n")[:2000]
    tokenizer = train_bpe(stories, 512, split_digits=True)
    torch.manual_seed(0)
    model = build_model(llama_config("1M", len(tokenizer), 512, tokenizer.eos_token_id, tokenizer.pad_token_id))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def benchmark(path, format, limit=None, required=True) -> EvalBenchmark:
    return EvalBenchmark(path=str(path), format=format, limit=limit, required=required)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_scores_agree_with_lm_eval_run_by_hand_on_the_written_yaml(loaded, model_dir, tmp_path):
    benchmarks = {"arc_easy": benchmark(EVAL / "icl/arc_easy.jsonl", "multiple_choice", limit=20),
                  "blimp": benchmark(EVAL / "blimp/anaphor_*_agreement.jsonl", "blimp", limit=40)}  # 2 files: 20 each
    ours = run_benchmarks(*loaded, benchmarks, tmp_path / "tasks", BATCH, seed=0)
    assert ours["arc_easy_items"] == 20 and ours["blimp_items"] == 40 and ours["blimp_limit_per_file"] == 20
    assert ours["loglikelihood_requests"] == 20 * 4 + 40 * 2

    # As a user would: the lm_eval command on the saved model, the written YAMLs and the draw.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
                    "--device", "cpu", "--batch_size", str(BATCH), "--include_path", str(tmp_path / "tasks"),
                    "--tasks", "synth_arc_easy,synth_blimp", "--samples", str(tmp_path / "tasks/samples.json"),
                    "--output_path", str(tmp_path / "by_hand")],
                   env=env, check=True, capture_output=True)  # fmt: skip
    by_hand = json.loads(next((tmp_path / "by_hand").rglob("results_*.json")).read_text())["results"]
    for name, metrics in (("arc_easy", ("acc", "acc_norm")), ("blimp", ("acc",))):
        for metric in metrics:
            for key in (metric, f"{metric}_stderr"):
                assert ours[f"{name}_{key}"] == pytest.approx(by_hand[f"synth_{name}"][f"{key},none"], abs=1e-6), (name, key)


def test_a_random_model_scores_near_chance(loaded, tmp_path):
    benchmarks = {"winogrande": benchmark(EVAL / "icl/winogrande.jsonl", "winogrande", limit=200),
                  "hellaswag": benchmark(EVAL / "hellaswag-val.jsonl", "hellaswag", limit=200)}
    metrics = run_benchmarks(*loaded, benchmarks, tmp_path, BATCH, seed=0)
    assert metrics["winogrande_chance"] == 0.5 and metrics["hellaswag_chance"] == 0.25
    for name, metric in (("winogrande", "acc"), ("hellaswag", "acc"), ("hellaswag", "acc_norm")):
        assert metrics[f"{name}_items"] == 200
        assert abs(metrics[f"{name}_{metric}"] - metrics[f"{name}_chance"]) < 3 * metrics[f"{name}_{metric}_stderr"], (name, metric)
    assert metrics["loglikelihood_requests"] == 200 * 2 + 200 * 4 and metrics["loglikelihood_items_per_s"] > 0


def test_every_format_evaluates_from_a_tiny_file(loaded, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    files = {  # blimp's two files have different columns: a group of one subtask per file
        "blimp": [write_jsonl(data / "blimp_a.jsonl", [{"sentence_good": f"The cat {verb}.", "sentence_bad": f"The cat {verb} the."}
                                                       for verb in ("sat", "ran", "slept")]),
                  write_jsonl(data / "blimp_b.jsonl", [{"sentence_good": "Who ran?", "sentence_bad": "Who ran who?", "UID": "b"}] * 2)],
        "multiple_choice": write_jsonl(data / "mc.jsonl", [{"query": "Question: 2+2?", "choices": ["4", "5"], "gold": 0},
                                                           {"query": "Pick one:", "choices": ["a", "b", "c", "d"], "gold": 3},
                                                           {"query": "Sky?\n", "choices": ["blue", "green", "red", "black"], "gold": 0}]),
        "winogrande": write_jsonl(data / "wino.jsonl", [{"context_options": ["Ann helped Bo so Ann", "Ann helped Bo so Bo"],
                                                         "continuation": "said thanks.", "gold": 1}] * 3),
        "hellaswag": write_jsonl(data / "hs.jsonl", [{"ind": i, "activity_label": "Cooking", "ctx": "A man cuts onions. he",
                                                      "endings": ["cries.", "flies.", "sings.", "[header] Swims."], "label": label}
                                                     for i, label in enumerate([0, "1", 3])]),
        "lambada": write_jsonl(data / "lambada.jsonl", [{"context": "The dog chased the", "continuation": "cat"},
                                                        {"context": "1 + 2 =", "continuation": " 3"}]),
    }
    assert set(files) == set(BENCHMARK_FORMATS)
    benchmarks = {name: benchmark(path, name) for name, path in files.items() if name != "blimp"}
    benchmarks["blimp"] = benchmark(data / "blimp_*.jsonl", "blimp")
    benchmarks["hellaswag"] = benchmark(files["hellaswag"], "hellaswag", limit=2)  # a second simple_evaluate call
    metrics = run_benchmarks(*loaded, benchmarks, tmp_path / "tasks", BATCH, seed=0)

    assert sorted(p.name for p in (tmp_path / "tasks").glob("*.yaml")) == sorted(f"{name}.yaml" for name in benchmarks)
    expected = {"blimp": (5, 0.5), "multiple_choice": (3, (1 / 2 + 1 / 4 + 1 / 4) / 3), "winogrande": (3, 0.5),
                "hellaswag": (2, 0.25), "lambada": (2, 0.0)}  # fmt: skip
    for name, (items, chance) in expected.items():
        assert metrics[f"{name}_items"] == items and metrics[f"{name}_chance"] == pytest.approx(chance), name
        assert 0 <= metrics[f"{name}_acc"] <= 1 and f"{name}_acc_stderr" in metrics, name
    assert {key for key in metrics if key.startswith("multiple_choice_")} == {f"multiple_choice_{key}" for key in (
        "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "chance", "items", "limit", "limit_per_file", "too_long")}
    assert "winogrande_acc_norm" not in metrics and metrics["lambada_perplexity"] > 1
    assert metrics["loglikelihood_requests"] == 5 * 2 + (2 + 4 + 4) + 3 * 2 + 2 * 4 + 2

    # A file changed in place is read again, not taken from the datasets cache.
    write_jsonl(files["winogrande"], [{"context_options": ["A", "B"], "continuation": "c.", "gold": 0}] * 5)
    assert run_benchmarks(*loaded, {"winogrande": benchmarks["winogrande"]}, tmp_path / "tasks", BATCH, seed=0)["winogrande_items"] == 5


def test_prompts_are_lm_eval_s_own(tmp_path):
    """The YAMLs build hellaswag's prompts with lm-eval's preprocessing and lambada's
    target with one leading space, whether or not the file's continuation has it."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks.hellaswag.utils import preprocess

    lambada = write_jsonl(tmp_path / "lambada.jsonl", [{"context": "The dog chased the", "continuation": "cat"},
                                                       {"context": "1 + 2 =", "continuation": " 3"}])
    write_task_yamls({"hellaswag": benchmark(EVAL / "hellaswag-val.jsonl", "hellaswag"), "lambada": benchmark(lambada, "lambada")},
                     tmp_path)
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["synth_hellaswag", "synth_lambada"])["tasks"]
    hellaswag, lambada = tasks["synth_hellaswag"], tasks["synth_lambada"]
    docs = [doc for i, doc in enumerate(hellaswag.eval_docs) if i < 100 or "[" in doc["ctx"] + "".join(doc["endings"])]
    assert len(docs) > 110  # with WikiHow's bracketed artefacts
    for doc in docs:
        assert hellaswag.doc_to_text(doc) == preprocess(doc["activity_label"] + ": " + doc["ctx"])
        assert hellaswag.doc_to_choice(doc) == [preprocess(ending) for ending in doc["endings"]]
        assert hellaswag.doc_to_target(doc) == int(doc["label"])
    assert [lambada.doc_to_target(doc) for doc in lambada.eval_docs] == [" cat", " 3"]


def test_bad_input_fails_with_one_line_naming_the_fix(tmp_path, caplog):
    wrong = write_jsonl(tmp_path / "arc.jsonl", [{"question": "Why?", "choices": ["a", "b"], "gold": 0}])
    with pytest.raises(StageError) as error:
        check_format(str(wrong), "multiple_choice")
    message = str(error.value)
    assert "\n" not in message and str(wrong) in message and "line 1" in message and "'query'" in message
    assert all(format in message for format in BENCHMARK_FORMATS) and "sentence_good, sentence_bad" in message

    (tmp_path / "text.jsonl").write_text("just text\n")
    with pytest.raises(StageError, match="line 1 is not a JSON object"):
        check_format(str(tmp_path / "text.jsonl"), "lambada")
    with pytest.raises(StageError, match="no field 'query'"):  # via the YAML writer, before any scoring
        write_task_yamls({"arc": benchmark(wrong, "multiple_choice")}, tmp_path / "tasks")

    missing = tmp_path / "absent.jsonl"
    with pytest.raises(StageError, match=f"{missing} is missing.*required: false"):
        write_task_yamls({"arc": benchmark(missing, "multiple_choice")}, tmp_path / "tasks")
    with caplog.at_level(logging.WARNING, logger="eval"):
        metrics = run_benchmarks(None, None, {"arc": benchmark(missing, "multiple_choice", required=False)}, tmp_path / "tasks", BATCH, 0)
    assert metrics == {"arc_skipped": 1} and f"{missing} is missing; skipped" in caplog.text


# --- tables read by columns, a folder of lm-eval task YAMLs, the draw -------------------------
MMLU_ROWS = [("What is 2 + 2?", "3", "4", "5", "6", "B"), ("Pick the colour.", "red", "seven", "run", "up", "A"),
             ('Which is "quoted", with a comma?', "a", "b", "c", "d", "D"), ("Last one?", "w", "x", "y", "z", "C")]


def write_csv(path: Path, rows: list[tuple], delimiter: str = ",") -> Path:
    import csv

    with open(path, "w", newline="") as out:
        csv.writer(out, delimiter=delimiter).writerows(rows)
    return path


def write_task_folder(folder: Path, data: Path) -> Path:
    """One lm-eval task YAML of the user's own, reading a local JSONL file: runs offline."""
    folder.mkdir()
    task = {"task": "own_qa", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
            "output_type": "multiple_choice", "doc_to_text": "Q: {{question}}\nA:", "doc_to_choice": "options",
            "doc_to_target": "answer", "metric_list": [{"metric": "acc"}], "metadata": {"version": 1.0}}
    (folder / "own_qa.yaml").write_text(yaml.safe_dump(task))
    return folder


def test_tables_by_columns_and_a_folder_of_lm_eval_yamls_are_scored_offline(loaded, tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as HF_DATASETS_OFFLINE=1 does: no network
    mmlu = write_csv(tmp_path / "mmlu.csv", MMLU_ROWS)  # no header: question, A, B, C, D, answer letter
    truthful = write_csv(tmp_path / "truthful.tsv", [("Type", "Question", "Best Answer", "Best Incorrect Answer"),
                                                     ("Adversarial", "Do cats bark?", "No, cats meow.", "Yes."),
                                                     ("Adversarial", "Is the sun cold?", "No.", "Yes, very.")], "\t")
    pq.write_table(pa.table({"prompt": ["One?", "Two?"], "options": [["a", "b", "c"], ["d", "e"]], "label": [2, 0]}),
                   tmp_path / "lists.parquet")
    (tmp_path / "array.json").write_text(json.dumps([{"q": "Up?", "a": "up", "b": "down", "ans": "1"}]))
    own = write_jsonl(tmp_path / "own.jsonl", [{"question": "Sky?", "options": ["blue", "green"], "answer": 0}] * 3)
    benchmarks = {
        "mmlu": EvalBenchmark(path=str(mmlu), header=False, columns={"query": 0, "choices": [1, 2, 3, 4], "gold": 5}, limit=None),
        "truthful": EvalBenchmark(path=str(truthful), columns={"query": "Question", "choices": ["Best Answer", "Best Incorrect Answer"],
                                                               "gold_choice": 0}, limit=None),
        "lists": EvalBenchmark(path=str(tmp_path / "lists.parquet"), columns={"query": "prompt", "choices": "options", "gold": "label"}),
        "array": EvalBenchmark(path=str(tmp_path / "array.json"), columns={"query": "q", "choices": ["a", "b"], "gold": "ans"}),
        "own": EvalBenchmark(path=str(write_task_folder(tmp_path / "own_tasks", own)), task="own_qa"),
    }
    check_benchmarks(benchmarks)
    metrics = run_benchmarks(*loaded, benchmarks, tmp_path / "tasks", BATCH, seed=0)

    expected = {"mmlu": (4, 0.25), "truthful": (2, 0.5), "lists": (2, (1 / 3 + 1 / 2) / 2), "array": (1, 0.5), "own": (3, 0.5)}
    for name, (items, chance) in expected.items():
        assert metrics[f"{name}_items"] == items and metrics[f"{name}_chance"] == pytest.approx(chance), name
        assert 0 <= metrics[f"{name}_acc"] <= 1, name
    assert metrics["loglikelihood_requests"] == 4 * 4 + 2 * 2 + (3 + 2) + 2 + 3 * 2
    written = [json.loads(line) for line in (tmp_path / "tasks/mmlu/mmlu.jsonl").read_text().splitlines()]
    assert written[0] == {"query": "What is 2 + 2?", "choices": ["3", "4", "5", "6"], "gold": 1}
    assert [item["gold"] for item in written] == [1, 0, 3, 2] and written[2]["query"] == 'Which is "quoted", with a comma?'


@pytest.mark.parametrize("write, columns, header, expected", [
    pytest.param(lambda path: write_csv(path.with_suffix(".csv"), [*MMLU_ROWS[:2], ("Q?", "a", "b", "c", "d", "E")]),
                 {"query": 0, "choices": [1, 2, 3, 4], "gold": 5}, False,
                 r"\.csv:3: column 5 \(columns\.gold\) is 'E'; expected a letter A-D or an index 0-3 \(the row has 4 choices\)$",
                 id="gold letter"),
    pytest.param(lambda path: write_csv(path.with_suffix(".csv"), [MMLU_ROWS[0], ("Q?", "a", "b")]),
                 {"query": 0, "choices": [1, 2, 3, 4], "gold": 5}, False,
                 r"\.csv:2: no column 3 \(columns\.choices\[2\]; the row has 3, counted from 0\); expected an answer$",
                 id="short row"),
    pytest.param(lambda path: write_csv(path.with_suffix(".csv"), [("question", "A", "B", "answer"), ("Q?", "a", "b", "A")]),
                 {"query": "Question", "choices": ["A", "B"], "gold": "answer"}, True,
                 r"\.csv:2: column 'Question' \(columns\.query\) is missing \(the row has question, A, B, answer\); expected the question$",
                 id="column name"),
    pytest.param(lambda path: write_jsonl(path.with_suffix(".jsonl"), [{"q": "Q?", "options": ["a", "b"], "gold": 0},
                                                                       {"q": "Q?", "options": "a or b", "gold": 0}]),
                 {"query": "q", "choices": "options", "gold": "gold"}, True,
                 r"\.jsonl:2: column 'options' \(columns\.choices\) is 'a or b'; expected a list of at least two answers$",
                 id="not a list"),
    pytest.param(lambda path: write_jsonl(path.with_suffix(".jsonl"), [{"q": None, "a": "x", "b": "y", "gold": "A"}]),
                 {"query": "q", "choices": ["a", "b"], "gold": "gold"}, True,
                 r"\.jsonl:1: column 'q' \(columns\.query\) is empty; expected the question$", id="empty cell"),
])  # fmt: skip
def test_a_table_that_does_not_fit_its_columns_fails_with_one_line_naming_the_row(tmp_path, write, columns, header, expected):
    path = write(tmp_path / "bench")
    with pytest.raises(StageError, match=expected) as error:
        check_benchmarks({"bench": EvalBenchmark(path=str(path), columns=columns, header=header)})
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_columns_and_task_folders_are_checked_before_scoring(tmp_path):
    from synthtrain.params import parse_params

    def params(**benchmark):
        return parse_params({"sources": {"b": {"kind": "builtin"}}, "eval": {"benchmarks": {"mmlu": benchmark}}})

    mapping = {"query": 0, "choices": [1, 2], "gold": 3}
    with pytest.raises(StageError, match=r"eval\.benchmarks\.mmlu: columns\.query = 0: a column index needs header: false"):
        params(path="mmlu.csv", columns=mapping)
    with pytest.raises(StageError, match=r"columns\.query = 'Question': a file without a header row has no column names"):
        params(path="mmlu.csv", header=False, columns={**mapping, "query": "Question"})
    with pytest.raises(StageError, match=r"header: false is for a \.csv or \.tsv file read by columns"):
        params(path="mmlu.parquet", header=False, columns=mapping)
    with pytest.raises(StageError, match=r"needs exactly one of format .*; it has format and columns"):
        params(path="mmlu.csv", format="multiple_choice", header=False, columns=mapping)
    with pytest.raises(StageError, match=r"give gold \(the column of the right answer\) or gold_choice"):
        params(path="mmlu.csv", header=False, columns={"query": 0, "choices": [1, 2]})

    folder = write_task_folder(tmp_path / "tasks", tmp_path / "own.jsonl")
    with pytest.raises(StageError, match=rf"eval\.benchmarks\.own\.task: 'qa' is not a task or group of {folder} \(it has own_qa\)$"):
        check_benchmarks({"own": EvalBenchmark(path=str(folder), task="qa")})
    with pytest.raises(StageError, match=r"eval\.benchmarks\.own\.path: .*own_qa\.yaml is not a folder; with task, path is a folder"):
        check_benchmarks({"own": EvalBenchmark(path=str(folder / "own_qa.yaml"), task="own_qa")})


def test_items_are_a_seeded_random_subset_not_the_first_n(loaded, tmp_path):
    data = write_jsonl(tmp_path / "mc.jsonl", [{"query": f"Item {i}:", "choices": ["yes", "no"], "gold": i % 2} for i in range(60)])
    benchmarks = {"mc": benchmark(data, "multiple_choice", limit=10)}

    def drawn(seed: int) -> list[int]:
        metrics = run_benchmarks(*loaded, benchmarks, tmp_path / f"tasks{seed}", BATCH, seed=seed)
        assert metrics["mc_items"] == 10 and metrics["mc_too_long"] == 0
        return json.loads((tmp_path / f"tasks{seed}/samples.json").read_text())["synth_mc"]

    first = drawn(0)
    assert len(set(first)) == 10 and first != list(range(10))
    assert drawn(0) == first and drawn(1) != first


def test_items_are_scored_at_the_context_the_model_was_trained_on(loaded, tmp_path):
    """An answer longer than the trained context cannot be scored: the item is passed over and counted."""
    model, tokenizer = loaded
    context = model.config.max_position_embeddings
    word_tokens = len(tokenizer(" elephants", add_special_tokens=False).input_ids)
    long_answer = " ".join(["elephants"] * (context // word_tokens + 10))
    assert context < len(tokenizer(" " + long_answer, add_special_tokens=False).input_ids) < 2 * context
    items = [{"query": f"Item {i}:", "choices": ["yes", "no"], "gold": 0} for i in range(5)]
    items[3]["choices"][1] = long_answer
    metrics = run_benchmarks(model, tokenizer, {"mc": benchmark(write_jsonl(tmp_path / "mc.jsonl", items), "multiple_choice")},
                             tmp_path / "tasks", BATCH, seed=0)
    assert metrics["benchmarks_max_length"] == context
    assert metrics["mc_items"] == 4 and metrics["mc_too_long"] == 1 and metrics["loglikelihood_requests"] == 4 * 2
    assert json.loads((tmp_path / "tasks/samples.json").read_text()) == {"synth_mc": [0, 1, 2, 4]}
    only_long = {"long": benchmark(write_jsonl(tmp_path / "long.jsonl", [items[3]]), "multiple_choice")}
    with pytest.raises(StageError, match=rf"eval\.benchmarks\.long: no item of synth_long has answers that fit in the {context} tokens"):
        run_benchmarks(model, tokenizer, only_long, tmp_path / "tasks", BATCH, seed=0)
