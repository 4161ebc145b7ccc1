"""Row normalisers shared by ``kind: local`` and ``kind: hub``: each maps one
input row (a dict) in a known format to the record fields, or raises
InvalidRecord naming the field that is wrong.

A row becomes ``Parsed``; input turned away before it is a record (a malformed
JSON line, a row below a score threshold) becomes ``Rejected`` with its reason.
The download stage counts both, so read = kept + rejected holds.
"""

from dataclasses import dataclass, field

from synthtrain.records import InvalidRecord, shown

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant"}


@dataclass
class Parsed:
    location: str
    raw: object  # the input as read (a line, or a parsed row), kept if the record is rejected
    messages: list[dict] | None = None
    text: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Rejected:
    location: str
    reason: str
    detail: str
    raw: object


def require(row: dict, key: str, kind: type = str):
    if key not in row or row[key] is None:
        raise InvalidRecord("missing_field", f"field '{key}' is missing")
    if not isinstance(row[key], kind):
        raise InvalidRecord("bad_type", f"field '{key}' is {type(row[key]).__name__}, expected {kind.__name__}")
    return row[key]


def optional_str(row: dict, key: str) -> str:
    value = row.get(key) or ""
    if not isinstance(value, str):
        raise InvalidRecord("bad_type", f"field '{key}' is {type(value).__name__}, expected str")
    return value


def alpaca(row: dict) -> dict:
    instruction = require(row, "instruction")
    extra = optional_str(row, "input")
    answer_key = "output" if "output" in row else "response"
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": require(row, answer_key)}]}


def sharegpt(row: dict, key: str = "conversations") -> dict:
    messages = []
    for i, turn in enumerate(require(row, key, list)):
        if not isinstance(turn, dict):
            raise InvalidRecord("bad_type", f"{key}[{i}] is {type(turn).__name__}, expected an object")
        speaker = turn.get("from")
        if not isinstance(speaker, str) or speaker not in SHAREGPT_ROLES:  # a list or an object is not hashable
            raise InvalidRecord("bad_role", f"{key}[{i}].from is {shown(speaker)}, expected one of {', '.join(SHAREGPT_ROLES)}")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": require(turn, "value")})
    return {"messages": messages}


def openai_messages(row: dict) -> dict:
    messages = []
    for i, turn in enumerate(require(row, "messages", list)):
        if not isinstance(turn, dict):
            raise InvalidRecord("bad_type", f"messages[{i}] is {type(turn).__name__}, expected an object")
        messages.append({"role": turn.get("role"), "content": turn.get("content")})
    return {"messages": messages}


def prompt_completion(row: dict) -> dict:
    return {"messages": [{"role": "user", "content": require(row, "prompt")}, {"role": "assistant", "content": require(row, "completion")}]}


def self_instruct(row: dict) -> list[dict]:
    """Self-Instruct seed tasks: one record per instance of the task."""
    instruction = require(row, "instruction")
    instances = require(row, "instances", list)
    if not instances:
        raise InvalidRecord("missing_field", "field 'instances' is empty")
    records = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise InvalidRecord("bad_type", f"instances[{i}] is {type(instance).__name__}, expected an object")
        records.append(alpaca({"instruction": instruction, "input": instance.get("input"), "output": instance.get("output")}))
    return records


def text(row: dict) -> dict:
    return {"text": require(row, "text")}


FORMATS = {
    "alpaca": alpaca,
    "sharegpt": sharegpt,
    "messages": openai_messages,
    "prompt_completion": prompt_completion,
    "self_instruct": self_instruct,
    "text": text,
}
# What each format consumes; every other field goes to meta.
CONTENT_FIELDS = {
    "alpaca": {"instruction", "input", "output", "response"},
    "sharegpt": {"conversations"},
    "messages": {"messages"},
    "prompt_completion": {"prompt", "completion"},
    "self_instruct": {"instruction", "instances"},
    "text": {"text"},
}


def detect(keys: set[str]) -> str | None:
    """The format whose fields a row has, or None."""
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if {"instruction", "instances"} <= keys:
        return "self_instruct"
    if "instruction" in keys and keys & {"output", "response"}:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    return None


def parse_row(row: dict, fmt: str, location: str, raw: object, meta: dict) -> list[Parsed]:
    """Normalise a row; the extra fields of the row join ``meta``."""
    if not isinstance(row, dict):
        raise InvalidRecord("bad_type", f"the row is {type(row).__name__}, expected an object")
    fields = FORMATS[fmt](row)
    extra = {k: v for k, v in row.items() if k not in CONTENT_FIELDS[fmt] and v is not None}
    fields = fields if isinstance(fields, list) else [fields]
    return [Parsed(location=location if len(fields) == 1 else f"{location}[{i}]", raw=raw, meta={**extra, **meta}, **f)
            for i, f in enumerate(fields)]
