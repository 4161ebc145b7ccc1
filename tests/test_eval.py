"""The eval stage: answer extraction on hand-made replies, the behavioural suites
on stub models, and the whole stage on a randomly initialised model, whose
scores must sit at chance and whose perplexity must be near the vocabulary size."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import SHARED_DATA, save_untrained_model, split_builtin_records, stage, write_preference_judge, write_train_tokens
from synthtrain.world.corpus import CorpusGenerator
from synthtrain.world.facts import World
from synthtrain.evaluation.behaviour import run_suites
from synthtrain.generation import Reply
from synthtrain.evaluation.heldout import heldout_metrics, packed
from synthtrain.evaluation.ngram import NgramBaselines
from synthtrain.evaluation.answers import extracted, is_correct, task_accuracy, task_chance
from synthtrain.model import build_model, llama_config
from synthtrain.params import parse_params
from synthtrain.records import RecordWriter, make_record
from synthtrain.text import content_column, fold_column, ngram_hashes, word_hashes
from synthtrain.tokens.bpe import train_bpe
from synthtrain.tokens.chat import IM_END

VOCAB = 1024
BENCHMARKS = {"hellaswag": {"path": str(SHARED_DATA / "eval/hellaswag-val.jsonl"), "format": "hellaswag", "limit": 150},
              "winogrande": {"path": str(SHARED_DATA / "eval/icl/winogrande.jsonl"), "format": "winogrande", "limit": 150},
              # the user's own, written by own_benchmarks: an MMLU-style CSV and a folder of lm-eval task YAMLs
              "mmlu": {"path": "bench/mmlu.csv", "header": False, "columns": {"query": 0, "choices": [1, 2, 3, 4], "gold": 5}, "limit": 4},
              "own": {"path": "bench/tasks", "task": "own_qa"}}
PARAMS = {"sources": {"builtin": {"kind": "builtin"}}, "builtin_eval": {"per_family": 6},
          "tokenizer": {"vocab_size": VOCAB, "train_records": 2000}, "tokenize": {"seq_len": 128},
          "eval": {"heldout_records": 300, "tasks_per_family": 6, "references": 12, "behaviour_per_suite": 4,
                   "generation": {"max_new_tokens": 24, "batch_size": 16},
                   "judges": {"encoder": "hashing", "train_pairs": 400}, "benchmarks": BENCHMARKS}}


# --- answer extraction ---------------------------------------------------------------
FACT = {"family": "fact_recall", "extract": "first_word", "answer": "Dune", "attribute": "river"}
SUM = {"family": "arithmetic", "extract": "final_answer", "answer": "285"}
BULLETS = {"family": "format", "extract": "bullets", "check": {"kind": "bullets", "count": 3}}
JSON = {"family": "format", "extract": "json", "check": {"kind": "json", "keys": ["name", "river"], "values": {}}}
ONE_WORD = {"family": "format", "extract": "first_word", "check": {"kind": "one_word", "answer": "Dune"}}


@pytest.mark.parametrize("reply, meta, correct", [
    ("Dune.", FACT, True), ("dune, of course", FACT, True), ("The Dune", FACT, False), ("", FACT, False),
    ("Subtract: 967 - 682 = 285.\nFinal answer: 285", SUM, True), ("Final answer: 285.", SUM, True),
    ("Final answer: 2850", SUM, False), ("Final answer: 100\nFinal answer: 285", SUM, True),  # the last one counts
    ("The answer is 285", SUM, False),  # no final-answer line: nothing to extract
    ("- one\n- two\n- three", BULLETS, True), ("Facts:\n* a\n* b\n* c\nThat is all.", BULLETS, True),
    ("1. a\n2. b", BULLETS, False), ("- a\n- b\n- c\n- d", BULLETS, False),
    ('{"name": "Brovale", "river": "Dune"}', JSON, True), ('Here: {"river": "Dune", "name": "X"} done', JSON, True),
    ('{"name": "Brovale"}', JSON, False), ('{"name": "Brovale", "river": ', JSON, False), ("name: Brovale", JSON, False),
    ("Dune", ONE_WORD, True), ("Dune river", ONE_WORD, False),
])  # fmt: skip
def test_answers_are_extracted_and_matched_exactly(reply, meta, correct):
    assert is_correct(reply, meta) is correct


def test_extraction_and_accuracy_per_family():
    assert extracted("Final answer: -12 ", SUM) == "-12" and extracted("no answer", SUM) is None
    problems = [{"meta": FACT}, {"meta": FACT}, {"meta": SUM}]
    metrics, correct = task_accuracy(problems, ["Dune", "Sand", "Final answer: 285"])
    assert correct == [True, False, True]
    assert metrics == {"tasks_fact_recall_accuracy": 0.5, "tasks_fact_recall_items": 2, "tasks_arithmetic_accuracy": 1.0,
                       "tasks_arithmetic_items": 1, "tasks_accuracy": 0.75, "tasks_items": 3}  # families weigh the same
    # fact recall split by the entity's question-answer training data; a problem without the flag counts in neither
    problems = [{"meta": {**FACT, "qa_trained": True}}, {"meta": {**FACT, "qa_trained": False}}, {"meta": {**FACT, "qa_trained": False}},
                {"meta": FACT}]
    metrics, _ = task_accuracy(problems, ["Dune", "Dune", "Sand", "Dune"])
    assert {key: value for key, value in metrics.items() if key.startswith("fact_recall_")} == {
        "fact_recall_qa_trained_accuracy": 1.0, "fact_recall_qa_trained_items": 1,
        "fact_recall_passages_only_accuracy": 0.5, "fact_recall_passages_only_items": 2}
    assert metrics["tasks_fact_recall_accuracy"] == 0.75 and "tasks_fact_recall_qa_trained_accuracy" not in metrics


def test_chance_is_a_uniform_guess_among_the_attributes_values_and_any_word_for_the_one_word_format():
    values = {"river": ["Dune", "Sand", "Tarn", "Vell"]}.__getitem__
    problems = [{"meta": FACT}, {"meta": SUM}, {"meta": ONE_WORD}, {"meta": BULLETS}]
    assert task_chance(problems, values) == {"tasks_fact_recall_chance": 0.25, "tasks_arithmetic_chance": 0.0, "tasks_format_chance": 0.5}


def test_an_open_answer_that_many_problems_share_is_the_chance_of_always_replying_it():
    """Counting a letter of a word: "1" is the answer of most, so a model that always says 1 passes them."""
    count = lambda answer: {"meta": {"family": "string", "extract": "final_answer", "answer": answer}}
    problems = [count("1"), count("1"), count("1"), count("2"), count("elbat"), {"meta": SUM}]
    chance = task_chance(problems, {}.__getitem__)
    assert chance == {"tasks_string_chance": 0.6, "tasks_arithmetic_chance": 0.0}
    metrics, _ = task_accuracy(problems[:5], ["Final answer: 1"] * 5)
    assert metrics["tasks_string_accuracy"] == chance["tasks_string_chance"]  # the constant reply scores exactly chance


def test_packed_rows_predict_every_token_once():
    tokens, loss = packed(pa.array(range(10), pa.uint16()).to_numpy(), pa.array([1] * 10, pa.uint8()).to_numpy(), 4, 0)
    assert tokens.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]] and int(loss[:, 1:].sum()) == 9


def token_shard(directory: Path, ids: list[int], seq_len: int = 128) -> Path:
    """A tokenize-stage output of one shard: ``ids`` in rows of seq_len (the rest dropped), every token in the loss."""
    rows = np.array(ids[: len(ids) // seq_len * seq_len], dtype=np.uint16).reshape(-1, seq_len)
    directory.mkdir()
    np.save(directory / "tokens-00000.npy", rows)
    np.save(directory / "mask-00000.npy", np.ones_like(rows, dtype=np.uint8))
    (directory / "index.json").write_text(json.dumps({"shards": [{"tokens": "tokens-00000.npy", "mask": "mask-00000.npy", "sequences": len(rows)}]}))
    return directory


def test_bits_per_byte_of_a_hand_made_record_equals_the_hand_count(tmp_path):
    """Bits per byte sums the loss of each reply's tokens and of the <|im_end|>
    that ends it, and divides by the replies' UTF-8 bytes alone: no role
    header, no end marker, no user turn; so it is the same whether the loss
    mask trains on the assistant turns only or on every token."""
    tokenizer = train_bpe((SHARED_DATA / "human/wiki-sample.txt").read_text().splitlines()[:500], 400, split_digits=True)
    torch.manual_seed(0)
    model = build_model(llama_config("1M", len(tokenizer), 128, tokenizer.eos_token_id, tokenizer.pad_token_id)).eval()
    replies = ["It is 4.", "Café: 3 €, naïve."]  # bytes, not characters: é and € are 2 and 3
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": replies[0]}, {"role": "user", "content": "And the price?"},
                {"role": "assistant", "content": replies[1]}]
    with RecordWriter(tmp_path / "hand.parquet") as writer:
        writer.write(make_record("hand", "instruction", messages=messages))

    # By hand: one forward pass over the rendering and its eos; losses[i] is the loss of token i + 1.
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False) + [tokenizer.eos_token_id]
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(torch.tensor([ids])).logits[0, :-1], torch.tensor(ids[1:]), reduction="none")
    nats = 0.0
    for turn, reply in ((2, replies[0]), (4, replies[1])):
        # the reply starts a pre-token, so its tokens are its own, after those of the generation prompt before it
        start = len(tokenizer.apply_chat_template(messages[:turn], tokenize=True, add_generation_prompt=True, return_dict=False))
        reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids(IM_END)]
        assert ids[start: start + len(reply_ids)] == reply_ids
        nats += float(losses[start - 1: start - 1 + len(reply_ids)].sum())
    by_hand = nats / math.log(2) / sum(len(reply.encode()) for reply in replies)

    # n-gram baselines fitted on the wiki lines the tokenizer learned from, scored on the same tokens as the model
    wiki = [token for line in (SHARED_DATA / "human/wiki-sample.txt").read_text().splitlines()[:500] for token in tokenizer(line)["input_ids"]]
    baselines = NgramBaselines.fit(token_shard(tmp_path / "tokens", wiki), len(tokenizer))
    for assistant_only in (True, False):
        metrics = heldout_metrics(model, tokenizer, [tmp_path / "hand.parquet"], 10, 128, 4, assistant_only, baselines)
        assert metrics["heldout_hand_instruction_bpb"] == pytest.approx(by_hand, abs=6e-5), assistant_only
        for baseline in ("unigram", "bigram"):  # one category: its figures are the source's and the total's
            figures = [metrics[f"heldout{part}_{baseline}_{kind}"] for part in ("_hand_instruction", "_hand", "") for kind in ("loss", "bpb")]
            assert figures[0::2] == [figures[0]] * 3 and figures[1::2] == [figures[1]] * 3 and all(0 < f < 20 for f in figures)
        assert metrics["heldout_hand_instruction_tokens"] == (len(ids) - 1 if not assistant_only else
                                                               sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in replies))


def test_the_clean_heldout_scores_the_same_records_less_those_with_an_injected_flaw(tmp_path):
    """heldout_clean_* is what a held-out file of the unflawed records alone would score: the flawed
    record (meta.flaw, the generator's ground truth) is in the source's figures but not in the clean ones."""
    tokenizer = train_bpe((SHARED_DATA / "human/wiki-sample.txt").read_text().splitlines()[:300], 400, split_digits=True)
    torch.manual_seed(0)
    model = build_model(llama_config("1M", len(tokenizer), 128, tokenizer.eos_token_id, tokenizer.pad_token_id)).eval()
    clean = [make_record("mixed", "instruction", messages=[{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Dune."}]),
             make_record("mixed", "web", text="The river runs past the old mill and on to the sea.")]
    flawed = make_record("mixed", "instruction", meta={"flaw": "repetition"},
                         messages=[{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "Dune Dune Dune Dune Dune."}])
    for name, records in (("mixed", [clean[0], flawed, clean[1]]), ("unflawed", clean)):
        with RecordWriter(tmp_path / f"{name}.parquet") as writer:
            for record in records:
                writer.write(record)
    text = [token for line in (SHARED_DATA / "human/wiki-sample.txt").read_text().splitlines()[:100] for token in tokenizer(line)["input_ids"]]
    baselines = NgramBaselines.fit(token_shard(tmp_path / "tokens", text), len(tokenizer))
    mixed = heldout_metrics(model, tokenizer, [tmp_path / "mixed.parquet"], 10, 128, 4, True, baselines)
    alone = heldout_metrics(model, tokenizer, [tmp_path / "unflawed.parquet"], 10, 128, 4, True, baselines)
    for scorer in ("", "_unigram", "_bigram"):
        for kind in ("loss", "bpb"):
            assert mixed[f"heldout_clean_instruction{scorer}_{kind}"] == alone[f"heldout_unflawed_instruction{scorer}_{kind}"]
            assert mixed[f"heldout_clean{scorer}_{kind}"] == alone[f"heldout{scorer}_{kind}"]
    assert mixed["heldout_mixed_instruction_tokens"] > mixed["heldout_clean_instruction_tokens"]
    assert mixed["heldout_mixed_instruction_loss"] != mixed["heldout_clean_instruction_loss"]


# --- behavioural suites --------------------------------------------------------------
WORLD = World(parse_params({"sources": {"builtin": {"kind": "builtin"}}}).world)


def test_a_model_that_always_says_the_same_fails_inv_and_dir():
    metrics, samples = run_suites(lambda prompts: [Reply("42", stopped=True) for _ in prompts], WORLD, per_suite=10, seed=0)
    assert metrics["behaviour_inv_pass_rate"] == 0 and metrics["behaviour_dir_pass_rate"] == 0
    assert metrics["behaviour_inv_consistency"] > 0.4  # consistent (the word problems' answer "42" is never extracted)...
    assert metrics["behaviour_mft_one_word"] == 1 and metrics["behaviour_mft_stops"] == 1  # ...it does answer in one word
    assert metrics["behaviour_mft_bullets"] == 0 and metrics["behaviour_mft_json"] == 0 and metrics["behaviour_refusal_rate"] == 0
    assert metrics["behaviour_cases"] == 3 * 10 + 2 * 10 + 10 + 10 == len(samples)


def oracle(prompts: list[str]) -> list[Reply]:
    """Computes the arithmetic it is asked, answers everything else with a refusal and never stops."""
    replies = []
    for prompt in prompts:
        sum_ = re.search(r"(\d+) ([-+]) (\d+)", prompt)
        if sum_:
            a, op, b = int(sum_[1]), sum_[2], int(sum_[3])
            replies.append(Reply(f"Final answer: {a + b if op == '+' else a - b}", stopped=False))
        else:
            replies.append(Reply("I'm sorry, but I cannot help with that.", stopped=False))
    return replies


def test_dir_passes_when_the_answer_moves_with_the_number_and_refusals_are_counted():
    metrics, samples = run_suites(oracle, WORLD, per_suite=10, seed=0)
    assert metrics["behaviour_dir_pass_rate"] == 1 and metrics["behaviour_refusal_rate"] == 1
    assert metrics["behaviour_mft_stops"] == 0 and metrics["behaviour_mft_one_word"] == 0
    assert {s["suite"] for s in samples} == {"mft_one_word", "mft_bullets", "mft_json", "inv_paraphrase", "inv_names",
                                             "dir_add", "dir_subtract", "refusal"}


def test_no_behaviour_prompt_shares_a_13_gram_with_a_training_rendering():
    """Every behaviour prompt of three seeds against 10,000 records of the
    training generator, in a world that trains on all its phrasings. Numbers
    read 0 and the world's names and words x on both sides, so a template
    matches whatever it was filled with; a prompt shorter than 13 words is
    matched whole, as dedup matches a short benchmark text."""
    params = parse_params({"sources": {"builtin": {"kind": "builtin"}}, "world": {"phrasings": 8}})
    generator = CorpusGenerator(params, "builtin")
    world = generator.world
    names = set(world.words) | {w for e in world.entities for text in (e.name, *e.facts.values()) for w in text.lower().split()}

    def template_words(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        folded = fold_column(pa.array(texts, pa.string())).to_pylist()
        return word_hashes(pa.array([" ".join("0" if w.isdigit() else "x" if w in names else w for w in text.split()) for text in folded]))

    training = template_words([text for index in range(2) for text in content_column(generator.chunk(index, 5000)[0]).to_pylist()])
    prompts = []

    def record(batch: list[str]) -> list[Reply]:
        prompts.extend(batch)
        return [Reply("", stopped=True) for _ in batch]

    for seed in range(3):
        run_suites(record, world, per_suite=300, seed=seed)
    words, offsets = template_words(prompts)
    grams, owner = ngram_hashes(words, offsets, 13)
    lengths = np.minimum(np.diff(offsets), 13)[owner]
    shared = set()
    for length in np.unique(lengths):
        of_length = lengths == length
        shared |= set(owner[of_length][np.isin(grams[of_length], ngram_hashes(*training, int(length), short=False)[0])].tolist())
    assert len(prompts) > 3000 and not shared, sorted({prompts[i] for i in shared})[:5]


# --- the stage on a random model -----------------------------------------------------
def own_benchmarks(root: Path) -> None:
    """A headerless MMLU-style CSV (question, A, B, C, D, answer letter) and a folder with
    one lm-eval task YAML reading a local JSONL file by a path relative to the stage."""
    (root / "bench/tasks").mkdir(parents=True)
    (root / "bench/mmlu.csv").write_text("".join(f"Question {i}?,a{i},b{i},c{i},d{i},{'ABCD'[i % 4]}\n" for i in range(6)))
    (root / "bench/own.jsonl").write_text("".join(json.dumps({"question": f"Is {i} even?", "options": ["yes", "no"], "answer": i % 2}) + "\n"
                                                  for i in range(5)))
    (root / "bench/tasks/own_qa.yaml").write_text(yaml.safe_dump({
        "task": "own_qa", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "bench/own.jsonl"}}, "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "Q: {{question}}\nA:", "doc_to_choice": "options", "doc_to_target": "answer",
        "metric_list": [{"metric": "acc"}]}))


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    """A workdir with held-out records, built-in problems, a tokenizer, judges and an untrained 1M model."""
    root = tmp_path_factory.mktemp("eval")
    split_builtin_records(root, 3000, 2600)
    pq.write_table(pq.read_table(root / "data/heldout/builtin.parquet").slice(0, 0), root / "data/heldout/empty.parquet")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    stage(root, "stages.builtin_eval")
    stage(root, "stages.train_tokenizer")
    stage(root, "stages.judges")
    write_train_tokens(root)
    write_preference_judge(root)
    save_untrained_model(root, 128, end_tokens=("<|im_end|>",))
    own_benchmarks(root)
    stage(root, "stages.eval", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return root


def test_a_random_model_scores_at_chance_with_perplexity_near_the_vocabulary(random_model):
    metrics = json.loads((random_model / "metrics/eval.json").read_text())
    assert 0.8 * VOCAB < metrics["heldout_ppl"] < 1.25 * VOCAB
    for category in ("instruction", "knowledge", "web"):
        assert 0.8 * VOCAB < metrics[f"heldout_builtin_{category}_ppl"] < 1.25 * VOCAB
    assert metrics["heldout_bpb"] > 2.5  # near log2(1024) bits per token, over a few bytes per token
    for name, chance in (("hellaswag", 0.25), ("winogrande", 0.5)):
        assert metrics[f"{name}_chance"] == pytest.approx(chance, abs=0.01) and metrics[f"{name}_items"] == 150
        for score in ("acc", "acc_norm"):
            if f"{name}_{score}" in metrics:  # within 3 standard errors of chance
                assert abs(metrics[f"{name}_{score}"] - metrics[f"{name}_chance"]) < 3 * metrics[f"{name}_{score}_stderr"] + 0.01
    assert metrics["tasks_accuracy"] < 0.1 and metrics["behaviour_dir_pass_rate"] == 0
    assert metrics["tasks_items"] == 30 and metrics["reference_items"] == 12


def test_the_stage_writes_flat_metrics_samples_and_plots_and_reports_empty_sets(random_model):
    metrics = json.loads((random_model / "metrics/eval.json").read_text())
    assert all(isinstance(v, (int, float)) and v == v for v in metrics.values())  # flat numbers, never NaN
    assert metrics["heldout_empty_records"] == 0 and not any(k.startswith("heldout_empty_") and k != "heldout_empty_records" for k in metrics)
    assert 0 <= metrics["reply_empty_rate"] <= 1
    for key in ("rougeL", "bleu", "chrf", "diversity_distinct_2", "judge_relevance_score", "judge_coherence_score",
                "behaviour_inv_pass_rate", "generation_items_per_s", "loglikelihood_items_per_s", "seconds"):
        assert key in metrics, key
    samples = [json.loads(line) for line in (random_model / "data/eval/samples.jsonl").read_text().splitlines()]
    assert len(samples) == metrics["tasks_items"] + metrics["reference_items"] + metrics["behaviour_cases"]
    assert (random_model / "plots/eval/tasks.csv").read_text().startswith("family,accuracy\n")
    assert (random_model / "plots/eval/heldout.csv").read_text().splitlines() == [
        "set,bpb", *(f"{s}_{c},{metrics[f'heldout_{s}_{c}_bpb']}" for s in ("builtin", "clean") for c in ("instruction", "knowledge", "web"))]
    assert "hellaswag," in (random_model / "plots/eval/benchmarks.csv").read_text()
    assert sorted(p.name for p in (random_model / "data/eval/tasks").glob("*.yaml")) == ["hellaswag.yaml", "mmlu.yaml", "winogrande.yaml"]


def test_a_headerless_csv_and_a_folder_of_lm_eval_yamls_run_offline_through_the_stage(random_model):
    metrics = json.loads((random_model / "metrics/eval.json").read_text())
    assert metrics["mmlu_items"] == 4 and metrics["mmlu_chance"] == 0.25 and metrics["mmlu_limit"] == 4
    assert metrics["own_items"] == 5 and metrics["own_chance"] == 0.5 and 0 <= metrics["own_acc"] <= 1
    golds = [json.loads(line)["gold"] for line in (random_model / "data/eval/tasks/mmlu/mmlu.jsonl").read_text().splitlines()]
    assert golds == [0, 1, 2, 3, 0, 1]  # the letters, as indices
    drawn = json.loads((random_model / "data/eval/tasks/samples.json").read_text())
    assert len(drawn["synth_mmlu"]) == 4 and len(drawn["synth_hellaswag"]) == 150 and "own_qa" not in drawn  # own: all 5


def test_a_missing_model_fails_with_the_path_and_the_fix(random_model):
    result = stage(random_model, "stages.eval", "--model", "models/nothing", check=False)
    assert result.returncode == 1 and "models/nothing holds no model" in result.stderr and "dvc repro train" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_incompatible_model_fails_with_the_path_and_the_fix(random_model):
    broken = random_model / "models/broken"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    result = stage(random_model, "stages.eval", "--model", "models/broken", check=False)
    assert result.returncode == 1 and "models/broken is not a causal language model" in result.stderr
    assert "dvc repro train" in result.stderr and "Traceback" not in result.stderr
