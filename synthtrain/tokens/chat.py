"""The ChatML chat template and special tokens of a trained tokenizer, the
rendering of records as text in Arrow, and the pre-token pattern shared by BPE
training and the tokenize stage's Arrow pre-tokenizer."""

import pyarrow as pa
import pyarrow.compute as pc

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2 of a trained tokenizer
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chatml_column(messages: pa.Array) -> pa.Array:
    """Every conversation rendered exactly as CHATML_TEMPLATE renders it (null
    for documents), in Arrow, since a Jinja call per record is far too slow."""
    turns = pc.list_flatten(messages)
    rendered = pc.binary_join_element_wise(IM_START, turns.field("role"), "\n", turns.field("content"), f"{IM_END}\n", "")
    offsets = pc.subtract(messages.offsets, messages.offsets[0])  # a sliced batch's offsets do not start at 0
    return pc.binary_join(pa.ListArray.from_arrays(offsets, rendered, mask=messages.is_null()), "")


def render_column(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """What each record contributes as text: its ChatML conversation, or its document."""
    messages = batch.column("messages")
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    return pc.coalesce(chatml_column(messages), batch.column("text"))


def pretoken_pattern(split_digits: bool) -> str:
    """GPT-2's pre-token pattern without its look-ahead (``\\s+(?!\\S)``), which RE2, and so
    Arrow, lacks: the tokenize stage splits texts into pre-tokens with this very
    pattern in Arrow and runs BPE once per distinct pre-token. Digits alone when split_digits."""
    digits = r"\p{N}" if split_digits else r" ?\p{N}+"
    return r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|" + digits + r"| ?[^\s\p{L}\p{N}]+|\s+"
