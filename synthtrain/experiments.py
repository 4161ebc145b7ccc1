"""Experiment definitions (``experiments/<profile>.yaml``): their schema, and their
expansion into named runs, each a set of ``-S`` overrides (docs/experiments.md)."""

import itertools
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from synthtrain.params import Params, Section, StageError

DEFINITIONS = Path("experiments")
SEPARATOR = "-"


class Experiment(Section):  # unknown keys fail with a did-you-mean hint, as in params.yaml
    question: str
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="key -> values; every combination is a run")
    fixed: dict[str, Any] = Field(default_factory=dict, description="-S sets of every run of this experiment")
    runs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="run name -> -S sets")

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

    def command(self) -> list[str]:
        return ["dvc", "exp", "run", "--queue", "-n", self.name, *itertools.chain.from_iterable(
            ("-S", f"{key}={format_value(value)}") for key, value in self.sets.items())]


def format_value(value: Any) -> str:
    """A -S value as DVC's override grammar reads it (YAML scalars: null, true, numbers, strings)."""
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
    """Every run of the named experiments (all when None; in the order named), per seed."""
    unknown = sorted(set(names or []) - set(definition.experiments))
    if unknown:
        raise StageError(f"unknown experiment {', '.join(unknown)}; the definition has {', '.join(definition.experiments)}")
    runs = []
    for experiment in names or definition.experiments:
        spec = definition.experiments[experiment]
        configs = {SEPARATOR.join(map(str, values)): dict(zip(spec.grid, values)) for values in itertools.product(*spec.grid.values())}
        configs = {**(configs if spec.grid else {}), **spec.runs}
        for config, sets in configs.items():
            for seed in definition.seeds:
                runs.append(ExperimentRun(experiment=experiment, name=f"{experiment}{SEPARATOR}{config}{SEPARATOR}s{seed}", config=config, seed=seed,
                                sets={**definition.profile, **spec.fixed, **sets, **dict.fromkeys(definition.seed_params, seed)}))
    return runs


def check_keys(runs: list[ExperimentRun], params: Params) -> None:
    """Fail before queueing anything if a run sets a key that params.yaml does not have (a typo would run the baseline)."""
    known = params.model_dump()
    for run in runs:
        for key in run.sets:
            node = known
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise StageError(f"run {run.name}: -S {key}: params.yaml has no such key")
                node = node[part]
