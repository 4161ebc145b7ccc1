"""builtin_eval stage: ``python -m stages.builtin_eval [--params FILE]``.

Writes the built-in world's held-out evaluation problems, ``builtin_eval.per_family``
of each family, to ``data/raw/builtin_eval.parquet``, in phrasings and templates
that no training record uses. Each carries its reference solution as the
assistant turn, its answer key in ``meta.answer`` or ``meta.check`` and its
extraction rule in ``meta.extract`` (docs/evaluation.md).
"""

import logging
import random
from collections import Counter

from synthtrain.world import tasks
from synthtrain.world.facts import World
from synthtrain.params import Params
from synthtrain.records import RecordWriter, make_record

log = logging.getLogger("builtin_eval")
FAMILIES = ("fact_recall", "arithmetic", "word_problem", "string", "format")


def problem(rng: random.Random, world: World, family: str) -> tuple[str, str, dict]:
    """One held-out problem: (prompt, reference solution, meta)."""
    level = rng.randint(1, 4)
    if family == "fact_recall":
        fact = rng.choice(world.facts)
        # The question is in a held-out phrasing; the one-word instruction is a
        # familiar one, so the problem tests recall rather than format following.
        prompt = f"{tasks.fact_question(rng, fact, world.phrasings, heldout=True)} {rng.choice(tasks.ONE_WORD[False])}"
        return prompt, fact.value, {"answer": fact.value, "extract": "first_word", "attribute": fact.attribute,
                                    "entity_kind": fact.entity.kind, "qa_trained": fact.entity.qa}
    if family == "format":
        prompt, reference, check = tasks.format_task(rng, world, level, heldout=True)
        extract = {"one_word": "first_word", "bullets": "bullets", "json": "json"}[check["kind"]]
        return prompt, reference, {"check": check, "extract": extract, "answer": check.get("answer"), "level": level}
    make = {"arithmetic": lambda: tasks.arithmetic(rng, level, heldout=True),
            "word_problem": lambda: tasks.word_problem(rng, world, level, heldout=True),
            "string": lambda: tasks.string_task(rng, world, level, heldout=True)}[family]
    prompt, reference, answer = make()
    return prompt, reference, {"answer": answer, "extract": "final_answer", "level": level}


def write_problems(params: Params, path: str = "data/raw/builtin_eval.parquet") -> dict:
    world = World(params.world)
    per_family = params.builtin_eval.per_family
    counts = Counter()
    with RecordWriter(path) as writer:
        for index, family in enumerate(FAMILIES):
            rng = random.Random(params.builtin_eval.seed * 1_000_003 + index)
            seen: set[str] = set()
            # Some families have fewer distinct problems than asked for (fact
            # recall in a small world): stop when new draws keep repeating.
            for _ in range(per_family * 50):
                prompt, reference, meta = problem(rng, world, family)
                record = make_record("builtin_eval", "instruction",
                                     messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": reference}],
                                     meta={"family": family, "generator": "builtin_eval", **meta})
                if record["id"] in seen:
                    continue
                seen.add(record["id"])
                writer.write(record)
                counts[family] += 1
                if counts[family] == per_family:
                    break
    metrics = {"problems": sum(counts.values()), "by_family": dict(counts)}
    log.info("wrote %d held-out problems %s -> %s", metrics["problems"], dict(counts), path)
    return metrics
