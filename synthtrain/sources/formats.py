"""Row normalisers shared by ``kind: local`` and ``kind: hub``: each maps one
input row (a dict) in a known format to the record fields, or raises
InvalidRecord naming the field that is wrong.

A row becomes ``Parsed``; input turned away before it is a record (a malformed
JSON line, a row below a score threshold) becomes ``Rejected`` with its reason.
The download stage counts both, so read = kept + rejected holds.

A preference pair (``preference``, ``hh_rlhf``, ``sharegpt_preference``) is one
record: its messages are the prompt turns and the chosen reply, so SFT trains on
the chosen side, and its meta keeps the rest of the pair (``PAIR_KEYS``), which
every later stage carries unchanged; ``preference_columns`` turns the record
back into TRL's columns. A ``turns`` row (MT-bench questions) has user turns
only: a prompt for generation, not a training record (``PROMPT_FORMATS``).
"""

import json
import re
from dataclasses import dataclass, field

from synthtrain.records import InvalidRecord, check_turns, shown

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant"}


@dataclass
class Parsed:
    location: str
    raw: object  # the input as read (a line, or a parsed row), kept if the record is rejected
    messages: list[dict] | None = None
    text: str | None = None
    meta: dict = field(default_factory=dict)
    pair: str | None = None  # from a preference pair: "keep" (its rejected reply is in meta) or "chosen" (dropped); LocalSource.pairs


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


INPUT_SEPARATOR = "\n\n"  # between an alpaca row's instruction and its input in the user turn


def alpaca_prompt(row: dict) -> str:
    """An alpaca row's user turn: the instruction, then its input when there is one."""
    instruction, extra = require(row, "instruction"), optional_str(row, "input")
    return f"{instruction}{INPUT_SEPARATOR}{extra}" if extra.strip() else instruction


def alpaca(row: dict) -> dict:
    answer_key = "output" if "output" in row else "response"
    return {"messages": [{"role": "user", "content": alpaca_prompt(row)}, {"role": "assistant", "content": require(row, answer_key)}]}


def sharegpt_turn(turn: object, name: str) -> dict:
    """One ``{from, value}`` turn (called ``name`` in messages) as a message."""
    if not isinstance(turn, dict):
        raise InvalidRecord("bad_type", f"{name} is {type(turn).__name__}, expected an object")
    speaker = turn.get("from")
    if not isinstance(speaker, str) or speaker not in SHAREGPT_ROLES:  # a list or an object is not hashable
        raise InvalidRecord("bad_role", f"{name}.from is {shown(speaker)}, expected one of {', '.join(SHAREGPT_ROLES)}")
    return {"role": SHAREGPT_ROLES[speaker], "content": require(turn, "value")}


def sharegpt(row: dict, key: str = "conversations") -> dict:
    return {"messages": [sharegpt_turn(turn, f"{key}[{i}]") for i, turn in enumerate(require(row, key, list))]}


def message_list(row: dict, key: str) -> list[dict]:
    """Field ``key``, a list of ``{role, content}`` objects, as messages (make_record checks them)."""
    messages = []
    for i, turn in enumerate(require(row, key, list)):
        if not isinstance(turn, dict):
            raise InvalidRecord("bad_type", f"{key}[{i}] is {type(turn).__name__}, expected an object")
        messages.append({"role": turn.get("role"), "content": turn.get("content")})
    return messages


def openai_messages(row: dict) -> dict:
    return {"messages": message_list(row, "messages")}


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


def turns(row: dict) -> dict:
    """MT-bench's question.jsonl: the user turns of a question, without answers."""
    questions = require(row, "turns", list)
    if not questions:
        raise InvalidRecord("missing_field", "field 'turns' is empty")
    for i, question in enumerate(questions):
        if not isinstance(question, str):
            raise InvalidRecord("bad_type", f"turns[{i}] is {type(question).__name__}, expected str")
    return {"messages": [{"role": "user", "content": question} for question in questions]}


# --- preference pairs -----------------------------------------------------------

PAIR_KEYS = ("prompt_turns", "rejected")  # meta of a pair: how many of its messages are the prompt; the rejected reply's turns
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")  # TRL DPOTrainer, conversational format with an explicit prompt
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant): ?")  # a turn of an Anthropic HH-RLHF transcript
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def pair(prompt: list[dict], chosen: list[dict], rejected: list[dict]) -> dict:
    """A preference pair as record fields: the prompt and the chosen reply are the
    messages; ``pair`` is the rest of it, for meta (PAIR_KEYS)."""
    if chosen == rejected:
        raise InvalidRecord("identical_pair", "chosen and rejected are the same reply: the pair prefers nothing")
    if not prompt:
        raise InvalidRecord("missing_field", "the pair has no prompt (no turn before the replies)")
    for side, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply:
            raise InvalidRecord("missing_field", f"{side} has no reply after the prompt")
        check_turns(reply, side)
        for i, turn in enumerate(reply):
            if turn["role"] != "assistant":
                raise InvalidRecord("bad_role", f"{side}[{i}].role is {turn['role']!r}; a reply holds assistant turns")
    return {"messages": prompt + chosen, "pair": dict(zip(PAIR_KEYS, (len(prompt), rejected)))}


def shared_prompt(chosen: list[dict], rejected: list[dict]) -> dict:
    """A pair given as two whole conversations: the turns both start with are the
    prompt (TRL's implicit prompt); after them each side may hold only its reply."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if chosen != rejected:
        for side, conversation in (("chosen", chosen), ("rejected", rejected)):
            later = next((turn for turn in conversation[shared:] if turn["role"] != "assistant"), None)
            if later is not None:
                raise InvalidRecord("prompt_mismatch", f"chosen and rejected part at turn {shared + 1}, and {side} has a "
                                    f"{shown(later['role'])} turn after that: the two sides do not answer one prompt")
    return pair(chosen[:shared], chosen[shared:], rejected[shared:])


def preference(row: dict) -> dict:
    """TRL's preference format: standard (``prompt``, ``chosen``, ``rejected`` strings)
    or conversational (message lists; without ``prompt``, chosen and rejected are
    whole conversations that share the prompt turns). Also a prompt string with two
    whole conversations (UltraFeedback-binarized, whose lists repeat the prompt turn),
    and alpaca-style pairs (``instruction`` and ``input`` as the prompt)."""
    prompt = row.get("prompt")
    if prompt is None and "instruction" in row:
        prompt = alpaca_prompt(row)
    if prompt is None:
        return shared_prompt(message_list(row, "chosen"), message_list(row, "rejected"))
    if not isinstance(prompt, str):
        return pair(message_list(row, "prompt"), message_list(row, "chosen"), message_list(row, "rejected"))
    if not isinstance(row.get("chosen"), list):
        return pair([{"role": "user", "content": prompt}], [{"role": "assistant", "content": require(row, "chosen")}],
                    [{"role": "assistant", "content": require(row, "rejected")}])
    chosen, rejected = message_list(row, "chosen"), message_list(row, "rejected")
    if chosen and chosen[0]["role"] == "assistant":  # the replies alone
        return pair([{"role": "user", "content": prompt}], chosen, rejected)
    fields = shared_prompt(chosen, rejected)
    asked = next((turn["content"] for turn in reversed(chosen[: fields["pair"]["prompt_turns"]]) if turn["role"] == "user"), None)
    if asked is not None and asked.strip() != prompt.strip():
        raise InvalidRecord("prompt_mismatch", "field 'prompt' is not the last user turn that chosen and rejected share")
    return fields


def hh_transcript(row: dict, key: str) -> list[dict]:
    """Field ``key``, a transcript "\\n\\nHuman: ...\\n\\nAssistant: ...", as messages."""
    parts = HH_TURN.split(require(row, key).lstrip("\n"))
    if parts[0].strip() or len(parts) == 1:
        raise InvalidRecord("bad_transcript", f"field '{key}' is not an HH-RLHF transcript "
                            "(\"\\n\\nHuman: ...\\n\\nAssistant: ...\", nothing before its first turn)")
    return [{"role": HH_ROLES[speaker], "content": content} for speaker, content in zip(parts[1::2], parts[2::2])]


def hh_rlhf(row: dict) -> dict:
    """Anthropic HH-RLHF: two transcripts that differ in their last Assistant turn."""
    return shared_prompt(hh_transcript(row, "chosen"), hh_transcript(row, "rejected"))


def sharegpt_preference(row: dict) -> dict:
    """LLaMA-Factory's sharegpt preference data: the prompt turns, and one ``{from, value}`` turn each side."""
    return pair(sharegpt(row)["messages"], [sharegpt_turn(require(row, "chosen", dict), "chosen")],
                [sharegpt_turn(require(row, "rejected", dict), "rejected")])


def preference_columns(record: dict) -> dict | None:
    """A record made from a preference pair, as TRL's conversational preference
    columns (PREFERENCE_COLUMNS: prompt, chosen, rejected, each a message list, as
    the preferences stage writes them), or None when the record holds no pair (it
    is not from one, or was read with pairs: chosen)."""
    meta = json.loads(record["meta"])
    if not all(key in meta for key in PAIR_KEYS):
        return None
    prompt_turns, rejected = (meta[key] for key in PAIR_KEYS)
    messages = record["messages"]
    return dict(zip(PREFERENCE_COLUMNS, (messages[:prompt_turns], messages[prompt_turns:], rejected)))


FORMATS = {
    "alpaca": alpaca,
    "sharegpt": sharegpt,
    "messages": openai_messages,
    "prompt_completion": prompt_completion,
    "self_instruct": self_instruct,
    "text": text,
    "preference": preference,
    "hh_rlhf": hh_rlhf,
    "sharegpt_preference": sharegpt_preference,
    "turns": turns,
}
# What each format consumes; every other field goes to meta.
CONTENT_FIELDS = {
    "alpaca": {"instruction", "input", "output", "response"},
    "sharegpt": {"conversations"},
    "messages": {"messages"},
    "prompt_completion": {"prompt", "completion"},
    "self_instruct": {"instruction", "instances"},
    "text": {"text"},
    "preference": {"prompt", "instruction", "input", "chosen", "rejected"},
    "hh_rlhf": {"chosen", "rejected"},
    "sharegpt_preference": {"conversations", "chosen", "rejected"},
    "turns": {"turns"},
}
# Formats whose rows are prompts without answers: seeds for generation, never training records.
PROMPT_FORMATS = {"turns"}


def detect(row: dict) -> str | None:
    """The format whose fields a row has, or None."""
    keys = set(row)
    if {"chosen", "rejected"} <= keys:
        return preference_format(row)
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
    if "turns" in keys:
        return "turns"
    if "text" in keys:
        return "text"
    return None


def preference_format(row: dict) -> str | None:
    """Which of the preference formats a row with ``chosen`` and ``rejected`` is in, or None."""
    if "conversations" in row:
        return "sharegpt_preference"
    if "prompt" in row or "instruction" in row or isinstance(row["chosen"], list):
        return "preference"
    if isinstance(row["chosen"], str) and HH_TURN.search(row["chosen"].lstrip("\n")):
        return "hh_rlhf"
    return None


def parse_row(row: dict, fmt: str, location: str, raw: object, meta: dict, pairs: str = "keep") -> list[Parsed]:
    """Normalise a row; the extra fields of the row join ``meta``. ``pairs``
    (LocalSource.pairs): "chosen" leaves a pair's rejected reply out."""
    if not isinstance(row, dict):
        raise InvalidRecord("bad_type", f"the row is {type(row).__name__}, expected an object")
    fields = FORMATS[fmt](row)
    extra = {k: v for k, v in row.items() if k not in CONTENT_FIELDS[fmt] and v is not None}
    fields = fields if isinstance(fields, list) else [fields]
    parsed = []
    for i, f in enumerate(fields):
        pair_meta = f.get("pair", {}) if pairs == "keep" else {}
        parsed.append(Parsed(location=location if len(fields) == 1 else f"{location}[{i}]", raw=raw, messages=f.get("messages"),
                             text=f.get("text"), meta={**extra, **pair_meta, **meta}, pair=pairs if "pair" in f else None))
    return parsed
