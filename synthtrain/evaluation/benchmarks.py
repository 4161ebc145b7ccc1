"""Benchmarks scored by lm-evaluation-harness (lm-eval), zero-shot, mostly from local files.

A benchmark (``eval.benchmarks.<name>``) is one of:

- a JSONL file (or glob) in one of the BENCHMARK_FORMATS;
- a table (CSV, TSV, Parquet, JSON, JSONL; or a glob) whose ``columns`` make
  multiple-choice items: each row is checked and written in the
  multiple_choice format to ``<directory>/<name>/<file>.jsonl``;
- a folder of the user's own lm-eval task YAMLs (lm-eval's include_path) and
  the ``task`` to run from it;
- ``{task: <lm-eval task name>}``: lm-eval's own task (its data from the hub).

Each local file becomes an lm-eval task YAML, ``<directory>/<name>.yaml``,
for task ``synth_<name>``: plain YAML and Jinja (no ``!function``) that reads the
file by its absolute path with the ``json`` dataset builder, so a user can
rerun it by hand on a saved model. A glob naming several files becomes a
group, one subtask per file (the json builder takes its columns from the first
file, and BLiMP's files differ).

The items scored are a seeded random subset (``draw``): ``limit`` of them,
shared evenly by a group's tasks, drawn in a seeded order of each task's items
(a larger limit adds items to a smaller one's). lm-eval scores at the context
the model was trained on (its max_position_embeddings), cutting a longer
context from the left; an item with an answer longer than that context cannot
be scored, so it is passed over for the next of the draw and counted
(``<name>_too_long``). The draw is written to ``<directory>/samples.json``, for
``lm_eval --samples``. The formats, the rerun command and the limits:
docs/evaluation.md.

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
its format or its columns, an unknown lm-eval task) raise StageError with one
line naming the file, the line or row and what was expected.
"""

import csv
import glob
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from synthtrain.params import BENCHMARK_FORMATS, TABLE_SUFFIXES, EvalBenchmark, StageError
from synthtrain.records import has_invalid_utf8, shown
from synthtrain.sources.formats import Rejected
from synthtrain.sources.local import json_rows, jsonl_rows, parquet_rows

# lm-eval bootstraps perplexity's stderr in a pool of one process per core,
# forked from this one, which holds the model; in-process is quick for
# BOOTSTRAP_ITERS. lm-eval reads the variable when it bootstraps.
os.environ.setdefault("DISABLE_MULTIPROC", "1")
BOOTSTRAP_ITERS = 1000  # only perplexity is bootstrapped; acc's stderr has a closed form

log = logging.getLogger("eval")
logging.getLogger("lm_eval").setLevel(logging.WARNING)

TASK_PREFIX = "synth_"
SAMPLES = "samples.json"  # the draw, by lm-eval task, as lm_eval --samples reads it

# The fields each format's lines must have (check_format).
FIELDS = {
    "blimp": ("sentence_good", "sentence_bad"),
    "multiple_choice": ("query", "choices", "gold"),
    "winogrande": ("context_options", "continuation", "gold"),
    "hellaswag": ("activity_label", "ctx", "endings", "label"),
    "lambada": ("context", "continuation"),
}
assert tuple(FIELDS) == BENCHMARK_FORMATS
DELIMITERS = {".csv": ",", ".tsv": "\t"}  # the other tables are read as the local source reads them
TABLE_READERS = {".parquet": parquet_rows, ".json": json_rows, ".jsonl": jsonl_rows}
assert {*DELIMITERS, *TABLE_READERS} == set(TABLE_SUFFIXES)

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


# --- tables read by columns ------------------------------------------------------------
def table_rows(file: str, header: bool) -> Iterator[tuple[str, dict | list]]:
    """(location, row) of each row of a table: a dict by column name, or a list
    for a CSV or TSV file without a header row; a location names the file and the
    line (CSV, TSV, JSONL), the row (Parquet, from 0) or the item (a JSON array)."""
    suffix = Path(file).suffix.lower()
    if suffix in DELIMITERS:
        yield from delimited_rows(file, DELIMITERS[suffix], header)
        return
    for row in TABLE_READERS[suffix](Path(file)):
        if isinstance(row, Rejected):
            raise StageError(f"{row.location}: cannot be read as a row of columns ({row.detail})")
        location, record, _ = row
        if not isinstance(record, dict):
            raise StageError(f"{location}: {shown(record)} is not an object of named columns")
        yield location, record


def delimited_rows(file: str, delimiter: str, header: bool) -> Iterator[tuple[str, dict | list]]:
    kind = "CSV" if delimiter == "," else "TSV"
    try:
        with open(file, encoding="utf-8-sig", newline="") as handle:  # -sig: a byte-order mark is not part of the first column
            reader = csv.reader(handle, delimiter=delimiter)
            names = next(reader, []) if header else None
            for row in reader:
                if row:  # a blank line
                    # a row shorter than the header lacks the last columns, as cell() reports
                    yield f"{file}:{reader.line_num}", row if names is None else dict(zip(names, row))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise StageError(f"{file}: cannot be read as a {kind} file ({type(error).__name__}: {error})") from None


def cell(location: str, row: dict | list, column: int | str, key: str, expected: str) -> object:
    """The row's value in a column (params key columns.<key>), or a StageError saying it is not there."""
    if isinstance(row, list):
        if column >= len(row):
            raise StageError(f"{location}: no column {column} (columns.{key}; the row has {len(row)}, counted from 0); "
                             f"expected {expected}")
        return row[column]
    if row.get(column) is None:
        what = "is empty" if column in row else f"is missing (the row has {', '.join(map(str, row))})"
        raise StageError(f"{location}: column {column!r} (columns.{key}) {what}; expected {expected}")
    return row[column]


def text(location: str, value: object, column: int | str, key: str) -> str:
    """A cell as the text lm-eval scores; a number is its digits."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise StageError(f"{location}: column {column!r} (columns.{key}) is {shown(value)}; expected text")
    if has_invalid_utf8(str(value)):
        raise StageError(f"{location}: column {column!r} (columns.{key}) is not valid UTF-8; expected text")
    return str(value)


def gold_index(location: str, value: object, column: int | str, choices: int) -> int:
    """The right answer, written as a letter (A: the first choice) or an index from 0."""
    written = value.strip() if isinstance(value, str) else value
    if isinstance(written, str) and len(written) == 1 and "A" <= written.upper() <= "Z":
        index = ord(written.upper()) - ord("A")
    elif isinstance(written, str) and written.isdigit():
        index = int(written)
    elif isinstance(written, int) and not isinstance(written, bool):
        index = written
    else:
        index = -1
    if not 0 <= index < choices:
        raise StageError(f"{location}: column {column!r} (columns.gold) is {shown(value)}; expected a letter "
                         f"A-{chr(ord('A') + choices - 1)} or an index 0-{choices - 1} (the row has {choices} choices)")
    return index


def table_item(location: str, row: dict | list, benchmark: EvalBenchmark) -> dict:
    """A row as an item of the multiple_choice format, {query, choices, gold}."""
    columns = benchmark.columns
    query = text(location, cell(location, row, columns.query, "query", "the question"), columns.query, "query")
    if isinstance(columns.choices, list):
        choices = [text(location, cell(location, row, column, f"choices[{i}]", "an answer"), column, f"choices[{i}]")
                   for i, column in enumerate(columns.choices)]
    else:
        answers = cell(location, row, columns.choices, "choices", "a list of answers")
        if not isinstance(answers, list) or len(answers) < 2:
            raise StageError(f"{location}: column {columns.choices!r} (columns.choices) is {shown(answers)}; "
                             "expected a list of at least two answers")
        choices = [text(location, answer, columns.choices, f"choices[{i}]") for i, answer in enumerate(answers)]
    if columns.gold is None:
        return {"query": query, "choices": choices, "gold": columns.gold_choice}
    value = cell(location, row, columns.gold, "gold", "the right answer: a letter or an index from 0")
    return {"query": query, "choices": choices, "gold": gold_index(location, value, columns.gold, len(choices))}


def table_items(file: str, benchmark: EvalBenchmark) -> list[dict]:
    """Every row of a table as a multiple_choice item; a StageError for the first that does not fit the columns."""
    items = [table_item(location, row, benchmark) for location, row in table_rows(file, benchmark.header)]
    if not items:
        raise StageError(f"{file}: no rows; expected one multiple-choice item per row")
    return items


# --- checks before scoring --------------------------------------------------------------
def check_task_name(name: str, benchmark: EvalBenchmark, task_manager) -> None:
    """The benchmark's task is one lm-eval task or group of the folder (or of lm-eval's own, without a path)."""
    where = f"a task or group of {benchmark.path}" if benchmark.path is not None else "an lm-eval task (`lm_eval ls tasks` lists them)"
    if benchmark.task in task_manager.all_tags:
        raise StageError(f"eval.benchmarks.{name}.task: '{benchmark.task}' is a tag of several tasks, not {where}; "
                         "name one of its tasks or a group")
    if benchmark.task not in task_manager.all_tasks:
        found = f" (it has {', '.join(task_manager.all_tasks) or 'no task YAML'})" if benchmark.path is not None else ""
        raise StageError(f"eval.benchmarks.{name}.task: '{benchmark.task}' is not {where}{found}")


def check_task_folder(name: str, benchmark: EvalBenchmark) -> None:
    if not os.path.isdir(benchmark.path):
        raise StageError(f"eval.benchmarks.{name}.path: {benchmark.path} is not a folder; with task, path is a folder "
                         "of lm-eval task YAMLs (lm-eval's --include_path)")
    from lm_eval.tasks import TaskManager  # imports the task registry: only for a folder of tasks

    check_task_name(name, benchmark, TaskManager(include_path=os.path.abspath(benchmark.path), include_defaults=False))


def check_benchmarks(benchmarks: dict[str, EvalBenchmark]) -> None:
    """Before anything is scored: every required local benchmark has its files;
    a JSONL file's first line has the fields of its format; every row of a table
    fits its columns; a folder of task YAMLs has its task (lm-eval's own task
    names are checked when scoring, against lm-eval's task index)."""
    for name, benchmark in benchmarks.items():
        if benchmark.path is None:
            continue
        if not data_files(benchmark.path):
            if benchmark.required:
                benchmark.files(f"eval.benchmarks.{name}")  # raises, naming the key and the fix
            continue  # write_task_yamls warns that it is skipped
        if benchmark.task is not None:
            check_task_folder(name, benchmark)
        elif benchmark.columns is not None:
            for file in data_files(benchmark.path):
                table_items(file, benchmark)
        else:
            check_format(benchmark.path, benchmark.format)


def task_config(name: str, format: str, files: list[str]) -> dict:
    """Task synth_<name> for one file; for several, a group of one subtask per file."""
    body = {"dataset_path": "json", "test_split": "test", "num_fewshot": 0, **TASKS[format], "metadata": {"version": 1.0}}
    if len(files) == 1:
        return {"task": TASK_PREFIX + name, "dataset_kwargs": {"data_files": {"test": files[0]}}, **body}
    subtasks = [{"task": Path(file).stem, "dataset_kwargs": {"data_files": {"test": file}}} for file in files]
    aggregate = [{"metric": metric["metric"], "aggregation": "mean", "weight_by_size": True}
                 for metric in TASKS[format]["metric_list"] if metric["aggregation"] == "mean"]
    return {"group": TASK_PREFIX + name, "task": subtasks, "aggregate_metric_list": aggregate, **body}


def write_items(path: Path, items: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    return str(path.resolve())


def write_task_yamls(benchmarks: dict[str, EvalBenchmark], directory: Path) -> dict[str, str]:
    """Write an lm-eval task YAML per local file benchmark (a table's rows first, as
    multiple_choice JSONL under ``<directory>/<name>/``); return benchmark name ->
    lm-eval task name (a folder's or lm-eval's own for ``task``). A missing file
    that is not required is left out, with a warning."""
    directory.mkdir(parents=True, exist_ok=True)
    tasks = {}
    for name, benchmark in benchmarks.items():
        files = [] if benchmark.path is None else [os.path.abspath(file) for file in benchmark.files(f"eval.benchmarks.{name}")]
        if benchmark.task is not None:
            if benchmark.path is None or files:
                tasks[name] = benchmark.task
            continue
        if not files:
            continue
        if benchmark.columns is not None:
            files = [write_items(directory / name / f"{Path(file).stem}.jsonl", table_items(file, benchmark)) for file in files]
        else:
            check_format(benchmark.path, benchmark.format)
        config = task_config(name, benchmark.format or "multiple_choice", files)
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000))
        tasks[name] = TASK_PREFIX + name
    return tasks


# --- the items scored ---------------------------------------------------------------------
def task_limit(limit: int | None, tasks: int) -> int | None:
    """The items drawn from each of a benchmark's tasks: its limit, shared evenly (rounded up)."""
    return None if limit is None else math.ceil(limit / tasks)


def answer_tokens(lm, context: str, continuation: str) -> int:
    """Tokens of a loglikelihood request's continuation as lm-eval's LM.loglikelihood
    encodes them. With an empty context lm-eval may take the first token as the
    context: one fewer, so this errs on the long side."""
    if context == "":
        return len(lm.tok_encode(continuation, add_special_tokens=False))
    return len(lm._encode_pair(context, continuation)[1])


def fitting_items(task, indices: list[int], lm) -> list[int]:
    """The items (sorted indices) each of whose answers fits in the lm.max_length
    tokens lm-eval scores in one sequence. Generated and rolling requests always
    fit: lm-eval cuts their context from the left."""
    every_item = len(indices) == len(task.eval_docs)
    # lm-eval looks each item up in a sample list (`in`: items x sample steps): every item goes without one
    task.build_all_requests(samples=None if every_item else indices)
    longest = [0] * len(indices)
    for instance in task.instances:  # doc_id: the item's position in indices
        if instance.request_type == "loglikelihood":
            longest[instance.doc_id] = max(longest[instance.doc_id], answer_tokens(lm, *instance.args))
    return [index for index, tokens in zip(indices, longest) if tokens <= lm.max_length]


def draw(task, count: int | None, seed: int, lm) -> tuple[list[int], int]:
    """A seeded random subset of ``count`` of the task's items (None: all) whose answers
    fit in the model's context, sorted; and how many drawn items were passed over for
    the next of the draw because an answer does not fit. The order is a shuffle by
    seed and task name, so a larger count only adds items."""
    order = list(range(len(task.eval_docs)))
    random.Random(f"{seed}:{task.task_name}").shuffle(order)
    wanted = len(order) if count is None else min(count, len(order))
    chosen, too_long, taken = [], 0, 0
    while len(chosen) < wanted and taken < len(order):
        batch = sorted(order[taken:taken + wanted - len(chosen)])
        taken += len(batch)
        fitting = fitting_items(task, batch, lm)
        chosen += fitting
        too_long += len(batch) - len(fitting)
    return sorted(chosen), too_long


def chance_level(tasks: dict, drawn: dict[str, list[int]]) -> float:
    """Mean of 1/choices over the items drawn. A task whose items are not one of k
    choices (lambada's free-form continuation, generation) has no chance level: 0.0."""
    counts = [len(task.doc_to_choice(task.eval_docs[index])) for name, task in tasks.items()
              if task.OUTPUT_TYPE == "multiple_choice" for index in drawn[name]]
    return sum(1 / count for count in counts) / len(counts) if counts else 0.0


def draw_benchmarks(loaded: dict[str, dict], benchmarks: dict[str, EvalBenchmark], seed: int, lm) -> tuple[dict, dict, dict]:
    """Per lm-eval task of each benchmark (loaded: TaskManager.load's tasks and groups by
    benchmark name): its draw, how many items the draw passed over, and the samples for
    simple_evaluate (the draws of fewer than all items)."""
    drawn, too_long, samples = {}, {}, {}
    for name, load in loaded.items():
        count = task_limit(benchmarks[name].limit, len(load["tasks"]))
        for task_name, task in load["tasks"].items():
            task.set_config(key="num_fewshot", value=0)  # zero-shot, as simple_evaluate sets it, for the requests draw builds
            drawn[task_name], too_long[task_name] = draw(task, count, seed, lm)
            if not drawn[task_name]:  # an empty sample would mean every item to lm-eval
                raise StageError(f"eval.benchmarks.{name}: no item of {task_name} has answers that fit in the {lm.max_length} "
                                 "tokens the model was trained on; leave the benchmark out")
            if len(drawn[task_name]) < len(task.eval_docs):
                samples[task_name] = drawn[task_name]
    return drawn, too_long, samples


# --- scoring ---------------------------------------------------------------------------------
def run_benchmarks(model, tokenizer, benchmarks: dict[str, EvalBenchmark], directory: Path, batch_size: int, seed: int) -> dict:
    """Score the loaded model on the benchmarks with lm-eval. Returns flat metrics:
    per benchmark ``<name>_acc``, ``<name>_acc_stderr`` (and ``acc_norm``, ``perplexity``
    where the task has them), ``_chance``, ``_items``, ``_limit``, ``_limit_per_file``
    (per task of a group), ``_too_long``, or ``<name>_skipped``; and
    ``benchmarks_max_length``, ``loglikelihood_requests`` and ``loglikelihood_items_per_s``."""
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
    folders = [os.path.abspath(benchmarks[name].path) for name in tasks if benchmarks[name].task and benchmarks[name].path]
    hub_tasks = [name for name in tasks if benchmarks[name].path is None]
    # Indexing lm-eval's own ~15K task configs takes ~12 s on 2 cores: only for hub tasks.
    task_manager = TaskManager(include_path=[str(directory), *folders], include_defaults=bool(hub_tasks))
    for name in tasks:
        if benchmarks[name].task is not None:
            check_task_name(name, benchmarks[name], task_manager)
    # the loaded model, not loaded again, scored at the context it was trained on
    lm = TimedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=model.config.max_position_embeddings)

    loaded = {name: task_manager.load([task]) for name, task in tasks.items()}  # name -> its tasks and groups
    drawn, too_long, samples = draw_benchmarks(loaded, benchmarks, seed, lm)
    (directory / SAMPLES).write_text(json.dumps(samples))

    scored = [load["groups"][tasks[name]] if tasks[name] in load["groups"] else load["tasks"][tasks[name]] for name, load in loaded.items()]
    results = simple_evaluate(lm, tasks=scored, task_manager=task_manager, samples=samples, num_fewshot=0,
                              bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    for name, load in loaded.items():
        metrics |= benchmark_metrics(name, benchmarks[name], tasks[name], results)
        metrics |= {f"{name}_limit_per_file": task_limit(benchmarks[name].limit, len(load["tasks"])),
                    f"{name}_too_long": sum(too_long[task] for task in load["tasks"]),
                    f"{name}_chance": chance_level(load["tasks"], drawn)}
        log_benchmark(name, metrics)

    metrics["benchmarks_max_length"] = lm.max_length
    metrics["loglikelihood_requests"] = lm.requests
    metrics["loglikelihood_items_per_s"] = lm.requests / lm.seconds if lm.seconds else 0.0
    log.info("benchmarks: %d loglikelihood requests, %.0f per second, at most %d tokens each", lm.requests,
             metrics["loglikelihood_items_per_s"], lm.max_length)
    return metrics


def benchmark_metrics(name: str, benchmark: EvalBenchmark, task: str, results: dict) -> dict:
    """One benchmark's lm-eval results ({"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...})
    as flat metrics, with the items scored and its limit."""
    metrics = {}
    for key, value in results["results"][task].items():
        metric, _, filter_name = key.partition(",")
        if filter_name and isinstance(value, (int, float)):  # not the alias, nor a stderr of "N/A"
            metrics[f"{name}_{metric}" + ("" if filter_name == "none" else f"_{filter_name}")] = float(value)
    subtasks = results["group_subtasks"].get(task) or [task]
    items = sum(results["n-samples"][subtask]["effective"] for subtask in subtasks if subtask in results["n-samples"])
    return metrics | {f"{name}_items": items, f"{name}_limit": benchmark.limit}


def log_benchmark(name: str, metrics: dict) -> None:
    scores = []
    for metric in ("acc", "acc_norm", "perplexity"):
        if f"{name}_{metric}" in metrics:
            stderr = metrics.get(f"{name}_{metric}_stderr")
            scores.append(f"{metric} {metrics[f'{name}_{metric}']:.3f}" + ("" if stderr is None else f" ± {stderr:.3f}"))
    too_long = metrics[f"{name}_too_long"]
    log.info("%s: %s (chance %.3f), %d items%s", name, ", ".join(scores), metrics[f"{name}_chance"], metrics[f"{name}_items"],
             f", {too_long} passed over as longer than the context" if too_long else "")
