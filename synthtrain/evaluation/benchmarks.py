"""Benchmarks scored by lm-evaluation-harness (lm-eval), zero-shot, mostly from local JSONL files.

Each local benchmark becomes an lm-eval task YAML, ``<directory>/<name>.yaml``,
for task ``synth_<name>``: plain YAML and Jinja (no ``!function``) that reads the
file by its absolute path with the ``json`` dataset builder, so a user can
rerun it by hand on a saved model. A glob naming several files becomes a
group, one subtask per file (the json builder takes its columns from the first
file, and BLiMP's files differ), with the limit shared among them. A benchmark
given as ``{task: <lm-eval task name>}`` runs lm-eval's own task. The formats,
the rerun command and the limits: docs/evaluation.md.

The formats (BENCHMARK_FORMATS) score as lm-eval's own tasks do; where that is
subtle:

- ``winogrande``: the shared continuation is scored after each context
  (lm-eval's "multiple inputs": its doc_to_text gives the gold index). acc
  only: acc_norm would divide by the contexts' lengths, which is meaningless
  here, and lm-eval leaves it out.
- ``hellaswag``: lm-eval's preprocessing (query ``activity_label: ctx``;
  WikiHow's ``[title]`` and other bracketed artefacts removed). lm-eval's hub
  task joins ctx_a and ``ctx_b.capitalize()``; the official ``ctx`` joins them
  without capitalising, so ctx_b's first letter may differ from its prompt.
- ``lambada``: output_type loglikelihood as lm-eval's lambada_openai. lm-eval
  puts the word's leading space in the target, so the continuation gets one
  unless it (the arithmetic set) or the context has it.

Errors a user can fix (a missing required file, a file whose fields do not fit
its format, an unknown lm-eval task) raise StageError with one line.
"""

import glob
import json
import logging
import math
import os
import time
from itertools import islice
from pathlib import Path

import yaml

from synthtrain.params import BENCHMARK_FORMATS, EvalBenchmark, StageError

# lm-eval bootstraps perplexity's stderr in a pool of one process per core,
# forked from this one, which holds the model; in-process is quick for
# BOOTSTRAP_ITERS. lm-eval reads the variable when it bootstraps.
os.environ.setdefault("DISABLE_MULTIPROC", "1")
BOOTSTRAP_ITERS = 1000  # only perplexity is bootstrapped; acc's stderr has a closed form
ROTARY_SCORING_LENGTH = 1024  # tokens a rotary model may score in one sequence (scoring_length)

log = logging.getLogger("eval")
logging.getLogger("lm_eval").setLevel(logging.WARNING)

TASK_PREFIX = "synth_"

# The fields each format's lines must have (check_format), and the field that
# holds the choices, for the chance level (blimp has two; lambada none).
FIELDS = {
    "blimp": ("sentence_good", "sentence_bad"),
    "multiple_choice": ("query", "choices", "gold"),
    "winogrande": ("context_options", "continuation", "gold"),
    "hellaswag": ("activity_label", "ctx", "endings", "label"),
    "lambada": ("context", "continuation"),
}
CHOICES = {"multiple_choice": "choices", "winogrande": "context_options", "hellaswag": "endings"}
assert tuple(FIELDS) == BENCHMARK_FORMATS

ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}
PERPLEXITY = {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}

# lm-eval's hellaswag preprocess() on the query and each ending, as Jinja filters
# (regex_replace is lm-eval's own filter).
HELLASWAG_QUERY = ('{{ (activity_label ~ ": " ~ ctx) | trim | replace(" [title]", ". ") | regex_replace("\\\\[.*?\\\\]", "")'
                   ' | replace("  ", " ") }}')
HELLASWAG_CHOICES = ('{{ endings | map("trim") | map("replace", " [title]", ". ") | map("regex_replace", "\\\\[.*?\\\\]", "")'
                     ' | map("replace", "  ", " ") | list }}')

# Each format's task body. A bare field name (doc_to_text: query) gives the
# field's value as is; lm-eval parses a template's output (digits become an
# index, a list literal a list).
TASKS = {
    "blimp": {"output_type": "multiple_choice", "doc_to_text": "", "doc_to_choice": "{{ [sentence_good, sentence_bad] }}",
              "doc_to_target": 0, "metric_list": [ACC]},
    "multiple_choice": {"output_type": "multiple_choice", "doc_to_text": "query", "doc_to_choice": "choices",
                        "doc_to_target": "gold", "metric_list": [ACC, ACC_NORM]},
    "winogrande": {"output_type": "multiple_choice", "doc_to_text": "gold", "doc_to_choice": "context_options",
                   "doc_to_target": "continuation", "metric_list": [ACC]},
    "hellaswag": {"output_type": "multiple_choice", "doc_to_text": HELLASWAG_QUERY, "doc_to_choice": HELLASWAG_CHOICES,
                  "doc_to_target": "{{ label | int }}", "metric_list": [ACC, ACC_NORM]},  # label: "3" or 3
    "lambada": {"output_type": "loglikelihood", "doc_to_text": "context",
                "doc_to_target": '{{ continuation if continuation[:1].isspace() or context[-1:].isspace() else " " ~ continuation }}',
                "metric_list": [PERPLEXITY, ACC]},
}


def supported_formats() -> str:
    return "; ".join(f"{name} ({', '.join(fields)})" for name, fields in FIELDS.items())


def data_files(path: str) -> list[str]:
    """The files a benchmark's path (a file or a glob) names, absolute and sorted."""
    return sorted(glob.glob(os.path.abspath(path)))


def check_format(path: str, format: str) -> None:
    """Fail unless the first line of each file the path names has the fields of the format."""
    if format not in FIELDS:
        raise StageError(f"{path}: unknown format '{format}'; supported formats: {supported_formats()}")
    for file in data_files(path):
        try:
            with open(file, encoding="utf-8") as lines:
                first = lines.readline()
        except (OSError, UnicodeDecodeError) as error:
            raise StageError(f"{file}: cannot be read as a JSONL file of format {format} ({type(error).__name__}: {error})") from None
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise StageError(f"{file}: line 1 is not a JSON object ({first[:60]!r}); "
                             f"format {format} needs the fields {', '.join(FIELDS[format])}; supported formats: {supported_formats()}")
        missing = [field for field in FIELDS[format] if field not in record]
        if missing:
            raise StageError(f"{file}: line 1 has no field '{missing[0]}' of format {format} (it has {', '.join(record)}); "
                             f"supported formats: {supported_formats()}")


def check_benchmarks(benchmarks: dict[str, EvalBenchmark]) -> None:
    """Before anything is scored: every required local benchmark has its files, and
    their first lines have the fields of the format (an lm-eval task name is checked
    when scoring, against lm-eval's task index)."""
    for name, benchmark in benchmarks.items():
        if benchmark.task is not None:
            continue
        if not data_files(benchmark.path):
            if benchmark.required:
                benchmark.files(f"eval.benchmarks.{name}")  # raises, naming the key and the fix
            continue  # write_task_yamls warns that it is skipped
        check_format(benchmark.path, benchmark.format)


def file_limit(benchmark: EvalBenchmark) -> int | None:
    """The limit lm-eval applies to each file: the benchmark's, shared among its files."""
    if benchmark.task is not None or benchmark.limit is None:
        return benchmark.limit
    return math.ceil(benchmark.limit / len(data_files(benchmark.path)))


def chance_level(path: str, format: str, limit: int | None) -> float:
    """Mean of 1/choices over the items scored, the first `limit` of each file. lambada
    has no chance level (a free-form continuation is not one of k choices): 0.0."""
    if format == "lambada":
        return 0.0
    if format == "blimp":
        return 0.5
    counts = []
    for file in data_files(path):
        with open(file, encoding="utf-8") as lines:
            records = (json.loads(line) for line in lines if line.strip())
            counts += [len(record[CHOICES[format]]) for record in islice(records, limit)]
    return sum(1 / count for count in counts) / len(counts)


def task_config(name: str, format: str, files: list[str]) -> dict:
    """Task synth_<name> for one file; for several, a group of one subtask per file."""
    body = {"dataset_path": "json", "test_split": "test", "num_fewshot": 0, **TASKS[format], "metadata": {"version": 1.0}}
    if len(files) == 1:
        return {"task": TASK_PREFIX + name, "dataset_kwargs": {"data_files": {"test": files[0]}}, **body}
    subtasks = [{"task": Path(file).stem, "dataset_kwargs": {"data_files": {"test": file}}} for file in files]
    aggregate = [{"metric": metric["metric"], "aggregation": "mean", "weight_by_size": True}
                 for metric in TASKS[format]["metric_list"] if metric["aggregation"] == "mean"]
    return {"group": TASK_PREFIX + name, "task": subtasks, "aggregate_metric_list": aggregate, **body}


def write_task_yamls(benchmarks: dict[str, EvalBenchmark], directory: Path) -> dict[str, str]:
    """Write an lm-eval task YAML per local benchmark; return benchmark name -> lm-eval task
    name (a hub task's own name). A missing file that is not required is left out, with a warning."""
    directory.mkdir(parents=True, exist_ok=True)
    tasks = {}
    for name, benchmark in benchmarks.items():
        if benchmark.task is not None:
            tasks[name] = benchmark.task
            continue
        files = [os.path.abspath(file) for file in benchmark.files(f"eval.benchmarks.{name}")]
        if not files:
            continue
        check_format(benchmark.path, benchmark.format)
        config = task_config(name, benchmark.format, files)
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000))
        tasks[name] = TASK_PREFIX + name
    return tasks


def scoring_length(model) -> int:
    """Tokens lm-eval may score in one sequence (it cuts contexts from the left to fit).
    A rotary-position model (Llama) can score past the context it was trained on,
    and must: PIQA's longest choices alone are 264 tokens of the default 8K
    tokenizer against a 256-token context. Items that long are scored beyond the
    trained context, so their loglikelihoods are worse than the model's best.
    Learned absolute positions cannot go past the context."""
    context = model.config.max_position_embeddings
    rotary = getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_theta", None)
    return max(context, ROTARY_SCORING_LENGTH) if rotary else context


def run_benchmarks(model, tokenizer, benchmarks: dict[str, EvalBenchmark], directory: Path, batch_size: int, seed: int) -> dict:
    """Score the loaded model on the benchmarks with lm-eval. Returns flat metrics:
    per benchmark ``<name>_acc``, ``<name>_acc_stderr`` (and ``acc_norm``, ``perplexity``
    where the format has them), ``_chance``, ``_items``, ``_limit``, ``_limit_per_file``,
    or ``<name>_skipped``; and ``loglikelihood_requests`` and ``loglikelihood_items_per_s``."""
    import datasets
    from lm_eval import simple_evaluate  # imports the task registry and more: only when scoring
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # Unless offline, every load_dataset, even of the json builder reading a local
    # file, pings S3 to count a download (3 s timeout): none for files on disk.
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False

    class TimedHFLM(HFLM):
        """HFLM counting the loglikelihood requests it scores and the seconds they take."""

        requests, seconds = 0, 0.0

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            start = time.perf_counter()
            scores = super().loglikelihood(requests, disable_tqdm)
            self.requests += len(requests)
            self.seconds += time.perf_counter() - start
            return scores

    tasks = write_task_yamls(benchmarks, directory)
    metrics = {f"{name}_skipped": 1 for name in benchmarks if name not in tasks}
    if not tasks:
        return metrics
    hub_tasks = [name for name in tasks if benchmarks[name].task is not None]
    # Indexing lm-eval's own ~15K task configs takes ~12 s on 2 cores: only for hub tasks.
    task_manager = TaskManager(include_path=str(directory), include_defaults=bool(hub_tasks))
    for name in hub_tasks:
        if tasks[name] not in task_manager.all_tasks:
            raise StageError(f"eval.benchmarks.{name}: '{tasks[name]}' is not an lm-eval task (`lm_eval ls tasks` lists them)")
    # the loaded model, not loaded again
    lm = TimedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=scoring_length(model))

    # simple_evaluate takes one limit for all its tasks: one call per distinct limit,
    # usually a single call, which lets lm-eval batch all tasks' requests by length.
    by_limit: dict[int | None, list[str]] = {}
    for name in tasks:
        by_limit.setdefault(file_limit(benchmarks[name]), []).append(name)
    for limit, names in by_limit.items():
        try:
                results = simple_evaluate(lm, tasks=[tasks[name] for name in names], task_manager=task_manager, limit=limit,
                                      num_fewshot=0, bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False,
                                      random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
        except AssertionError:  # lm-eval's check that an answer fits in max_length, the one assert on this path
            raise StageError(f"an answer of {', '.join(names)} is longer than the {lm.max_length} tokens the model can score; "
                             "lower its limit or leave the benchmark out") from None
        for name in names:
            metrics |= benchmark_metrics(name, benchmarks[name], tasks[name], limit, results)

    metrics["loglikelihood_requests"] = lm.requests
    metrics["loglikelihood_items_per_s"] = lm.requests / lm.seconds if lm.seconds else 0.0
    log.info("benchmarks: %d loglikelihood requests, %.0f per second", lm.requests, metrics["loglikelihood_items_per_s"])
    return metrics


def benchmark_metrics(name: str, benchmark: EvalBenchmark, task: str, limit: int | None, results: dict) -> dict:
    """One benchmark's lm-eval results ({"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...})
    as flat metrics, with its chance level, items scored and limits; logged in one line."""
    metrics = {}
    for key, value in results["results"][task].items():
        metric, _, filter_name = key.partition(",")
        if filter_name and isinstance(value, (int, float)):  # not the alias, nor a stderr of "N/A"
            metrics[f"{name}_{metric}" + ("" if filter_name == "none" else f"_{filter_name}")] = float(value)
    subtasks = results["group_subtasks"].get(task) or [task]
    items = sum(results["n-samples"][subtask]["effective"] for subtask in subtasks if subtask in results["n-samples"])
    metrics |= {f"{name}_items": items, f"{name}_limit": benchmark.limit, f"{name}_limit_per_file": limit}
    if benchmark.task is None:
        metrics[f"{name}_chance"] = chance_level(benchmark.path, benchmark.format, limit)
    scores = []
    for metric in ("acc", "acc_norm", "perplexity"):
        if f"{name}_{metric}" in metrics:
            stderr = metrics.get(f"{name}_{metric}_stderr")
            scores.append(f"{metric} {metrics[f'{name}_{metric}']:.3f}" + ("" if stderr is None else f" ± {stderr:.3f}"))
    chance = f" (chance {metrics[f'{name}_chance']:.3f})" if f"{name}_chance" in metrics else ""
    log.info("%s: %s%s, %d items", name, ", ".join(scores), chance, items)
    return metrics
