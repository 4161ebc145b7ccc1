"""Experiment definitions (``experiments/<profile>.yaml``): their schema, their
expansion into named runs, each a set of ``-S`` overrides, the check of every run
before anything trains (the passes mix allows, the GPU's memory, the cost), and
the rows of ``runs.csv`` (docs/experiments.md)."""

import csv
import functools
import io
import itertools
import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from synthtrain.hardware import GPU_MEMORY_GIB, GPU_PEAK_TFLOPS
from synthtrain.params import Int, Params, Section, StageError, parse_params
from synthtrain.records import write_output_text

DEFINITIONS = Path("experiments")
DEFAULT_PROFILE = "cpu"
REPORTS = Path("reports")
SEPARATOR = "-"


class Experiment(Section):  # unknown keys fail with a did-you-mean hint, as in params.yaml
    question: str
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="key -> values; every combination is a run")
    fixed: dict[str, Any] = Field(default_factory=dict, description="-S sets of every run of this experiment")
    runs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="run name -> -S sets")
    seeds: list[int] | None = Field(None, min_length=1, description="this experiment's seeds instead of the definition's")

    @model_validator(mode="after")
    def _some_run(self):
        if not self.grid and not self.runs:
            raise ValueError("give a grid or runs")
        return self


class Estimate(Section):
    gpu: str = Field(description="a name in hardware.GPU_PEAK_TFLOPS")
    mfu: float = Field(gt=0.0, le=1.0, description="assumed model FLOPs utilisation")
    price_per_hour: float = Field(ge=0.0, description="USD per GPU-hour")
    budget_usd: float = Field(gt=0.0, description="the research plan's total")
    tokens: dict[str, int] = Field(default_factory=dict, description="run name -> training tokens where train.tokens is null (one epoch)")
    tokens_per_record: Int | None = Field(None, ge=1, description="a pool's tokens per record where metrics/ has no measurement of it")


class Definition(Section):
    profile: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(min_length=1)
    seed_params: list[str] = Field(min_length=1)
    experiments: dict[str, Experiment] = Field(min_length=1)
    estimate: Estimate | None = None


class ExperimentRun(BaseModel):
    experiment: str
    name: str           # the dvc experiment name
    config: str         # the run's name without the seed: what seeds are averaged over
    seed: int
    sets: dict[str, Any]

    def command(self, where: str = "--queue") -> list[str]:
        """``dvc exp run`` of this run: ``--queue`` queues it, ``--temp`` runs it now in a temporary workspace."""
        return ["dvc", "exp", "run", where, "-n", self.name, *itertools.chain.from_iterable(
            ("-S", f"{key}={format_value(value)}") for key, value in self.sets.items())]


def format_value(value: Any, nested: bool = False) -> str:
    """A -S value as DVC's (Hydra's) override grammar reads it: null, true, numbers, strings, and
    {key: value} and [values] with their strings quoted."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {format_value(item, True)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(item, True) for item in value) + "]"
    if isinstance(value, str) and nested:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "null" if value is None else json.dumps(value) if isinstance(value, bool) else str(value)


def load_definition(profile: str) -> Definition:
    path = DEFINITIONS / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in DEFINITIONS.glob("*.yaml"))
        raise StageError(f"{path} is missing; the profiles are: {', '.join(known) or 'none'}")
    try:
        return Definition.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in error.errors())
        raise StageError(f"{path}: {problems}") from None


def expand(definition: Definition, names: list[str] | None = None) -> list[ExperimentRun]:
    """Every run of the named experiments (all when None; in the order named), seed by seed. A run whose sets
    equal those of a run of an earlier experiment in the definition is that run: it keeps the earlier
    name, whichever experiments are named, so it trains once and every experiment reads it."""
    unknown = sorted(set(names or []) - set(definition.experiments))
    if unknown:
        raise StageError(f"unknown experiment {', '.join(unknown)}; the definition has {', '.join(definition.experiments)}")
    runs: dict[str, list[ExperimentRun]] = {}
    first_named: dict[str, str] = {}  # the sets, as canonical JSON -> the name of the first run with them
    for experiment, spec in definition.experiments.items():
        configs = {SEPARATOR.join(map(str, values)): dict(zip(spec.grid, values)) for values in itertools.product(*spec.grid.values())}
        configs = {**(configs if spec.grid else {}), **spec.runs}
        runs[experiment] = []
        # seed by seed: an experiment stopped part-way has every configuration once before it has any three times
        for seed in spec.seeds or definition.seeds:
            for config, sets in configs.items():
                sets_of_run = {**definition.profile, **spec.fixed, **sets, **dict.fromkeys(definition.seed_params, seed)}
                name = first_named.setdefault(json.dumps(sets_of_run, sort_keys=True), f"{experiment}{SEPARATOR}{config}{SEPARATOR}s{seed}")
                runs[experiment].append(ExperimentRun(experiment=experiment, name=name, config=config, seed=seed, sets=sets_of_run))
    return [run for experiment in names or definition.experiments for run in runs[experiment]]


def first_per_name(items: list, name=lambda run: run.name) -> list:
    """The first item of each run name, in order: a run two experiments share counts once."""
    firsts: dict[str, Any] = {}
    for item in items:
        firsts.setdefault(name(item), item)
    return list(firsts.values())


def unique_runs(runs: list[ExperimentRun]) -> list[ExperimentRun]:
    """The runs to train: one per name (a run shared by two experiments trains once)."""
    return first_per_name(runs)


def check_keys(runs: list[ExperimentRun], params: Params) -> None:
    """Fail before queueing anything if a run sets a key that params.yaml does not have (a typo would run the
    baseline), or adds one (``+key``, DVC's append) that it has or whose parent it lacks."""
    known = params.model_dump()
    for run in runs:
        for key in run.sets:
            *parents, last = key.removeprefix("+").split(".")
            node = known
            for part in parents:
                if not isinstance(node, dict) or part not in node:
                    raise StageError(f"run {run.name}: -S {key}: params.yaml has no key {part!r} there")
                node = node[part]
            if not isinstance(node, dict) or (last in node) == key.startswith("+"):
                raise StageError(f"run {run.name}: -S {key}: " + ("params.yaml has it already: drop the +" if key.startswith("+")
                                                                   else "params.yaml has no such key (+key adds one)"))


def run_params(run: ExperimentRun, params: Params) -> Params:
    """``params`` with the run's -S sets applied, validated as a params file is (check_keys first: every key exists)."""
    tree = params.model_dump()
    for key, value in run.sets.items():
        *parents, last = key.removeprefix("+").split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[last] = value
    return parse_params(tree, f"run {run.name}")


# --- the check before anything trains: mix, memory, cost -----------------------------------------
def training_tokens(run: ExperimentRun, params: Params, estimate: Estimate | None) -> int | None:
    """What the run trains on: train.tokens, or for one epoch (null) the definition's estimate.tokens of its configuration."""
    return params.train.tokens or (estimate.tokens.get(run.config) if estimate else None)


@functools.cache
def model_size(preset: str, vocab_size: int, seq_len: int):
    """(LlamaConfig, parameters) of a preset, built on the meta device: shapes only, no memory, no time."""
    import torch

    from synthtrain.model import build_model, llama_config, parameter_count

    config = llama_config(preset, vocab_size, seq_len, eos_id=0, pad_id=0)  # ids change neither the size nor the FLOPs
    with torch.device("meta"):
        return config, parameter_count(build_model(config))


def training_cost(run: ExperimentRun, params: Params, estimate: Estimate) -> tuple[int, float, float]:
    """(tokens, hours, USD) of a run's training (``params``: its own, run_params) on the estimate's GPU at its assumed MFU."""
    from synthtrain.model import flops_per_token

    tokens = training_tokens(run, params, estimate)
    if tokens is None:
        raise StageError(f"run {run.name} trains one epoch (train.tokens: null): give its tokens in estimate.tokens.{run.config}")
    peak = dict(GPU_PEAK_TFLOPS).get(estimate.gpu)
    if peak is None:
        raise StageError(f"estimate.gpu = {estimate.gpu!r}: not one of {', '.join(name for name, _ in GPU_PEAK_TFLOPS)}")
    seq_len = params.tokenize.seq_len
    config, parameters = model_size(params.train.model, params.tokenizer.vocab_size, seq_len)
    hours = tokens * flops_per_token(config, parameters, seq_len) / (peak * 1e12 * estimate.mfu) / 3600
    return tokens, hours, hours * estimate.price_per_hour


def measured_pool(params: Params, metrics: Path) -> tuple[dict[str, int] | None, str]:
    """Tokens per category of the run's pool as its sample stage counted them (mix counts them the same way),
    or None and why not: no such metrics file, or metrics/ come from another params file (another tokenizer
    size, other sources or another sample size)."""
    if params.mix.sources:
        return None, f"the run trains on mix.sources ({', '.join(params.mix.sources)}), whose tokens only its mix stage counts"
    pool = params.mix.pool
    sample = metrics / "sample" / f"{pool}.json"
    if not sample.is_file():
        return None, f"{sample} is missing"
    tokenizer = json.loads((metrics / "tokenizer.json").read_text()) if (metrics / "tokenizer.json").is_file() else {}
    if params.tokenizer.pretrained is None and tokenizer.get("vocab_size") != params.tokenizer.vocab_size:
        return None, f"{metrics}/tokenizer.json has {tokenizer.get('vocab_size')} tokens, tokenizer.vocab_size {params.tokenizer.vocab_size}"
    sources = sorted(path.stem for path in (metrics / "download").glob("*.json"))
    if sources != sorted(params.sources):
        return None, f"{metrics}/download/ has the sources {', '.join(sources) or 'none'}, the params {', '.join(sorted(params.sources))}"
    measured = json.loads(sample.read_text())
    if measured.get("size") != params.sample.sizes[pool]:
        return None, f"{sample} is of {measured.get('size')} records, sample.sizes.{pool} = {params.sample.sizes[pool]}"
    return {category: entry["tokens"] for category, entry in measured["by_category"].items()}, f"measured ({sample})"


def pool_draws(params: Params, estimate: Estimate | None, metrics: Path) -> tuple[dict[str, tuple[float, float]] | None, str]:
    """Per category of the run's pool: (tokens the run draws from it, tokens it has), and where the pool's
    tokens come from. The run draws its mix (mix.tokens, or the pool once) and trains on train.tokens of it,
    wrapping round when that is more. Without a measurement the pool is sample.sizes records of
    estimate.tokens_per_record tokens, checked as a whole ("pool"): a lower bound on the passes, since a
    category short of data is repeated more. None when neither is known."""
    tokens, source = measured_pool(params, metrics)
    if tokens is None:
        if params.mix.sources:
            return None, f"not checked: {source}"
        if estimate is None or estimate.tokens_per_record is None:
            return None, f"not checked: {source}, and the definition gives no estimate.tokens_per_record"
        records = params.sample.sizes[params.mix.pool]
        tokens = {"pool": records * estimate.tokens_per_record}
        source = f"estimated, {records:,} records x {estimate.tokens_per_record} tokens (estimate.tokens_per_record; {source})"
    total = sum(tokens.values())
    drawn = max(params.mix.tokens or total, params.train.tokens or 0)
    # mix.tokens null takes the pool once in its own shares; so does the whole pool when its categories are unknown
    own = params.mix.tokens is None or "pool" in tokens
    shares = {c: t / total for c, t in tokens.items()} if own else params.mix.shares()
    return {c: (drawn * share, tokens.get(c, 0)) for c, share in shares.items() if share > 0}, source


GIB = 2**30
# The share of a GPU's memory a training step may use: the CUDA context, cuBLAS workspaces and
# the caching allocator's fragmentation take the rest, and the device reports a little less than its datasheet.
MEMORY_HEADROOM = 0.9


def activation_bytes(config, bf16: bool, checkpointing: bool) -> tuple[float, float]:
    """(bytes per token autograd keeps for backward, bytes per token more at the start of backward) of a Llama
    forward pass in transformers. The count of Korthikanti et al. 2022 (section 4.1), redone for this block:
    RMSNorm, grouped K/V, SwiGLU, SDPA that keeps no s x s scores, no dropout. Per token, with h the hidden
    width, h_kv = kv_heads x head width, i the SwiGLU width, V the vocabulary and e bytes per bf16 value:

        each layer  16h      the two RMSNorms' fp32 input and normalised output (2 x 2 x 4h)
                  + e·7h     the inputs of q, k, v, gate and up (autocast casts a copy for each: 5h), q and the attention output
                  + e·2h_kv  k and v
                  + e·4i     SwiGLU's gate and up outputs, SiLU(gate) and their product
        outside     8h + e·h the final RMSNorm and the head's input
                  + 4V       the fp32 log-softmax of the loss
        at backward + 8V     its gradient and the gradient of the fp32 logits

    e = 2 under bf16 autocast; in fp32 (e = 4) the projections share their input, so the count errs high.
    Gradient checkpointing (transformers: one checkpoint per layer) keeps each layer's fp32 input (4h) instead
    and recomputes one layer at a time in backward. tests/test_experiments_resume.py measures the kept bytes."""
    e = 2 if bf16 else 4
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    layer = 16 * h + e * (7 * h + 2 * kv + 4 * config.intermediate_size)
    outside = 8 * h + e * h + 4 * vocab
    if checkpointing:
        return layers * 4 * h + outside, layer + 8 * vocab
    return layers * layer + outside, 8 * vocab


def training_memory(params: Params) -> tuple[int, float, float]:
    """(parameters, bytes of the weights, gradients and AdamW states, bytes of activations at the peak) of one
    micro-batch of params.train on one device: fp32 weights, gradients and AdamW's two moments are 16 bytes per
    parameter, and bf16 autocast keeps a 2-byte copy of each weight for backward. GPUs train in bf16
    (train.precision auto) unless train.precision is fp32."""
    train, seq_len = params.train, params.tokenize.seq_len
    config, parameters = model_size(train.model, params.tokenizer.vocab_size, seq_len)
    bf16 = train.precision != "fp32"
    kept, backward = activation_bytes(config, bf16, train.gradient_checkpointing)
    return parameters, parameters * (18 if bf16 else 16), train.micro_batch * seq_len * (kept + backward)


@dataclass
class RunCheck:
    pool_source: str
    passes: float | None = None      # the most passes over a category of the pool (over the pool, when estimated)
    memory: float | None = None      # bytes of a training step
    problems: list[str] = field(default_factory=list)


def check_run(run: ExperimentRun, params: Params, estimate: Estimate | None, metrics: Path = Path("metrics")) -> RunCheck:
    """A run (``params``: its own, run_params) against the passes mix allows and, with an estimate, its GPU's memory."""
    draws, source = pool_draws(params, estimate, metrics)
    check = RunCheck(source)
    if draws:
        passes = {category: drawn / available if available else math.inf for category, (drawn, available) in draws.items()}
        worst = max(passes, key=passes.get)
        check.passes = passes[worst]
        if check.passes > params.mix.max_epochs:
            drawn, available = draws[worst]
            where = f"pool {params.mix.pool}" if worst == "pool" else f"the {worst} records of pool {params.mix.pool}"
            check.problems.append(f"run {run.name}: {check.passes:.1f} passes over {where} ({drawn:,.0f} tokens drawn of "
                                  f"{available:,.0f}) but mix.max_epochs = {params.mix.max_epochs:g}")
    if estimate is not None:
        gib = dict(GPU_MEMORY_GIB).get(estimate.gpu)
        if gib is None:
            raise StageError(f"estimate.gpu = {estimate.gpu!r}: not one of {', '.join(name for name, _ in GPU_MEMORY_GIB)} (GPU_MEMORY_GIB)")
        parameters, states, activations = training_memory(params)
        check.memory = states + activations
        if check.memory > MEMORY_HEADROOM * gib * GIB:
            train = params.train
            check.problems.append(
                f"run {run.name}: a step needs {check.memory / GIB:.1f} GiB but the {estimate.gpu} has {gib} GiB "
                f"({MEMORY_HEADROOM:.0%} usable): {train.model} is {parameters / 1e6:.0f}M parameters ({states / GIB:.1f} GiB "
                f"with gradients and AdamW), activations {activations / GIB:.1f} GiB at train.micro_batch = {train.micro_batch} x "
                f"{params.tokenize.seq_len} tokens {'with' if train.gradient_checkpointing else 'without'} gradient checkpointing; "
                "lower train.micro_batch" + ("" if train.gradient_checkpointing else " or set train.gradient_checkpointing: true"))
    return check


# --- reports/runs.csv: one row per finished run ---------------------------------------------------
def report_dir(profile: str) -> Path:
    """Where a profile's report and runs.csv go: reports/ for the default profile, reports/<profile>/ for
    the others (their run names are the same, so they must not share a runs.csv)."""
    return REPORTS if profile == DEFAULT_PROFILE else REPORTS / profile


def recorded_runs(path: Path) -> set[str]:
    """The run names that have a row in runs.csv: they ran, on this machine or another."""
    if not path.is_file():
        return set()
    with path.open(newline="") as handle:
        return {row["name"] for row in csv.DictReader(handle)}


def unrecorded(runs: list[ExperimentRun], path: Path) -> list[ExperimentRun]:
    """The runs still to run: those without a row in runs.csv, in order, each name once."""
    recorded = recorded_runs(path)
    return [run for run in unique_runs(runs) if run.name not in recorded]


def save_rows(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    """Add rows to runs.csv, or replace the rows of the same name, keeping every other row (runs of earlier
    machines) and any column it has beyond ``columns``. The file is written whole under a temporary name and
    renamed (records.write_output_text), so a reader or a kill never sees half a file."""
    old_columns, old_rows = [], []
    if path.is_file():
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            old_columns, old_rows = list(reader.fieldnames or []), list(reader)
    new = {row["name"]: row for row in rows}
    merged = [new.pop(row["name"], row) for row in old_rows] + list(new.values())
    text = io.StringIO()
    writer = csv.DictWriter(text, [*columns, *(c for c in old_columns if c not in columns)], restval="")
    writer.writeheader()
    writer.writerows(merged)
    write_output_text(path, text.getvalue())


def curves_path(rows: Path) -> Path:
    """Each run's training loss per step, next to runs.csv (research.report writes it with the rows)."""
    return rows.with_name("loss_curves.csv")


def commit_rows(paths: list[Path], name: str) -> None:
    """Commit the results files alone (whatever else is staged stays staged), so that a clone elsewhere skips the
    runs they record."""
    files = [str(path) for path in paths if path.exists()]
    for command in (["git", "add", *files], ["git", "commit", "-q", "-m", f"experiments: {name}", "--", *files]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise StageError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()}")
