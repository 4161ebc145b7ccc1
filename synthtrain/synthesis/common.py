"""What every generation method shares: a prompt's outcome (``Candidate``), the
reasons a teacher's reply is unusable, and the conversation a kept pair becomes."""

from dataclasses import dataclass, field

from synthtrain.evaluation.textmetrics import is_empty_reply
from synthtrain.generation import Generator, Reply


@dataclass
class Candidate:
    """One prompt's outcome: a conversation (``reason`` None) or why there is none."""

    messages: list[dict] | None
    meta: dict = field(default_factory=dict)
    reason: str | None = None
    detail: str = ""


def rejected(reason: str, detail: str, **meta) -> Candidate:
    return Candidate(None, meta, reason, detail)


def reply_problem(reply: Reply, turn: str) -> tuple[str, str] | None:
    """``(reason, detail)`` for a reply that cannot be used: empty (``is_empty_reply``), or cut off at max_new_tokens."""
    if is_empty_reply(reply.text):
        return f"empty_{turn}", f"the teacher wrote an empty {turn}"
    if not reply.stopped:
        return f"capped_{turn}", f"the {turn} reached max_new_tokens without ending: {reply.text[:200]!r}"
    return None


def answer(generator: Generator, instructions: list[str], desc: str) -> list[tuple[str, Reply, tuple[str, str] | None]]:
    """The teacher's reply to each instruction, with the reason it is unusable (or None)."""
    replies = generator(instructions, desc=desc)
    return [(instruction, reply, reply_problem(reply, "response")) for instruction, reply in zip(instructions, replies)]


def conversation(instruction: str, response: str) -> list[dict]:
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
