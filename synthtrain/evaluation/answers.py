"""Verifiable task accuracy on the built-in held-out problems
(``data/raw/builtin_eval.parquet``, written by the builtin_eval stage): an
answer is extracted from each reply by the problem's ``meta.extract`` rule
(``first_word``, ``final_answer``, ``bullets``, ``json``) and must match its
key exactly. The rules: docs/evaluation.md.
"""

import json
import re
from collections import Counter
from collections.abc import Callable

FIRST_WORD = re.compile(r"[\w'-]+")
FINAL_ANSWER = re.compile(r"final answer\s*:\s*(.*)", re.IGNORECASE)
BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S")


def first_word(reply: str) -> str | None:
    match = FIRST_WORD.search(reply)
    return match.group(0).strip("'-") if match else None


def final_answer(reply: str) -> str | None:
    answers = FINAL_ANSWER.findall(reply)
    return answers[-1].strip().removesuffix(".").strip() if answers else None


def bullets(reply: str) -> list[str]:
    return [line.strip() for line in reply.splitlines() if BULLET.match(line)]


def json_object(reply: str) -> dict | None:
    """The first complete JSON object in the reply (text around it is allowed)."""
    decoder = json.JSONDecoder()
    for start in (i for i, char in enumerate(reply) if char == "{"):
        try:
            value, _ = decoder.raw_decode(reply[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def is_one_word(reply: str) -> bool:
    return len(reply.split()) == 1 and first_word(reply) is not None


def extracted(reply: str, meta: dict):
    """The answer read from a reply, as the problem's ``extract`` says."""
    return {"first_word": first_word, "final_answer": final_answer, "bullets": bullets, "json": json_object}[meta["extract"]](reply)


def is_correct(reply: str, meta: dict) -> bool:
    answer = extracted(reply, meta)
    check = meta.get("check")
    if check is None:
        key = meta["answer"]
        if meta["extract"] == "first_word":
            return answer is not None and answer.casefold() == key.casefold()
        return answer == key
    if check["kind"] == "one_word":
        return is_one_word(reply)
    if check["kind"] == "bullets":
        return len(answer) == check["count"]
    return answer is not None and sorted(answer) == sorted(check["keys"])


def task_accuracy(problems: list[dict], replies: list[str]) -> tuple[dict, list[bool]]:
    """Flat metrics ``tasks_<family>_accuracy`` / ``tasks_<family>_items``, fact recall's
    ``fact_recall_qa_trained_*`` and ``fact_recall_passages_only_*``, and the
    overall ``tasks_accuracy`` (mean over families, so each family weighs the
    same); and whether each reply was correct."""
    correct = [is_correct(reply, problem["meta"]) for problem, reply in zip(problems, replies)]
    families: dict[str, list[bool]] = {}
    for problem, ok in zip(problems, correct):
        families.setdefault(problem["meta"]["family"], []).append(ok)
    metrics = {}
    for family, oks in sorted(families.items()):
        metrics[f"tasks_{family}_accuracy"] = round(sum(oks) / len(oks), 4)
        metrics[f"tasks_{family}_items"] = len(oks)
    # Fact recall split by whether the entity had question-answer training data: answers learned as
    # answers, against answers the model must draw from knowledge passages alone (no "tasks_" prefix:
    # these are not families)
    for qa_trained, name in ((True, "qa_trained"), (False, "passages_only")):
        oks = [ok for problem, ok in zip(problems, correct)
               if problem["meta"]["family"] == "fact_recall" and problem["meta"].get("qa_trained") is qa_trained]
        if oks:
            metrics[f"fact_recall_{name}_accuracy"] = round(sum(oks) / len(oks), 4)
            metrics[f"fact_recall_{name}_items"] = len(oks)
    if families:
        metrics["tasks_accuracy"] = round(sum(sum(o) / len(o) for o in families.values()) / len(families), 4)
    metrics["tasks_items"] = len(correct)
    return metrics, correct


def guess_accuracy(meta: dict, values_of: Callable[[str], list[str]]) -> float | None:
    """The chance a reply that knows nothing passes: a uniform guess among the world's values of the
    asked attribute (fact recall), any single word (the one-word format check), 0 for the other format
    checks; None where the answer is open (a number or a string), whose chance task_chance sets."""
    if meta["family"] == "fact_recall":
        return 1 / len(values_of(meta["attribute"]))
    if "check" in meta:
        return 1.0 if meta["check"].get("kind") == "one_word" else 0.0
    return None


def task_chance(problems: list[dict], values_of: Callable[[str], list[str]]) -> dict:
    """``tasks_<family>_chance``: the mean guess_accuracy of each family's problems; values_of gives the
    values an attribute of the world takes (World.values_of). An open answer is guessed by the best
    constant reply: the family's most common answer among these problems, when several share it, passes
    that many of them (a letter appears once in most words, so "1" answers a fifth of the string tasks)."""
    families: dict[str, list[dict]] = {}
    for problem in problems:
        families.setdefault(problem["meta"]["family"], []).append(problem["meta"])
    chance = {}
    for family, metas in sorted(families.items()):
        guesses = [guess_accuracy(meta, values_of) for meta in metas]
        open_answers = Counter(meta["answer"] for meta, guess in zip(metas, guesses) if guess is None)
        most_common = max(open_answers.values(), default=0)
        constant = most_common if most_common > 1 else 0  # an answer no other problem shares is no pattern to guess
        chance[f"tasks_{family}_chance"] = round((sum(g for g in guesses if g is not None) + constant) / len(metas), 4)
    return chance
