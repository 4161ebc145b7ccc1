import numpy as np
import pyarrow as pa

from synthtrain.records import SCHEMA, content_of, make_record
from synthtrain.text import content_column, ngram_hashes, word_hashes


def test_content_column_is_content_of_for_every_record():
    records = [
        make_record("s", "instruction", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                                                   {"role": "assistant", "content": "Hello.\nBye."}]),
        make_record("s", "web", text="A page.\n\nWith two blocks."),
        make_record("s", "instruction", messages=[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]),
    ]
    table = pa.Table.from_pylist(records, schema=SCHEMA)
    assert content_column(table).to_pylist() == [content_of(r["messages"], r["text"]) for r in records]
    batch = table.to_batches()[0]
    assert content_column(batch.slice(2)).to_pylist() == [content_of(records[2]["messages"], None)]


def test_words_are_folded_and_hashed_the_same_in_every_batch():
    first, offsets = word_hashes(pa.array(["The CAT, sat!", "  ", "ﬁne—day"]))
    assert offsets.tolist() == [0, 3, 3, 5]  # blank text: no words; punctuation splits words
    again, _ = word_hashes(pa.array(["cat the fine"]))
    assert again.tolist() == [first[1], first[0], first[3]]


def test_ngram_windows_match_across_texts_and_short_texts_hash_whole():
    words, offsets = word_hashes(pa.array(["a b c d", "x b c d y", "b c"]))
    grams, owner = ngram_hashes(words, offsets, 3)
    assert owner.tolist() == [0, 0, 1, 1, 1, 2]
    assert grams[1] == grams[3]  # "b c d" in both texts
    assert len(np.unique(grams)) == 5
    grams, owner = ngram_hashes(words, offsets, 3, short=False)
    assert owner.tolist() == [0, 0, 1, 1, 1]
