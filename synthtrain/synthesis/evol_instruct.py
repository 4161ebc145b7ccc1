"""Evol-Instruct (WizardLM, Xu et al., 2023): the teacher evolves instructions
of the pool with the paper's in-depth and in-breadth prompts, then answers
them; kept evolutions join the pool and are evolved again (``depth`` in
``meta``). The paper's elimination rules are the reject reasons of
``instruction_problem`` and ``response_problem`` (docs/sources.md).
"""

import random
import re

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from synthtrain.generation import Generator
from synthtrain.evaluation.textmetrics import words
from synthtrain.synthesis.common import Candidate, answer, conversation, rejected, reply_problem
from synthtrain.params import GenerateSource

DEPTH = (
    "I want you act as a Prompt Rewriter.\nYour objective is to rewrite a given prompt into a more complex version to make those "
    "famous AI systems (e.g., chatgpt and GPT4) a bit harder to handle.\nBut the rewritten prompt must be reasonable and must be "
    "understood and responded by humans.\nYour rewriting cannot omit the non-text parts such as the table and code in "
    "#The Given Prompt#:. Also, please do not omit the input in #The Given Prompt#.\nYou SHOULD complicate the given prompt using "
    "the following method:\n{method}\nYou should try your best not to make the #Rewritten Prompt# become verbose, "
    "#Rewritten Prompt# can only add 10 to 20 words into #The Given Prompt#.\n'#The Given Prompt#', '#Rewritten Prompt#', "
    "'given prompt' and 'rewritten prompt' are not allowed to appear in #Rewritten Prompt#\n#The Given Prompt#:\n{instruction}\n"
    "#Rewritten Prompt#:\n"
)
BREADTH = (
    "I want you act as a Prompt Creator.\nYour goal is to draw inspiration from the #Given Prompt# to create a brand new prompt.\n"
    "This new prompt should belong to the same domain as the #Given Prompt# but be even more rare.\nThe LENGTH and complexity of "
    "the #Created Prompt# should be similar to that of the #Given Prompt#.\nThe #Created Prompt# must be reasonable and must be "
    "understood and responded by humans.\n'#Given Prompt#', '#Created Prompt#', 'given prompt' and 'created prompt' are not "
    "allowed to appear in #Created Prompt#\n#Given Prompt#:\n{instruction}\n#Created Prompt#:\n"
)
EVOLUTIONS = {
    "constraints": DEPTH.replace("{method}", "Please add one more constraints/requirements into #The Given Prompt#'"),
    "deepen": DEPTH.replace("{method}", "If #The Given Prompt# contains inquiries about certain issues, the depth and breadth of the "
                            "inquiry can be increased."),
    "concretizing": DEPTH.replace("{method}", "Please replace general concepts with more specific concepts."),
    "reasoning": DEPTH.replace("{method}", "If #The Given Prompt# can be solved with just a few simple thinking processes, you can "
                               "rewrite it to explicitly request multiple-step reasoning."),
    "breadth": BREADTH,
}
COPIED = re.compile(r"given prompt|rewritten prompt|created prompt|#\s*(the )?(given|rewritten|created)", re.I)


def instruction_problem(evolved: str, parent: str) -> tuple[str, str] | None:
    if COPIED.search(evolved):
        return "copied_prompt", f"copies the evolving prompt: {evolved[:200]!r}"
    if set(words(evolved)) <= set(words(parent)):
        return "no_information_gain", f"no word that {parent[:120]!r} lacks: {evolved[:200]!r}"
    return None


def response_problem(response: str) -> tuple[str, str] | None:
    tokens = words(response)
    if "sorry" in tokens and len(tokens) < 80:
        return "sorry_response", f"a short apology, the evolution was too hard: {response[:200]!r}"
    if all(token in ENGLISH_STOP_WORDS for token in tokens):
        return "stopwords_response", f"only punctuation and stop words: {response[:200]!r}"
    return None


class EvolInstruct:
    template = "WizardLM's in-depth and in-breadth prompts (synthtrain/synthesis/evol_instruct.py), the record's meta.evolution"

    def __init__(self, source: GenerateSource, generator: Generator, seeds: list[str]):
        self.generator = generator
        self.pool: list[tuple[str, int]] = [(seed, 0) for seed in seeds]  # (instruction, evolution rounds)

    def shard(self, size: int, rng: random.Random) -> list[Candidate]:
        plans = [(rng.choice(self.pool), rng.choice(sorted(EVOLUTIONS))) for _ in range(size)]
        evolved = self.generator([EVOLUTIONS[evolution].replace("{instruction}", parent) for (parent, _), evolution in plans],
                                 desc="evol_instruct: evolutions")
        origins = [{"evolution": evolution, "parent": parent, "depth": depth + 1} for (parent, depth), evolution in plans]
        candidates: list[Candidate | None] = [None] * size
        accepted: dict[int, str] = {}
        for i, (reply, origin) in enumerate(zip(evolved, origins)):
            problem = reply_problem(reply, "instruction") or instruction_problem(reply.text, origin["parent"])
            if problem:
                candidates[i] = rejected(*problem, **origin)
            else:
                accepted[i] = reply.text
        for i, (instruction, reply, problem) in zip(accepted, answer(self.generator, list(accepted.values()), "evol_instruct: responses")):
            problem = problem or response_problem(reply.text)
            candidates[i] = rejected(*problem, instruction=instruction, **origins[i]) if problem else \
                Candidate(conversation(instruction, reply.text), origins[i])
        return candidates

    def remember(self, kept: list[dict]) -> None:
        self.pool.extend((candidate["messages"][0]["content"], candidate["meta"]["depth"]) for candidate in kept)
