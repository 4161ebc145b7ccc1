import pyarrow.parquet as pq
import pytest

from synthtrain.records import SCHEMA, InvalidRecord, RecordWriter, make_record, read_batches, record_id


def chat(user="What is 2 + 2?", reply="4"):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def test_id_is_stable_across_case_whitespace_and_unicode_form():
    assert record_id(text="Café  au lait\n") == record_id(text="CAFE\u0301 au lait")
    assert record_id(text="cafe au lait") != record_id(text="café au lait")
    assert record_id(messages=chat()) == record_id(messages=chat("what is 2 + 2?"))
    assert len(record_id(text="x")) == 32


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"text": "   "}, "empty_text"),
        ({"messages": []}, "empty_messages"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "bad_role"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no_assistant_turn"),
        ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}, "bad_type"),
        ({"text": "ok \udcff"}, "invalid_utf8"),
        ({"text": "x" * 101}, "too_long"),
        ({"text": "a", "messages": chat()}, "bad_shape"),
    ],
)
def test_make_record_rejects_with_a_reason(kwargs, reason):
    with pytest.raises(InvalidRecord) as info:
        make_record("s", "web", max_chars=100, **kwargs)
    assert info.value.reason == reason


def test_writer_roundtrip_in_batches_and_empty_file(tmp_path):
    path = tmp_path / "r.parquet"
    with RecordWriter(path) as writer:
        for i in range(25_001):
            writer.write(make_record("s", "knowledge", text=f"doc {i}", meta={"n": i}))
    batches = list(read_batches(path, batch_rows=10_000))
    assert [len(b) for b in batches] == [10_000, 10_000, 5_001]
    assert batches[2][-1]["text"] == "doc 25000" and batches[2][-1]["meta"] == '{"n":25000}'
    assert pq.ParquetFile(path).schema_arrow == SCHEMA
    with RecordWriter(tmp_path / "empty.parquet"):
        pass
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0
