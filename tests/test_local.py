"""kind: local on every data file of ../shared/data/synthetic and ../shared/data/human, and on small
files in the upstream schemas of the formats no shared file has: preference pairs (TRL, HH-RLHF,
LLaMA-Factory), MT-bench's turns, plain text under any extension."""

import json
import re
from typing import get_args

import pyarrow.parquet as pq
import pytest

from conftest import SHARED_DATA
from synthtrain.sources import local
from synthtrain.sources.download import download
from synthtrain.sources.formats import FORMATS, Parsed, Rejected, preference_columns
from synthtrain.synthesis.generate import read_seeds
from synthtrain.params import Format, GenerateSource, LocalSource, StageError, parse_params


def run(tmp_path, path, category, **extra):
    source = {"kind": "local", "path": str(path), "category": category, "max_samples": 10_000_000, **extra}
    metrics = download(parse_params({"sources": {"src": source}}), "src", tmp_path)
    rows = pq.read_table(tmp_path / "data/raw/src.parquet").to_pylist()
    assert metrics["read"] == metrics["kept"] + metrics["rejected"] and metrics["kept"] == len(rows)
    return metrics, rows


@pytest.mark.parametrize("name", ["gpteacher-codegen.json", "gpteacher-toolformer.json"])
def test_gpteacher_alpaca_with_response(tmp_path, name):
    upstream = json.loads((SHARED_DATA / "synthetic" / name).read_text())
    metrics, rows = run(tmp_path, SHARED_DATA / "synthetic" / name, "instruction")
    assert metrics["read"] == len(upstream) and metrics["rejected"] == metrics["rejected_by_reason"].get("empty_text", 0)
    assert metrics["kept"] >= 0.99 * len(upstream)
    first, item = rows[0], upstream[0]
    user = item["instruction"] + ("\n\n" + item["input"] if item["input"].strip() else "")
    assert first["messages"] == [{"role": "user", "content": user}, {"role": "assistant", "content": item["response"]}]
    assert json.loads(first["meta"])["format"] == "alpaca"


@pytest.mark.parametrize("folder, name, category", [("synthetic", "tinystories-val.txt", "knowledge"), ("human", "tinyshakespeare.txt", "knowledge")])
def test_plain_text_one_document_per_blank_line_block(tmp_path, folder, name, category):
    content = (SHARED_DATA / folder / name).read_text()
    blocks = [b for b in re.split(r"\n\s*\n", content) if b.strip()]
    metrics, rows = run(tmp_path, SHARED_DATA / folder / name, category)
    assert metrics["kept"] == len(blocks) and metrics["rejected"] == 0
    assert rows[1]["text"] == blocks[1].strip("\n")


def test_wiki_one_article_per_line(tmp_path):
    lines = [line for line in (SHARED_DATA / "human/wiki-sample.txt").read_text().splitlines() if line.strip()]
    metrics, rows = run(tmp_path, SHARED_DATA / "human/wiki-sample.txt", "knowledge", split="line")
    assert metrics["kept"] == len(lines) == 30 and rows[0]["text"] == lines[0]


def test_c4_jsonl_text(tmp_path):
    upstream = [json.loads(line) for line in (SHARED_DATA / "human/c4-sample.jsonl").read_text().splitlines()]
    metrics, rows = run(tmp_path, SHARED_DATA / "human/c4-sample.jsonl", "web")
    assert metrics["kept"] == len(upstream) == 300
    assert [r["text"] for r in rows] == [u["text"] for u in upstream]
    assert all(r["category"] == "web" and r["messages"] is None for r in rows)


def test_self_instruct_seed_tasks_one_record_per_instance(tmp_path):
    upstream = [json.loads(line) for line in (SHARED_DATA / "human/self-instruct-seed-tasks.jsonl").read_text().splitlines()]
    metrics, rows = run(tmp_path, SHARED_DATA / "human/self-instruct-seed-tasks.jsonl", "instruction")
    assert metrics["read"] == sum(len(u["instances"]) for u in upstream)
    assert metrics["kept"] + metrics["rejected_by_reason"].get("empty_text", 0) == metrics["read"]
    meta = json.loads(rows[0]["meta"])
    assert meta["format"] == "self_instruct" and meta["name"] == upstream[0]["name"]
    assert rows[0]["messages"][1]["content"] == upstream[0]["instances"][0]["output"]


def test_every_data_file_is_covered():
    """The tests above name every data file there is; a new one must get a test."""
    files = {p.name for folder in ("synthetic", "human") for p in (SHARED_DATA / folder).iterdir() if "LICENSE" not in p.name}
    assert files == {"gpteacher-codegen.json", "gpteacher-toolformer.json", "tinystories-val.txt", "tinyshakespeare.txt",
                     "wiki-sample.txt", "c4-sample.jsonl", "self-instruct-seed-tasks.jsonl"}


@pytest.mark.parametrize("fmt, row, expected", [
    ("sharegpt", {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
     [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
    ("messages", {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
    ("prompt_completion", {"prompt": "2+2=", "completion": "4"}, [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]),
    ("alpaca", {"instruction": "Add.", "input": "2 and 2", "output": "4"}, [{"role": "user", "content": "Add.\n\n2 and 2"}, {"role": "assistant", "content": "4"}]),
])
def test_formats_are_detected_in_jsonl_and_parquet(tmp_path, fmt, row, expected):
    import pyarrow as pa

    (tmp_path / "in.jsonl").write_text(json.dumps(row) + "\n")
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "in.parquet")
    for name in ("in.jsonl", "in.parquet"):
        _, rows = run(tmp_path / name.replace(".", "_"), tmp_path / name, "instruction")
        assert rows[0]["messages"] == expected and json.loads(rows[0]["meta"])["format"] == fmt


# --- preference pairs, prompts files, any text extension ------------------------------------

def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


def pair_rows(rows):
    """TRL's conversational columns of each kept record (formats.preference_columns)."""
    return [preference_columns(row) for row in rows]


SKY = [user("What color is the sky?")]
# TRL's preference format, as its docs show it: standard (strings with a prompt), conversational with an
# explicit prompt, conversational with an implicit prompt (chosen and rejected are whole conversations).
TRL_STANDARD = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
                {"prompt": "The sun is", "chosen": " a star.", "rejected": " a planet."},
                {"prompt": "Grass is", "chosen": " green.", "rejected": " green."}]
TRL_EXPLICIT = [{"prompt": SKY, "chosen": [assistant("It is blue.")], "rejected": [assistant("It is green.")]},
                {"prompt": [{"role": "system", "content": "Be brief."}, user("Is the sun a star?")], "chosen": [assistant("Yes.")],
                 "rejected": [assistant("No, a planet.")]},
                {"prompt": SKY, "chosen": [assistant("Blue.")], "rejected": [assistant("Blue.")]}]
TRL_IMPLICIT = [{"chosen": SKY + [assistant("It is blue.")], "rejected": SKY + [assistant("It is green.")]},
                {"chosen": [user("Hi"), assistant("Hello!"), user("Is the sun a star?"), assistant("Yes.")],
                 "rejected": [user("Hi"), assistant("Hello!"), user("Is the sun a star?"), assistant("No, a planet.")]},
                {"chosen": SKY + [assistant("Blue.")], "rejected": SKY + [assistant("Blue.")]}]
TRL_PAIRS = {  # the first two rows of each, as TRL's columns
    "standard": [{"prompt": [user("The sky is")], "chosen": [assistant(" blue.")], "rejected": [assistant(" green.")]},
                 {"prompt": [user("The sun is")], "chosen": [assistant(" a star.")], "rejected": [assistant(" a planet.")]}],
    "explicit": [{k: TRL_EXPLICIT[i][k] for k in ("prompt", "chosen", "rejected")} for i in range(2)],
    "implicit": [{"prompt": SKY, "chosen": [assistant("It is blue.")], "rejected": [assistant("It is green.")]},
                 {"prompt": [user("Hi"), assistant("Hello!"), user("Is the sun a star?")], "chosen": [assistant("Yes.")],
                  "rejected": [assistant("No, a planet.")]}],
}


@pytest.mark.parametrize("kind, rows", [("standard", TRL_STANDARD), ("explicit", TRL_EXPLICIT), ("implicit", TRL_IMPLICIT)])
def test_trl_preference_pairs_keep_both_sides(tmp_path, kind, rows):
    metrics, records = run(tmp_path, write_jsonl(tmp_path / "pairs.jsonl", rows), "instruction")
    assert metrics["read"] == 3 and metrics["kept"] == 2 and metrics["rejected_by_reason"] == {"identical_pair": 1}
    assert metrics["pairs"] == 2 and metrics["pairs_rejected_dropped"] == 0
    assert pair_rows(records) == TRL_PAIRS[kind]
    for record, columns in zip(records, TRL_PAIRS[kind]):
        meta = json.loads(record["meta"])
        assert record["messages"] == columns["prompt"] + columns["chosen"]  # SFT trains on the chosen side
        assert meta["rejected"] == columns["rejected"] and meta["format"] == "preference"
    rejected = pq.read_table(tmp_path / "data/rejects/download-src.parquet").to_pylist()
    assert json.loads(rejected[0]["raw"]) == rows[2] and "the same reply" in rejected[0]["detail"]


HH = "\n\nHuman: {}\n\nAssistant: {}"
HH_ROWS = [  # Anthropic HH-RLHF: transcripts whose last Assistant turn differs
    {"chosen": HH.format("What is a good name for a cat?", "Many people like Luna or Milo."),
     "rejected": HH.format("What is a good name for a cat?", "Cats do not need names.")},
    {"chosen": HH.format("Can you help me bake bread?", "Sure. Do you have yeast?") + HH.format("Yes, dry yeast.", "Great: mix it with warm water first."),
     "rejected": HH.format("Can you help me bake bread?", "Sure. Do you have yeast?") + HH.format("Yes, dry yeast.", "Then you cannot bake.")},
    {"chosen": HH.format("How tall is Everest?", "About 8,849 metres."),  # prompts differ: no pair
     "rejected": HH.format("How tall is K2?", "About 8,611 metres.")},
    {"chosen": HH.format("Hi", "Hello!"), "rejected": HH.format("Hi", "Hello!")},
]


def test_hh_rlhf_transcripts_become_pairs_with_the_shared_prefix_as_prompt(tmp_path):
    metrics, records = run(tmp_path, write_jsonl(tmp_path / "hh.jsonl", HH_ROWS), "instruction")
    assert metrics["read"] == 4 == metrics["kept"] + metrics["rejected"] and metrics["kept"] == metrics["pairs"] == 2
    assert metrics["rejected_by_reason"] == {"identical_pair": 1, "prompt_mismatch": 1}
    assert pair_rows(records) == [
        {"prompt": [user("What is a good name for a cat?")], "chosen": [assistant("Many people like Luna or Milo.")],
         "rejected": [assistant("Cats do not need names.")]},
        {"prompt": [user("Can you help me bake bread?"), assistant("Sure. Do you have yeast?"), user("Yes, dry yeast.")],
         "chosen": [assistant("Great: mix it with warm water first.")], "rejected": [assistant("Then you cannot bake.")]}]
    assert all(json.loads(r["meta"])["format"] == "hh_rlhf" for r in records)
    detail = pq.read_table(tmp_path / "data/rejects/download-src.parquet").to_pylist()[0]["detail"]
    assert "do not answer one prompt" in detail


LLAMA_FACTORY = [  # LLaMA-Factory's sharegpt preference data (data/README.md)
    {"conversations": [{"from": "human", "value": "Name a primary colour."}], "chosen": {"from": "gpt", "value": "Red."},
     "rejected": {"from": "gpt", "value": "Green."}},
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "2+2?"}],
     "chosen": {"from": "gpt", "value": "4"}, "rejected": {"from": "gpt", "value": "5"}, "system": "Be brief."},
    {"conversations": [{"from": "human", "value": "2+3?"}], "chosen": {"from": "gpt", "value": "5"}},  # no rejected side
]


def test_sharegpt_preference_pairs(tmp_path):
    (tmp_path / "dpo.json").write_text(json.dumps(LLAMA_FACTORY, indent=2))  # a JSON array, as LLaMA-Factory's files are
    metrics, records = run(tmp_path, tmp_path / "dpo.json", "instruction")
    assert metrics["read"] == 3 and metrics["kept"] == metrics["pairs"] == 2 and metrics["rejected_by_reason"] == {"missing_field": 1}
    assert pair_rows(records) == [
        {"prompt": [user("Name a primary colour.")], "chosen": [assistant("Red.")], "rejected": [assistant("Green.")]},
        {"prompt": [user("Hi"), assistant("Hello!"), user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")]}]
    meta = json.loads(records[1]["meta"])
    assert meta["format"] == "sharegpt_preference" and meta["system"] == "Be brief."


def test_pairs_chosen_keeps_the_chosen_side_and_counts_the_dropped_replies(tmp_path):
    metrics, records = run(tmp_path, write_jsonl(tmp_path / "hh.jsonl", HH_ROWS), "instruction", pairs="chosen")
    assert metrics["kept"] == metrics["pairs"] == metrics["pairs_rejected_dropped"] == 2
    assert records[0]["messages"] == [user("What is a good name for a cat?"), assistant("Many people like Luna or Milo.")]
    assert all("rejected" not in json.loads(r["meta"]) for r in records) and pair_rows(records) == [None, None]


def test_records_that_are_not_pairs_count_no_pairs(tmp_path):
    metrics, records = run(tmp_path, write_jsonl(tmp_path / "chat.jsonl", [{"prompt": "2+2=", "completion": "4"}]), "instruction")
    assert "pairs" not in metrics and pair_rows(records) == [None]


MT_BENCH = [  # MT-bench's question.jsonl
    {"question_id": 81, "category": "writing", "turns": [
        "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences and must-see attractions.",
        "Rewrite your previous response. Start every sentence with the letter A."]},
    {"question_id": 111, "category": "math", "turns": [
        "The vertices of a triangle are at points (0, 0), (-1, 1), and (3, 3). What is the area of the triangle?",
        "What's area of the circle circumscribing the triangle?"], "reference": ["Area is 3", "5pi"]},
    {"question_id": 999, "category": "broken", "turns": "not a list"},
]


def test_turns_are_prompts_for_generation_not_training_records(tmp_path):
    path = write_jsonl(tmp_path / "question.jsonl", MT_BENCH)
    with pytest.raises(StageError) as error:
        run(tmp_path, path, "instruction")
    assert str(error.value) == (f"{path}: a file of prompts without answers (format turns, as MT-bench's question.jsonl), which makes "
                                "no training record; use it as the seed_file of a kind: generate source")
    assert not (tmp_path / "metrics/download/src.json").exists() and not (tmp_path / "data/raw/src.parquet").exists()
    # Where prompts are read, read = kept + rejected: each question is user turns, the broken row a counted reject.
    items = list(local.read(LocalSource(kind="local", path=str(path), category="instruction", max_samples=1), prompts=True))
    parsed = [item for item in items if isinstance(item, Parsed)]
    assert len(items) == len(MT_BENCH) and [item.reason for item in items if isinstance(item, Rejected)] == ["bad_type"]
    assert [item.messages for item in parsed] == [[user(turn) for turn in row["turns"]] for row in MT_BENCH[:2]]
    assert parsed[1].meta == {"question_id": 111, "category": "math", "reference": ["Area is 3", "5pi"], "file": str(path), "format": "turns"}
    # ... and a kind: generate source takes the first turn of each question as a seed.
    source = GenerateSource(kind="generate", teacher="teacher", method="self_instruct", n=1, seed_file=str(path))
    assert read_seeds(source) == [row["turns"][0] for row in MT_BENCH[:2]]


@pytest.mark.parametrize("name", ["notes.raw", "server.log", "README"])
def test_format_text_reads_any_extension_as_plain_text(tmp_path, name):
    path = tmp_path / name
    path.write_text("First document,\nover two lines.\n\nSecond document.\n")
    metrics, records = run(tmp_path / "text", path, "web", format="text")
    assert [r["text"] for r in records] == ["First document,\nover two lines.", "Second document."] and metrics["rejected"] == 0
    _, records = run(tmp_path / "lines", path, "web", format="text", split="line")
    assert [r["text"] for r in records] == ["First document,", "over two lines.", "Second document."]
    with pytest.raises(StageError) as error:
        run(tmp_path / "auto", path, "web")
    extension = f"'{path.suffix}'" if path.suffix else "(no extension)"
    assert str(error.value) == (f"{path}: unknown file type {extension} (expected one of .jsonl, .ndjson, .json, .parquet, .txt, .md; "
                                "format: text reads any file as plain text)")


def test_an_unknown_format_names_the_fields_and_the_supported_formats(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"chosen": "yes", "rejected": "no"}])  # strings without a prompt, not a transcript
    with pytest.raises(StageError) as error:
        run(tmp_path, path, "instruction")
    assert str(error.value) == (f"{path}:1: cannot tell the format from the fields (chosen, rejected); set format: in the source "
                                "(supported formats: alpaca, sharegpt, messages, prompt_completion, self_instruct, text, preference, "
                                "hh_rlhf, sharegpt_preference, turns; docs/sources.md lists their fields)")


def test_the_format_param_allows_exactly_the_formats_there_are():
    assert set(get_args(Format)) == {"auto", *FORMATS}


# UltraFeedback-binarized (HuggingFaceH4/ultrafeedback_binarized): a prompt string, and chosen and rejected as
# whole conversations that repeat it; the extra columns go to meta.
ULTRAFEEDBACK = [
    {"prompt": "What color is the sky?", "prompt_id": "a1", "chosen": SKY + [assistant("It is blue.")],
     "rejected": SKY + [assistant("It is green.")], "messages": SKY + [assistant("It is blue.")], "score_chosen": 8.0, "score_rejected": 3.0},
    {"prompt": "Is the sun a star?", "prompt_id": "a2", "chosen": SKY + [assistant("Yes.")], "rejected": SKY + [assistant("No.")],
     "messages": SKY + [assistant("Yes.")], "score_chosen": 7.0, "score_rejected": 2.0},  # the prompt is not the conversations' question
]
# LLaMA-Factory's alpaca-style preference data: instruction and input are the prompt.
ALPACA_PAIRS = [{"instruction": "Add the numbers.", "input": "2 and 3", "chosen": "5", "rejected": "6"},
                {"instruction": "Name a colour.", "chosen": "Red.", "rejected": "Red."}]


def test_ultrafeedback_and_alpaca_style_pairs_keep_both_sides(tmp_path):
    metrics, records = run(tmp_path, write_jsonl(tmp_path / "uf.jsonl", ULTRAFEEDBACK), "instruction")
    assert metrics["read"] == 2 and metrics["kept"] == metrics["pairs"] == 1 and metrics["rejected_by_reason"] == {"prompt_mismatch": 1}
    assert pair_rows(records) == [{"prompt": SKY, "chosen": [assistant("It is blue.")], "rejected": [assistant("It is green.")]}]
    assert json.loads(records[0]["meta"])["score_rejected"] == 3.0
    metrics, records = run(tmp_path / "alpaca", write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_PAIRS), "instruction")
    assert metrics["read"] == 2 and metrics["kept"] == 1 and metrics["rejected_by_reason"] == {"identical_pair": 1}
    assert pair_rows(records) == [{"prompt": [user("Add the numbers.\n\n2 and 3")], "chosen": [assistant("5")], "rejected": [assistant("6")]}]


def test_download_max_chars_counts_the_rejected_reply_of_a_pair(tmp_path):
    rows = [{"prompt": "Say it.", "chosen": "short", "rejected": "x" * 60}, {"prompt": "Say it.", "chosen": "short", "rejected": "long"}]
    source = {"kind": "local", "path": str(write_jsonl(tmp_path / "pairs.jsonl", rows)), "category": "instruction", "max_samples": 10}
    metrics = download(parse_params({"sources": {"src": source}, "download": {"max_chars": 50}}), "src", tmp_path)
    assert metrics["read"] == 2 and metrics["kept"] == 1 and metrics["rejected_by_reason"] == {"too_long": 1}
    assert pair_rows(pq.read_table(tmp_path / "data/raw/src.parquet").to_pylist())[0]["rejected"] == [assistant("long")]
