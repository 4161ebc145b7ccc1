"""preferences stage: ``python -m stages.preferences [--params FILE]``.

For every ``kind: generate`` source with a ``preferences:`` section: one
response per temperature to each prompt, scored by the micro-judges (and by
the teacher itself with ``teacher_judge``); the best is ``chosen``, the worst
``rejected``. Writes ``data/preferences/<source>.jsonl`` (TRL's conversational
preference format), the prompts that gave no pair to
``data/rejects/preferences.parquet`` and ``metrics/preferences.json``
(docs/sources.md).
"""

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from synthtrain.generation import Generator, load_model, use_faster_precision
from synthtrain.evaluation.judges import judge_probabilities
from synthtrain.evaluation.textmetrics import is_empty_reply
from synthtrain.params import TEACHER_OR_FOLDER, GenerateSource, Params
from synthtrain.records import RejectWriter, open_parquet, output_directory, write_metrics
from synthtrain.sources.formats import PREFERENCE_COLUMNS

log = logging.getLogger("preferences")
JUDGES = Path("models/judges")
OUTPUT = Path("data/preferences")
REJECTS = Path("data/rejects/preferences.parquet")
METRICS = Path("metrics/preferences.json")
TEACHER_QUESTION = "Instruction: {instruction}\n\nResponse: {response}\n\nIs this a good response to the instruction? Answer Yes or No."


def teacher_yes_probability(generator: Generator, instructions: list[str], responses: list[str]) -> np.ndarray:
    """P("Yes") / (P("Yes") + P("No")) of the teacher's first reply token to TEACHER_QUESTION."""
    tokenizer, model = generator.tokenizer, generator.model
    yes, no = (tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in ("Yes", "No"))
    tokenizer.padding_side = tokenizer.truncation_side = "left"  # the last position is where the reply starts
    context = getattr(model.config, "max_position_embeddings", None)
    probabilities = []
    for start in range(0, len(instructions), generator.config.batch_size):
        texts = [generator.chat_prompt(TEACHER_QUESTION.format(instruction=i, response=r))
                 for i, r in zip(instructions[start : start + generator.config.batch_size], responses[start : start + generator.config.batch_size])]
        batch = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True, truncation=context is not None,
                          max_length=context)
        with torch.no_grad():
            logits = model(**batch.to(model.device)).logits[:, -1, [yes, no]].float()
        probabilities.append(torch.softmax(logits, dim=-1)[:, 0].cpu().numpy())
    return np.concatenate(probabilities) if probabilities else np.zeros(0)


def pairs_for(name: str, source: GenerateSource, rejects: RejectWriter, root: Path, output: Path) -> dict:
    """Write ``output/<name>.jsonl``; returns the source's counts."""
    config = source.preferences
    table = open_parquet(root / f"data/raw/{name}.parquet").read(columns=["id", "messages"])
    rows = table.to_pylist()[: config.max_prompts]
    prompts = [[m for m in row["messages"] if m["role"] != "assistant"][:1] for row in rows]
    instructions = [prompt[0]["content"] for prompt in prompts]
    model, tokenizer = load_model(source.teacher, fix=f"sources.{name}.teacher must be {TEACHER_OR_FOLDER} of a causal language "
                                  "model with a chat template (for example models/current), or a hub id in the local cache")
    use_faster_precision(model, source.sampling.batch_size)
    responses = []  # per temperature, one reply per prompt
    for number, temperature in enumerate(config.temperatures):
        sampling = source.sampling.model_copy(update={"do_sample": True, "temperature": temperature})
        generator = Generator(model, tokenizer, sampling, source.seed * 1_000_003 + number)
        responses.append([reply.text for reply in generator(instructions, desc=f"{name}: temperature {temperature}")])
    flat_instructions = [i for i in instructions for _ in config.temperatures]
    flat_responses = [responses[t][p] for p in range(len(instructions)) for t in range(len(config.temperatures))]
    judged = judge_probabilities(root / JUDGES, flat_instructions, flat_responses)
    scores = np.mean(list(judged.values()), axis=0) if judged else np.zeros(len(flat_responses))
    if config.teacher_judge:
        scores = (scores * len(judged) + teacher_yes_probability(generator, flat_instructions, flat_responses)) / (len(judged) + 1)
    scores = scores.reshape(len(instructions), len(config.temperatures))
    pairs, chosen_temperatures, margins = 0, {str(t): 0 for t in config.temperatures}, []
    with open(output / f"{name}.jsonl", "w", encoding="utf-8") as out:
        for p, (row, prompt) in enumerate(zip(tqdm(rows, desc=f"{name}: pairs", unit="prompt", mininterval=1), prompts)):
            usable = [t for t in range(len(config.temperatures)) if not is_empty_reply(responses[t][p])]
            detail = {"prompt": prompt, "responses": [responses[t][p] for t in range(len(config.temperatures))],
                      "scores": [round(float(s), 4) for s in scores[p]]}  # fmt: skip
            if len(usable) < 2:
                rejects.reject("too_few_responses", f"data/raw/{name}.parquet#{row['id']}", f"{len(usable)} non-empty responses", detail)
                continue
            best = max(usable, key=lambda t: scores[p, t])
            worst = min(usable, key=lambda t: scores[p, t])
            margin = float(scores[p, best] - scores[p, worst])
            if margin < config.min_margin:
                rejects.reject("tie", f"data/raw/{name}.parquet#{row['id']}", f"scores differ by {margin:.3f} < min_margin", detail)
                continue
            pair = {"prompt": prompt, "chosen": [{"role": "assistant", "content": responses[best][p]}],
                    "rejected": [{"role": "assistant", "content": responses[worst][p]}]}
            out.write(json.dumps({column: pair[column] for column in PREFERENCE_COLUMNS}, ensure_ascii=False) + "\n")
            pairs += 1
            margins.append(margin)
            chosen_temperatures[str(config.temperatures[best])] += 1
    return {"prompts": len(rows), "pairs": pairs, "mean_margin": round(float(np.mean(margins)), 4) if margins else None,
            "chosen_by_temperature": chosen_temperatures, "judges": sorted(judged) + (["teacher"] if config.teacher_judge else [])}


def preferences(params: Params, root: str | Path = ".") -> dict:
    root = Path(root)
    metrics = {"sources": {}}
    # data/preferences is written whole, and replaces the old one when the stage succeeds:
    # a source that no longer asks for pairs leaves no file behind
    with output_directory(root / OUTPUT) as output, RejectWriter(root / REJECTS, "preferences") as rejects:
        for name, source in params.sources.items():
            if isinstance(source, GenerateSource) and source.preferences is not None:
                before = sum(rejects.by_reason.values())
                counts = pairs_for(name, source, rejects, root, output)
                counts["rejected"] = sum(rejects.by_reason.values()) - before
                assert counts["prompts"] == counts["pairs"] + counts["rejected"], counts
                metrics["sources"][name] = counts
                log.info("%s: %d prompts -> %d pairs, %d rejected -> %s", name, counts["prompts"], counts["pairs"],
                         counts["rejected"], OUTPUT / f"{name}.jsonl")
        metrics["rejected_by_reason"] = dict(sorted(rejects.by_reason.items()))
    metrics["pairs"] = sum(s["pairs"] for s in metrics["sources"].values())
    if not metrics["sources"]:
        log.info("no kind: generate source has a preferences: section; nothing to do")
    write_metrics(root / METRICS, metrics)
    return metrics
