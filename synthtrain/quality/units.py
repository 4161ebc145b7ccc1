"""A batch of records taken apart into the pieces the scorers read.

A record is a list of *units*: the turns of a conversation, or the one text
of a document. Scorers work on flat arrays of units, words and lines with
offsets back to their record, so that no Python loop runs over records
(except the answer re-check, which only reads replies that show working).
"""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synthtrain.records import ROLES
from synthtrain.text import word_hashes

DOCUMENT = len(ROLES)  # the role code of a document's text; 0, 1, 2 are system, user, assistant
USER, ASSISTANT = ROLES.index("user"), ROLES.index("assistant")


@dataclass
class Units:
    texts: pa.StringArray       # every unit of every record, in record order
    role: np.ndarray            # per unit: index into ROLES, or DOCUMENT
    owner: np.ndarray           # per unit: the record it belongs to
    offsets: np.ndarray         # units of record i: offsets[i]:offsets[i+1]
    hashes: np.ndarray          # the words of all units, as synthtrain.text.word_hashes makes them
    word_offsets: np.ndarray    # words of unit u: hashes[word_offsets[u]:word_offsets[u+1]]
    answer: np.ndarray          # per record: the unit of the last assistant turn, -1 for documents
    question: np.ndarray        # per record: the last user turn before that answer, -1 if none

    @property
    def records(self) -> int:
        return len(self.offsets) - 1

    def per_record(self, per_unit: np.ndarray) -> np.ndarray:
        """Sum a per-unit quantity over each record's units."""
        total = np.concatenate([[0], np.cumsum(per_unit, dtype=np.float64)])
        return total[self.offsets[1:]] - total[self.offsets[:-1]]

    def unit_words(self) -> np.ndarray:
        return np.diff(self.word_offsets)

    def text_of(self, unit: np.ndarray) -> list[str | None]:
        """The texts of the given units (-1 gives None)."""
        texts = self.texts.take(pa.array(np.where(unit >= 0, unit, 0))).to_pylist()
        return [t if u >= 0 else None for t, u in zip(texts, unit)]


def _last_of(owner: np.ndarray, index: np.ndarray, records: int) -> np.ndarray:
    """The largest ``index`` per owner, -1 where an owner has none."""
    last = np.full(records, -1, dtype=np.int64)
    np.maximum.at(last, owner, index)
    return last


def split_units(batch: pa.RecordBatch | pa.Table) -> Units:
    messages, text = batch.column("messages"), batch.column("text")
    if isinstance(messages, pa.ChunkedArray):
        messages, text = messages.combine_chunks(), text.combine_chunks()
    records = len(messages)
    turn_offsets = messages.offsets.to_numpy().astype(np.int64)
    turn_offsets -= turn_offsets[0]
    turns = pc.list_flatten(messages)
    is_document = text.is_valid().to_numpy(zero_copy_only=False)
    units_per_record = np.diff(turn_offsets) + is_document
    offsets = np.concatenate([[0], np.cumsum(units_per_record)]).astype(np.int64)
    owner = np.repeat(np.arange(records, dtype=np.int64), units_per_record)

    # Turns first, then documents, in one array; ``order`` puts them in record order.
    turn_owner = np.repeat(np.arange(records, dtype=np.int64), np.diff(turn_offsets))
    turn_slot = offsets[turn_owner] + np.arange(len(turn_owner)) - turn_offsets[turn_owner]
    document_slot = offsets[:-1][is_document]
    order = np.empty(len(owner), dtype=np.int64)
    order[turn_slot] = np.arange(len(turn_slot))
    order[document_slot] = len(turn_slot) + np.arange(len(document_slot))
    texts = pa.concat_arrays([turns.field("content").cast(pa.string()), text.filter(pa.array(is_document)).cast(pa.string())])
    texts = texts.take(pa.array(order))
    turn_roles = pc.index_in(turns.field("role"), value_set=pa.array(ROLES)).to_numpy(zero_copy_only=False)
    role = np.concatenate([turn_roles, np.full(len(document_slot), DOCUMENT)])[order].astype(np.int8)

    hashes, word_offsets = word_hashes(texts)
    index = np.arange(len(owner), dtype=np.int64)
    answer = _last_of(owner[role == ASSISTANT], index[role == ASSISTANT], records)
    before_answer = (role == USER) & (index < answer[owner])
    question = _last_of(owner[before_answer], index[before_answer], records)
    return Units(texts, role, owner, offsets, hashes, word_offsets, answer, question)
