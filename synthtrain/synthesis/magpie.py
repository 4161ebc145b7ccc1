"""Magpie (Xu et al., 2024): a chat-templated teacher is given only its
template's pre-query text and writes the user turn itself, then answers it; no
seed data and no prompt engineering (docs/sources.md). Rejected: only the
common reasons, ``empty_*`` and ``capped_*`` instructions and responses.
"""

import random

from synthtrain.generation import Generator
from synthtrain.synthesis.common import Candidate, answer, conversation, rejected, reply_problem
from synthtrain.params import GenerateSource, StageError

MARK = "\x00magpie\x00"


def pre_query_template(generator: Generator, teacher: str) -> str:
    """The rendered chat template up to where a user's message starts."""
    rendered = generator.tokenizer.apply_chat_template([{"role": "user", "content": MARK}], tokenize=False)
    if MARK not in rendered:
        raise StageError(f"teacher {teacher}: its chat template does not show the user's message; magpie needs one that does")
    return rendered[: rendered.index(MARK)]


class Magpie:
    def __init__(self, source: GenerateSource, generator: Generator, seeds: list[str]):
        self.generator = generator
        self.template = pre_query_template(generator, source.teacher)

    def shard(self, size: int, rng: random.Random) -> list[Candidate]:
        users = self.generator.complete([self.template] * size, desc="magpie: user turns")
        candidates: list[Candidate | None] = [None] * size
        asked = []
        for i, reply in enumerate(users):
            problem = reply_problem(reply, "instruction")
            if problem:
                candidates[i] = rejected(*problem)
            else:
                asked.append(i)
        for i, (instruction, reply, problem) in zip(asked, answer(self.generator, [users[i].text for i in asked], "magpie: responses")):
            candidates[i] = rejected(*problem, instruction=instruction) if problem else Candidate(conversation(instruction, reply.text))
        return candidates

    def remember(self, kept: list[dict]) -> None:
        """Magpie keeps no pool: every shard starts from the template alone."""
