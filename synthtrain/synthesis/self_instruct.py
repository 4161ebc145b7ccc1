"""Self-Instruct (Wang et al., 2023): new tasks written by a teacher that
continues a numbered task list, kept if they pass the filters
(``instruction_problem``, then ROUGE-L against the pool), then answered. The
prompt and the filters, each a reject reason: docs/sources.md.

ROUGE-L is the F-measure of the longest common subsequence of words. Its
bound ``2 × common words / (len a + len b)`` skips most of the pool without
computing a subsequence.
"""

import random
import re
from collections import Counter

from synthtrain.generation import Generator
from synthtrain.evaluation.textmetrics import words
from synthtrain.synthesis.common import Candidate, answer, conversation, rejected
from synthtrain.params import GenerateSource

HEADER = "Come up with a series of tasks:\n"
TEMPLATE = HEADER + "Task 1: {task 1}\n...\nTask {k}: {task k}\nTask {k+1}:"
UNSUPPORTED = re.compile(r"\b(images?|pictures?|graphs?|files?|maps?|draw|plot|go to|videos?|audio|music|flowcharts?|diagrams?)\b", re.I)
MACHINE_TASKS = 2
# An instruction is one line: 90 % of the 175 human seed instructions take at most 27 tokens and 3 take over 64. A
# batch decodes until its last row stops, so a row that never writes its newline would hold the whole batch to the
# source's cap (256 tokens, sized for replies).
INSTRUCTION_TOKENS = 64


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F-measure of two word lists."""
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    common = previous[-1]
    return 2 * common / (len(a) + len(b))


class Pool:
    """Instructions as word lists, with the counts that bound ROUGE-L cheaply."""

    def __init__(self):
        self.instructions: list[str] = []
        self.tokens: list[list[str]] = []
        self.counts: list[Counter] = []

    def add(self, instruction: str) -> None:
        self.instructions.append(instruction)
        self.tokens.append(words(instruction))
        self.counts.append(Counter(self.tokens[-1]))

    def most_similar(self, instruction: str, threshold: float) -> tuple[float, str] | None:
        """The first pool instruction with ROUGE-L above ``threshold``, with the score; None if there is none."""
        tokens = words(instruction)
        counts = Counter(tokens)
        for other, other_tokens, other_counts in zip(self.instructions, self.tokens, self.counts):
            bound = 2 * sum((counts & other_counts).values()) / max(len(tokens) + len(other_tokens), 1)
            if bound > threshold:
                score = rouge_l(tokens, other_tokens)
                if score > threshold:
                    return score, other
        return None


def instruction_problem(line: str) -> tuple[str, str] | None:
    count = len(line.split())
    if count < 3 or count > 150:
        return "instruction_length", f"{count} words (3-150 allowed): {line[:200]!r}"
    if match := UNSUPPORTED.search(line):
        return "unsupported_keyword", f"asks for {match.group(0)!r}: {line[:200]!r}"
    if not line[0].isascii() or not line[0].isalnum():
        return "bad_start", f"starts with {line[0]!r}: {line[:200]!r}"
    return None


class SelfInstruct:
    template = TEMPLATE

    def __init__(self, source: GenerateSource, generator: Generator, seeds: list[str]):
        self.source, self.generator, self.seeds = source, generator, seeds
        self.generated: list[str] = []
        self.pool = Pool()
        for seed in seeds:
            self.pool.add(seed)

    def prompt(self, rng: random.Random) -> str:
        machine = rng.sample(self.generated, min(MACHINE_TASKS, len(self.generated)))
        human = rng.sample(self.seeds, min(self.source.prompt_tasks - len(machine), len(self.seeds)))
        tasks = human + machine
        return HEADER + "".join(f"Task {i}: {task}\n" for i, task in enumerate(tasks, 1)) + f"Task {len(tasks) + 1}:"

    def shard(self, size: int, rng: random.Random) -> list[Candidate]:
        replies = self.generator.complete([self.prompt(rng) for _ in range(size)], desc="self_instruct: instructions", stop=["\n"],
                                          max_new_tokens=min(INSTRUCTION_TOKENS, self.source.sampling.max_new_tokens))
        candidates: list[Candidate | None] = [None] * size
        accepted: dict[int, str] = {}
        shard_pool = Pool()  # this shard's new instructions are compared with each other too
        for i, reply in enumerate(replies):
            line = reply.text.split("\n")[0].strip()
            if not line:
                candidates[i] = rejected("empty_instruction", "the teacher wrote no task")
            elif not reply.stopped:
                candidates[i] = rejected("capped_instruction", f"no end of line within max_new_tokens: {line[:200]!r}")
            elif problem := instruction_problem(line):
                candidates[i] = rejected(*problem, instruction=line)
            elif similar := (self.pool.most_similar(line, self.source.max_similarity)
                             or shard_pool.most_similar(line, self.source.max_similarity)):
                candidates[i] = rejected("similar_instruction", f"ROUGE-L {similar[0]:.2f} with {similar[1][:120]!r}", instruction=line)
            else:
                accepted[i] = line
                shard_pool.add(line)
        for i, (instruction, reply, problem) in zip(accepted, answer(self.generator, list(accepted.values()), "self_instruct: responses")):
            candidates[i] = rejected(*problem, instruction=instruction) if problem else Candidate(conversation(instruction, reply.text))
        return candidates

    def remember(self, kept: list[dict]) -> None:
        """Kept instructions join the pool that later prompts and the similarity filter use."""
        for candidate in kept:
            instruction = candidate["messages"][0]["content"]
            self.generated.append(instruction)
            self.pool.add(instruction)
