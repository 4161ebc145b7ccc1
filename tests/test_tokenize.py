import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import stage
from synthtrain.sources.download import download
from synthtrain.params import ParamsError, StageError, parse_params
from synthtrain.records import SCHEMA, make_record
from synthtrain.tokens.encoding import backend_ids, count_tokens, encode, load_tokenizer, own_pattern, pretokenized_ids, render
from synthtrain.tokens.chat import CHATML_TEMPLATE, ENDOFTEXT, IM_END

SEQ_LEN = 64
PARAMS = {"sources": {"builtin": {"kind": "builtin"}},
          "tokenizer": {"vocab_size": 1024, "train_records": 2000},
          "tokenize": {"seq_len": SEQ_LEN, "sequences_per_shard": 100}}
# Records whose rendering is easy to get wrong: spaces and newlines at the
# borders of contents, unicode, digits, several assistant turns, a literal
# special token inside a content.
EDGE = [
    make_record("edge", "instruction", messages=[
        {"role": "system", "content": "  You are terse.  "},
        {"role": "user", "content": "What is 12345 + 678?\n"},
        {"role": "assistant", "content": " 13023 \n"}]),
    make_record("edge", "instruction", messages=[
        {"role": "user", "content": "Café, naïve, 中文, 🙂?"},
        {"role": "assistant", "content": "Oui: café → 咖啡 🙂"},
        {"role": "user", "content": "\nAnd again\n\n"},
        {"role": "assistant", "content": "Again: 3.14159\t(π)"}]),
    make_record("edge", "instruction", messages=[
        {"role": "user", "content": "Say the token."},
        {"role": "assistant", "content": "It is <|im_end|> here."}]),
    make_record("edge", "knowledge", text="  Leading and trailing spaces, 2024-11-21.  \n\n"),
    make_record("edge", "web", text="Ünïcödé ✓ 1,234,567\r\nline two\n"),
]
# A reply that starts with newlines, which can merge with the template's
# newline before it into one token that then counts.
STRADDLE = make_record("edge", "instruction", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\nhello"}])
REJECTED = [
    {"id": "e", "source": "edge", "category": "web", "messages": None, "text": "", "meta": "{}"},
    {"id": "u", "source": "edge", "category": "instruction", "messages": [{"role": "user", "content": "hi"}], "text": None, "meta": "{}"},
]


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def run_pipeline(root, pool: pa.Table, **env) -> None:
    """The tokenizer and tokenize stages in `root` on a pool, a mix and two held-out sets made from it."""
    (root / "data/dedup").mkdir(parents=True, exist_ok=True)
    (root / "data/mix").mkdir(parents=True, exist_ok=True)
    (root / "data/heldout").mkdir(parents=True, exist_ok=True)
    pq.write_table(pool, root / "data/dedup/train.parquet")
    pq.write_table(pa.concat_tables([pool.slice(0, 1500), table(EDGE + [STRADDLE] + REJECTED)]), root / "data/mix/train.parquet")
    pq.write_table(pool.slice(1500, 300), root / "data/heldout/builtin.parquet")
    pq.write_table(table(EDGE), root / "data/heldout/edge.parquet")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    stage(root, "stages.train_tokenizer", **env)
    stage(root, "stages.tokenize", **env)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> pa.Table:
    root = tmp_path_factory.mktemp("builtin")
    download(parse_params({"sources": {"builtin": {"kind": "builtin", "max_samples": 2500}}}), "builtin", root)
    return pq.read_table(root / "data/raw/builtin.parquet")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, pool):
    root = tmp_path_factory.mktemp("tokenize")
    run_pipeline(root, pool)
    return root


@pytest.fixture(scope="module")
def tokenizer(workdir):
    return load_tokenizer(workdir / "models/tokenizer")


def records_of(encoded, rows: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(tokens, mask) of each record, [] for a rejected one."""
    ends = np.cumsum(encoded.lengths)
    return [(encoded.tokens[end - n : end], encoded.loss[end - n : end]) for end, n in zip(ends, encoded.lengths)][:rows]


def runs(tokens: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """The tokens of each stretch of mask 1."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    return [tokens[a:b] for a, b in zip(edges[::2], edges[1::2])]


# --- the tokenizer ---------------------------------------------------------------------
def test_tokenizer_loads_from_disk_with_chatml_and_special_tokens(workdir):
    tokenizer = AutoTokenizer.from_pretrained(workdir / "models/tokenizer")
    assert len(tokenizer) == 1024 and tokenizer.chat_template == CHATML_TEMPLATE
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tokenizer.eos_token == tokenizer.pad_token == ENDOFTEXT
    assert len(tokenizer.tokenize("12345")) == 5  # digits split
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    metrics = json.loads((workdir / "metrics/tokenizer.json").read_text())
    assert metrics["vocab_size"] == 1024 and sum(m["records"] for m in metrics["sample"].values()) == 2000


def test_rendering_equals_apply_chat_template(workdir, pool):
    tokenizer = AutoTokenizer.from_pretrained(workdir / "models/tokenizer")  # from disk, as the train stage loads it
    rows = EDGE + [STRADDLE] + pool.slice(0, 300).to_pylist()
    for (tokens, _), row in zip(records_of(encode(tokenizer, table(rows), True), len(rows)), rows):
        if row["messages"] is not None:
            expected = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False)
        else:
            expected = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        assert tokens.tolist() == expected + [tokenizer.eos_token_id]


def test_pre_tokenizing_in_arrow_gives_the_tokenizers_own_ids_and_offsets(tokenizer, pool):
    rows = EDGE + [STRADDLE] + pool.slice(0, 300).to_pylist()
    texts, _ = render(tokenizer, table(rows))
    fast = pretokenized_ids(tokenizer, pa.array(texts), own_pattern(tokenizer))
    for ours, theirs in zip(fast, backend_ids(tokenizer, texts)):
        assert np.array_equal(ours, theirs)


# --- loss masks ------------------------------------------------------------------------
def test_assistant_only_masks_exactly_the_assistant_turns(tokenizer, pool):
    rows = [r for r in EDGE + pool.slice(0, 300).to_pylist() if r["messages"] is not None]
    for (tokens, mask), row in zip(records_of(encode(tokenizer, table(rows), True), len(rows)), rows):
        replies = [m["content"] + IM_END for m in row["messages"] if m["role"] == "assistant"]
        assert [tokenizer.decode(run) for run in runs(tokens, mask)] == replies
        assert mask[-1] == 0  # the eos after a conversation is not trained


def test_the_mask_is_the_tokens_that_overlap_a_reply_or_its_im_end(tokenizer):
    rows = [r for r in EDGE + [STRADDLE] if r["messages"] is not None]
    for (_, mask), row in zip(records_of(encode(tokenizer, table(rows), True), len(rows)), rows):
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        replies, position = [], 0
        for message in row["messages"]:
            start = text.index(message["content"] + IM_END, position)
            position = start + len(message["content"] + IM_END)
            if message["role"] == "assistant":
                replies.append((start, position))
        offsets = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).offsets
        assert mask[:-1].tolist() == [any(s < reply_end and e > reply_start for reply_start, reply_end in replies) for s, e in offsets]


def test_documents_and_assistant_only_false_count_every_token(tokenizer, pool):
    rows = EDGE + pool.slice(0, 300).to_pylist()
    for (tokens, mask), row in zip(records_of(encode(tokenizer, table(rows), True), len(rows)), rows):
        if row["messages"] is None:
            assert mask.all() and tokens[-1] == tokenizer.eos_token_id
    everything = encode(tokenizer, table(rows), False)
    assert everything.loss.all() and (everything.loss_tokens == everything.lengths).all()


# --- the stream, packing and rejects ---------------------------------------------------
def read_set(directory):
    index = json.loads((directory / "index.json").read_text())
    tokens = [np.load(directory / s["tokens"], mmap_mode="r") for s in index["shards"]]
    masks = [np.load(directory / s["mask"], mmap_mode="r") for s in index["shards"]]
    return index, tokens, masks


def test_count_tokens_is_what_packing_produces(workdir, tokenizer):
    mix = pq.read_table(workdir / "data/mix/train.parquet")
    lengths, loss_tokens = count_tokens(tokenizer, mix, assistant_only=True)
    _, tokens, masks = read_set(workdir / "data/tokens/train")
    stream, mask = np.concatenate(tokens).ravel(), np.concatenate(masks).ravel()
    ends = np.cumsum(lengths)
    assert (stream[ends[lengths > 0] - 1] == tokenizer.eos_token_id).all()
    assert [int(mask[end - n : end].sum()) for end, n in zip(ends, lengths)] == loss_tokens.tolist()
    assert (stream[ends[-1] :] == tokenizer.pad_token_id).all() and not mask[ends[-1] :].any()
    per_record = encode(tokenizer, mix, True)
    assert stream[: ends[-1]].tolist() == per_record.tokens.tolist()
    metrics = json.loads((workdir / "metrics/tokenize.json").read_text())["train"]
    assert sum(metrics["tokens"].values()) == lengths.sum() and sum(metrics["loss_tokens"].values()) == loss_tokens.sum()


def test_packing_layout_index_and_tail_padding(workdir, tokenizer):
    metrics = json.loads((workdir / "metrics/tokenize.json").read_text())
    metadata = json.loads((workdir / "data/tokens/metadata.json").read_text())
    assert metadata["vocab_size"] == 1024 and metadata["dtype"] == "uint16" and metadata["seq_len"] == SEQ_LEN
    assert set(metadata["heldout"]) == set(metrics["heldout"]) == {"builtin", "edge"}
    for directory, counts in [("train", metrics["train"])] + [(f"heldout/{name}", m) for name, m in metrics["heldout"].items()]:
        index, tokens, masks = read_set(workdir / "data/tokens" / directory)
        assert index["dtype"] == "uint16" and index["seq_len"] == SEQ_LEN and index["pad_id"] == tokenizer.pad_token_id
        assert [len(t) for t in tokens] == [s["sequences"] for s in index["shards"]] and all(s["sequences"] <= 100 for s in index["shards"])
        assert all(t.shape[1:] == (SEQ_LEN,) and t.dtype == np.uint16 for t in tokens)
        assert all(m.shape == t.shape and m.dtype == np.uint8 for t, m in zip(tokens, masks))
        total = sum(counts["tokens"].values())
        assert index["sequences"] == counts["sequences"] == -(-total // SEQ_LEN)
        assert counts["padding_tokens"] == index["sequences"] * SEQ_LEN - total < SEQ_LEN
    assert metadata["train"] == {key: metrics["train"][key] for key in ("sequences", "tokens", "loss_tokens")}
    assert metadata["heldout"]["edge"]["sequences"] == metrics["heldout"]["edge"]["sequences"]
    assert len(read_set(workdir / "data/tokens/train")[0]["shards"]) > 1


def test_records_that_render_to_nothing_are_rejected(workdir, tokenizer):
    rejects = pq.read_table(workdir / "data/rejects/tokenize.parquet").to_pylist()
    assert [(r["id"], r["reason"], r["file"]) for r in rejects] == [
        ("e", "empty", "data/mix/train.parquet"), ("u", "no_assistant_turn", "data/mix/train.parquet")]
    train = json.loads((workdir / "metrics/tokenize.json").read_text())["train"]
    assert train["in"] == train["kept"] + train["rejected"] and train["rejected_by_reason"] == {"empty": 1, "no_assistant_turn": 1}
    assert count_tokens(tokenizer, table(REJECTED), assistant_only=True)[0].tolist() == [0, 0]
    assert count_tokens(tokenizer, table(REJECTED), assistant_only=False)[0][1] > 0  # trained on every token, a user turn is data


def test_same_params_give_byte_identical_tokenizer_and_shards(workdir, pool, tmp_path):
    run_pipeline(tmp_path, pool, RAYON_NUM_THREADS="1")  # one thread here, all cores the first time
    files = [p.relative_to(workdir) for d in ("models/tokenizer", "data/tokens") for p in sorted((workdir / d).rglob("*")) if p.is_file()]
    assert len(files) > 10
    for path in files + [p.relative_to(workdir) for p in (workdir / "metrics").iterdir()]:
        assert (tmp_path / path).read_bytes() == (workdir / path).read_bytes(), path


# --- pretrained tokenizers -------------------------------------------------------------
def test_pretrained_tokenizer_without_template_gets_chatml(workdir, tmp_path):
    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(workdir / "models/tokenizer/tokenizer.json")), eos_token=ENDOFTEXT)
    plain.save_pretrained(tmp_path / "plain")
    shutil.copytree(workdir / "data/dedup", tmp_path / "data/dedup")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "tokenizer": {"pretrained": str(tmp_path / "plain"), "train_records": 100}}))
    stage(tmp_path, "stages.train_tokenizer")
    loaded = load_tokenizer(tmp_path / "models/tokenizer")
    assert loaded.chat_template == CHATML_TEMPLATE and loaded.pad_token == ENDOFTEXT
    assert json.loads((tmp_path / "metrics/tokenizer.json").read_text())["source"] == str(tmp_path / "plain")


ZEPHYR = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


def test_another_chat_template_is_rendered_by_it(workdir):
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(workdir / "models/tokenizer/tokenizer.json")),
                                        eos_token=ENDOFTEXT, chat_template=ZEPHYR)
    rows = EDGE
    for (tokens, mask), row in zip(records_of(encode(tokenizer, table(rows), True), len(rows)), rows):
        if row["messages"] is None:
            continue
        assert tokens.tolist() == tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False) + [tokenizer.eos_token_id]
        replies = [m["content"] + ENDOFTEXT + "\n" for m in row["messages"] if m["role"] == "assistant"]
        assert [tokenizer.decode(run) for run in runs(tokens, mask)] == replies


def content_runs(tokenizer, encoded, rows: int) -> list[list[str]]:
    """Per record, the decoded stretches of its content mask."""
    ends = np.cumsum(encoded.lengths)
    return [[tokenizer.decode(run) for run in runs(encoded.tokens[end - n: end], encoded.content[end - n: end])]
            for end, n in zip(ends, encoded.lengths)][:rows]


def test_the_content_mask_holds_replies_and_documents_with_their_end_tokens_and_no_markup(workdir):
    """What bits per byte counts: each reply and the token that ends it, each
    document and its eos; never a header or a user turn, whatever assistant_only."""
    chatml = load_tokenizer(workdir / "models/tokenizer")
    zephyr = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(workdir / "models/tokenizer/tokenizer.json")),
                                     eos_token=ENDOFTEXT, chat_template=ZEPHYR)
    for tokenizer, end in ((chatml, IM_END), (zephyr, ENDOFTEXT)):  # zephyr's turns end with eos and a newline
        for assistant_only in (True, False):
            encoded = encode(tokenizer, table(EDGE), assistant_only, content=True)
            for found, row in zip(content_runs(tokenizer, encoded, len(EDGE)), EDGE):
                if row["messages"] is None:
                    assert found == [row["text"] + ENDOFTEXT]
                else:
                    assert "".join(found) == "".join(m["content"] + end for m in row["messages"] if m["role"] == "assistant")
    assert encode(chatml, table(EDGE), True).content is None  # only when asked for
    upper = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(workdir / "models/tokenizer/tokenizer.json")),
                                    eos_token=ENDOFTEXT, chat_template=ZEPHYR.replace("m['content']", "m['content'] | upper"))
    encode(upper, table(EDGE), True)  # training needs no content
    with pytest.raises(StageError, match="does not write assistant messages as they are"):
        encode(upper, table(EDGE), True, content=True)


# --- errors ----------------------------------------------------------------------------
def test_params_errors_name_the_key():
    with pytest.raises(ParamsError, match="tokenizer: unknown key 'vocab_sise'; did you mean 'vocab_size'"):
        parse_params({**PARAMS, "tokenizer": {"vocab_sise": 1024}})
    with pytest.raises(ParamsError, match="tokenize.seq_len = 4"):
        parse_params({**PARAMS, "tokenize": {"seq_len": 4}})
    with pytest.raises(ParamsError, match="tokenizer.vocab_size = 100"):
        parse_params({**PARAMS, "tokenizer": {"vocab_size": 100}})


def test_missing_inputs_fail_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for module, message in [("stages.train_tokenizer", "error: data/dedup/train.parquet is missing: run `dvc repro dedup` first"),
                            ("stages.tokenize", "error: models/tokenizer holds no tokenizer: run `dvc repro tokenizer` first")]:
        result = stage(tmp_path, module, check=False)
        assert result.returncode == 1 and result.stderr.strip() == message
