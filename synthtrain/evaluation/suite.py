"""eval stage: ``python -m stages.eval [--params FILE] [--model DIR]``.

``evaluate`` runs the suite on ``models/current`` (or ``--model``) with the same
held-out data, prompts, greedy decoding and seeds for every experiment, one
module per part: held-out loss (heldout.py), verifiable tasks (answers.py),
reference metrics and diversity of the generations (textmetrics.py),
behavioural suites (behaviour.py), micro-judges (judges.py, stage ``judges``),
the preference judge (preference_judge.py, stage ``judge_check``)
and lm-eval benchmarks (benchmarks.py). Every input is checked first
(``check_inputs``, then ``load_model``), so a missing one fails before
anything is scored. What each part measures and what the stage writes:
docs/evaluation.md.
"""

import json
import logging
import random
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from synthtrain.world.facts import World
from synthtrain.evaluation import behaviour, benchmarks, judges, textmetrics
from synthtrain.generation import Generator, load_model
from synthtrain.evaluation.heldout import first_records, heldout_metrics, is_clean
from synthtrain.evaluation.ngram import NgramBaselines
from synthtrain.evaluation.answers import task_accuracy, task_chance
from synthtrain.evaluation import preference_judge
from synthtrain.params import Params, StageError
from synthtrain.records import CATEGORIES, open_parquet, output_directory, write_output_text

log = logging.getLogger("eval")
MODEL = Path("models/current")
JUDGES = Path("models/judges")
PROBLEMS = Path("data/raw/builtin_eval.parquet")
HELDOUT = Path("data/heldout")
TRAIN_TOKENS = Path("data/tokens/train")  # the run's training mix, as the model saw it: the n-gram baselines' data
OUT = Path("data/eval")
PLOTS = Path("plots/eval")
METRICS = Path("metrics/eval.json")
HELDOUT_COLUMNS = ("category", "messages", "text", "meta")  # read by heldout_metrics and reference_pairs


def check_records(path: Path, columns: tuple[str, ...], fix: str) -> None:
    """A Parquet file of records that can be read and has ``columns``, else a StageError naming it."""
    if not path.is_file():
        raise StageError(f"{path} is missing: {fix}")
    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError, pa.ArrowException) as error:  # ValueError: a damaged footer with names that are not UTF-8
        raise StageError(f"{path} cannot be read as Parquet ({error}): {fix}") from None
    if missing := [column for column in columns if column not in names]:
        raise StageError(f"{path} has no column {', '.join(missing)} (it has {', '.join(names)}): {fix}")


def check_inputs(params: Params) -> list[Path]:
    """Every input of the suite but the model (load_model checks it next), checked before
    anything is scored, so that a missing one fails at once instead of after minutes
    of scoring: the held-out sets, the built-in problems, the judges and each required
    benchmark file and its format. Returns the held-out sets."""
    config = params.eval
    if (config.heldout_records or config.references) and not HELDOUT.is_dir():
        raise StageError(f"{HELDOUT}/ is missing: run `dvc repro dedup`, which holds out records there")
    if config.heldout_records and not (TRAIN_TOKENS / "index.json").is_file():
        raise StageError(f"{TRAIN_TOKENS}/ is missing (the n-gram baselines are fitted on it): run `dvc repro tokenize`")
    heldout = sorted(HELDOUT.glob("*.parquet"))
    for path in heldout:
        check_records(path, HELDOUT_COLUMNS, "run `dvc repro dedup` to write it again")
    check_records(PROBLEMS, ("messages", "meta"), "run `dvc repro builtin_eval`")
    if config.references:
        judges.check_judges(JUDGES)
        preference_judge.check_preference_judge(preference_judge.DIRECTORY)
    benchmarks.check_benchmarks(config.benchmarks)
    return heldout


def task_problems(per_family: int) -> list[dict]:
    """The first ``per_family`` problems of each family, in file order."""
    taken: dict[str, int] = {}
    problems = []
    for row in open_parquet(PROBLEMS).read(columns=["messages", "meta"]).to_pylist():
        meta = json.loads(row["meta"])
        if taken.get(meta["family"], 0) < per_family:
            taken[meta["family"]] = taken.get(meta["family"], 0) + 1
            problems.append({"prompt": row["messages"][0]["content"], "meta": meta})
    return problems


def reference_pairs(paths: list[Path], count: int) -> list[tuple[str, str]]:
    """(instruction, reference reply) of the first ``count`` single-turn held-out
    conversations without an injected flaw (the built-in generator marks them
    in ``meta.flaw``); a system turn is left out."""
    pairs = []
    for path in paths:
        table = first_records(path, 50 * count + 1000)
        for messages, meta in zip(table.column("messages").to_pylist(), table.column("meta").to_pylist()):
            pair = judges.single_turn(messages) if messages else None
            if pair and is_clean(meta):
                pairs.append(pair)
                if len(pairs) == count:
                    return pairs
    return pairs


def timed(name: str, seconds: dict, function, *args):
    started = time.perf_counter()
    result = function(*args)
    seconds[f"seconds_{name}"] = round(time.perf_counter() - started, 1)
    return result


def write_plots(metrics: dict) -> None:
    """CSV tables for the plots declared in dvc.yaml (renamed into place with the stage's other outputs)."""
    families = sorted(k.removeprefix("tasks_").removesuffix("_accuracy") for k in metrics if k.startswith("tasks_") and k.endswith("_accuracy") and k != "tasks_accuracy")
    rows = [f"{family},{metrics[f'tasks_{family}_accuracy']}" for family in families]
    write_output_text(PLOTS / "tasks.csv", "family,accuracy\n" + "".join(f"{row}\n" for row in rows))
    sets = sorted(k.removeprefix("heldout_").removesuffix("_bpb") for k in metrics  # <source>_<category>
                  if k.startswith("heldout_") and any(k.endswith(f"_{category}_bpb") for category in CATEGORIES))
    write_output_text(PLOTS / "heldout.csv", "set,bpb\n" + "".join(f"{s},{metrics[f'heldout_{s}_bpb']}\n" for s in sets))
    names = sorted(k.removesuffix("_chance") for k in metrics if k.endswith("_chance"))
    write_output_text(PLOTS / "benchmarks.csv", "benchmark,score,chance\n" + "".join(
        f"{name},{metrics.get(f'{name}_acc_norm', metrics.get(f'{name}_acc'))},{metrics[f'{name}_chance']}\n"
        for name in names if f"{name}_acc" in metrics))


def evaluate(params: Params, model_dir: Path) -> dict:
    config = params.eval
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    heldout = check_inputs(params)
    model, tokenizer = load_model(model_dir)
    generate = Generator(model, tokenizer, config.generation, config.seed)
    seconds: dict[str, float] = {}
    metrics: dict = {"model_parameters": sum(p.numel() for p in model.parameters()),
                     "generation_greedy": int(not config.generation.do_sample),
                     "generation_max_new_tokens": config.generation.max_new_tokens}
    samples: list[dict] = []

    seq_len = min(params.tokenize.seq_len, getattr(model.config, "max_position_embeddings", params.tokenize.seq_len))
    if config.heldout_records:
        baselines = NgramBaselines.fit(TRAIN_TOKENS, len(tokenizer))
        metrics.update(timed("heldout", seconds, heldout_metrics, model, tokenizer, heldout, config.heldout_records, seq_len,
                             config.batch_size, params.tokenize.assistant_only, baselines))

    world = World(params.world)
    problems = task_problems(config.tasks_per_family)
    replies = timed("tasks", seconds, generate, [p["prompt"] for p in problems], "tasks")
    accuracy, correct = task_accuracy(problems, [r.text for r in replies])
    metrics.update(accuracy)
    metrics.update(task_chance(problems, world.values_of))
    samples += [{"suite": f"tasks_{p['meta']['family']}", "prompt": p["prompt"], "reply": r.text, "expected": p["meta"].get("answer"),
                 "passed": ok} for p, r, ok in zip(problems, replies, correct)]

    pairs = reference_pairs(heldout, config.references)
    if pairs:
        instructions, references = zip(*pairs)
        generations = [r.text for r in timed("references", seconds, generate, list(instructions), "references")]
        metrics.update(textmetrics.reference_metrics(generations, list(references)))
        metrics.update({f"diversity_{k}": v for k, v in textmetrics.diversity(generations).items()})
        metrics.update({f"judge_{k}": v for k, v in timed("judges", seconds, judges.score, JUDGES, list(instructions), generations).items()})
        metrics.update(timed("preference_judge", seconds, preference_judge.preference_scores, preference_judge.DIRECTORY, generations))
        samples += [{"suite": "references", "prompt": i, "reply": g, "expected": r} for i, g, r in zip(instructions, generations, references)]
    else:
        log.warning("no single-turn held-out instructions: generation metrics, diversity and judge scores are not reported")
    metrics["reference_items"] = len(pairs)

    suites, suite_samples = timed("behaviour", seconds, behaviour.run_suites, generate, world, config.behaviour_per_suite, config.seed)
    metrics.update(suites)
    samples += suite_samples
    metrics.update(generate.speed())

    # data/eval (the benchmarks' lm-eval task YAMLs and samples.jsonl) is written whole and
    # replaces the old one when the stage succeeds: no task file of a dropped benchmark stays
    with output_directory(OUT) as out:
        if config.benchmarks:
            metrics.update(timed("benchmarks", seconds, benchmarks.run_benchmarks, model, tokenizer, config.benchmarks, out / "tasks",
                                 config.batch_size, config.seed))
        metrics.update(seconds)
        metrics["seconds"] = round(sum(seconds.values()), 1)
        with open(out / "samples.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(sample, ensure_ascii=False, sort_keys=True) + "\n" for sample in samples)
    write_plots(metrics)
    shown = {key: metrics.get(key, "-") if not isinstance(metrics.get(key), float) else round(metrics[key], 3)
             for key in ("heldout_loss", "heldout_bpb", "tasks_accuracy", "rougeL", "judge_relevance_score")}
    log.info("held-out loss %(heldout_loss)s (bpb %(heldout_bpb)s); task accuracy %(tasks_accuracy)s; ROUGE-L %(rougeL)s; "
             "relevance %(judge_relevance_score)s", shown)
    log.info("behaviour: MFT %s, INV %s, DIR %s, refusals %s; %.0f s in all", metrics["behaviour_mft_pass_rate"],
             metrics["behaviour_inv_pass_rate"], metrics["behaviour_dir_pass_rate"], metrics["behaviour_refusal_rate"], metrics["seconds"])
    log.info("generation: %.1f items/s, %.0f tokens/s; wrote %s, %s samples -> %s", metrics["generation_items_per_s"],
             metrics["generation_tokens_per_s"], METRICS, len(samples), OUT / "samples.jsonl")
    return metrics
