"""params.yaml: its schema, and validation that fails with a message a user can act on.

Every stage calls ``load_params`` first, which validates the whole file: an
unknown key fails with the closest valid name, a wrong type or range names the
key, the value and what is allowed. Later stages add their sections here.
"""

import argparse
import difflib
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stages.records import CATEGORIES

Category = Literal[CATEGORIES]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
SOURCE_KINDS = ("builtin", "hub", "local")
SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StageError(Exception):
    """A problem the user can fix (bad params, a missing file, an unreachable
    hub): reported as one line naming what is wrong, without a traceback."""


class ParamsError(StageError):
    pass


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data):
        if isinstance(data, dict):
            allowed = sorted(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
                    hint = f"; did you mean '{close[0]}'?" if close else ""
                    raise ValueError(f"unknown key '{key}'{hint} (allowed: {', '.join(allowed)})")
        return data


class World(Section):
    """The built-in fictional world. Small by default so that a 1M-25M parameter
    CPU model can learn its facts; scale it up for GPU runs (README)."""

    seed: int = 0
    countries: int = Field(8, ge=2, le=10_000)
    cities_per_country: int = Field(2, ge=1, le=100)
    people: int = Field(8, ge=1, le=100_000)
    species: int = Field(8, ge=1, le=100_000)
    substances: int = Field(8, ge=1, le=100_000)
    phrasings: int = Field(4, ge=1, le=8, description="training phrasings per fact and question")
    qa_fraction: Fraction = Field(0.5, description="share of entities with question-answer training data")


class CategoryShares(Section):
    instruction: Fraction = 0.5
    knowledge: Fraction = 0.3
    web: Fraction = 0.2

    @model_validator(mode="after")
    def _not_all_zero(self):
        if self.instruction + self.knowledge + self.web <= 0:
            raise ValueError("at least one category share must be positive")
        return self


class FlawRates(Section):
    """Share of all generated records that carry each flaw (ground truth in meta.flaw)."""

    exact_duplicate: Fraction = 0.03
    near_duplicate: Fraction = 0.03
    wrong_answer: Fraction = 0.02
    truncated: Fraction = 0.015
    repetition: Fraction = 0.01
    refusal: Fraction = 0.015
    off_topic: Fraction = 0.01
    boilerplate_only: Fraction = 0.01
    mojibake: Fraction = 0.005
    gibberish: Fraction = 0.005

    @model_validator(mode="after")
    def _total_below_half(self):
        total = sum(self.model_dump().values())
        if total > 0.5:
            raise ValueError(f"the flaw rates sum to {total:.3f}; at most 0.5 is allowed")
        return self


class BuiltinSource(Section):
    kind: Literal["builtin"]
    max_samples: int = Field(1_500_000, ge=1, description="records to generate")
    seed: int = 0
    shares: CategoryShares = CategoryShares()
    flaws: FlawRates = FlawRates()


class HubSource(Section):
    kind: Literal["hub"]
    name: str = Field(min_length=1, description="hub dataset id, or a local directory laid out like one")
    config: str | None = None
    split: str = "train"
    max_samples: int = Field(ge=1)
    category: Category | None = Field(None, description="implied for the known datasets")
    normaliser: Literal["openhermes", "cosmopedia", "magpie", "fineweb_edu"] | None = Field(
        None, description="implied by a known dataset name"
    )
    min_int_score: int | None = Field(None, ge=0, le=5, description="FineWeb-Edu only")


class LocalSource(Section):
    kind: Literal["local"]
    path: str = Field(min_length=1, description="a file or a glob")
    category: Category
    max_samples: int = Field(ge=1)
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "self_instruct", "text"] = "auto"
    split: Literal["block", "line"] = Field("block", description="plain text: one document per blank-line block or per line")


Source = Annotated[BuiltinSource | HubSource | LocalSource, Field(discriminator="kind")]


class Download(Section):
    max_chars: int = Field(200_000, ge=1, description="longer records are rejected as too_long")
    workers: int = Field(0, ge=0, description="builtin generator processes; 0 = one per core")
    hub_timeout_s: float = Field(10.0, gt=0, description="how long to wait for the hub before failing")


class BuiltinEval(Section):
    per_family: int = Field(200, ge=1, le=100_000, description="held-out problems per family")
    seed: int = 0


class NearDuplicates(Section):
    shingle: int = Field(5, ge=1, le=64, description="words per shingle")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    threshold: float = Field(0.8, gt=0.0, lt=1.0, description="Jaccard similarity of 'near duplicate'")
    false_positive_weight: Fraction = Field(0.2, description="weight of LSH false positives when choosing bands and rows")
    false_negative_weight: Fraction = Field(0.8, description="weight of LSH false negatives (candidates are verified, so misses cost more)")


class Heldout(Section):
    fraction: Fraction = Field(0.01, description="share of each source's deduplicated records held out")
    max_per_source: int = Field(2000, ge=0, description="cap on held-out records per source")
    seed: int = 0


class Benchmark(Section):
    path: str = Field(min_length=1, description="a JSONL file")
    fields: list[str] = Field(min_length=1, description="fields whose text is checked; list values are joined")
    required: bool = Field(True, description="false: a missing file is skipped with a warning (and reported)")


class Decontaminate(Section):
    ngram: int = Field(13, ge=4, le=64, description="words per n-gram (13 as in GPT-3)")
    min_ngram: int = Field(8, ge=4, le=64, description="shorter texts down to this many words are matched whole")
    max_matches: int = Field(10, ge=1, description="an n-gram in more training records is common phrasing, not leakage")
    benchmarks: dict[str, Benchmark] = {}

    @model_validator(mode="after")
    def _min_below_ngram(self):
        if self.min_ngram > self.ngram:
            raise ValueError(f"min_ngram ({self.min_ngram}) must be at most ngram ({self.ngram})")
        return self


class Dedup(Section):
    near: NearDuplicates = NearDuplicates()
    heldout: Heldout = Heldout()
    decontaminate: Decontaminate = Decontaminate()
    workers: int = Field(0, ge=0, description="processes; 0 = one per core")


class Quality(Section):
    """Filled in by the quality stage."""


class Params(Section):
    world: World = World()
    sources: dict[str, Source]
    download: Download = Download()
    builtin_eval: BuiltinEval = BuiltinEval()
    dedup: Dedup = Dedup()
    quality: Quality = Quality()

    @field_validator("sources", mode="before")
    @classmethod
    def _known_kinds(cls, sources):
        if not isinstance(sources, dict) or not sources:
            raise ValueError("sources must map at least one source name to its settings")
        for name, source in sources.items():
            if not SOURCE_NAME.match(str(name)) or name == "builtin_eval":
                raise ValueError(f"source name '{name}' must be letters, digits, '_', '.', '-' and not 'builtin_eval'")
            kind = source.get("kind") if isinstance(source, dict) else None
            if kind not in SOURCE_KINDS:
                close = difflib.get_close_matches(str(kind), SOURCE_KINDS, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"sources.{name}.kind is {kind!r}{hint} (allowed: {', '.join(SOURCE_KINDS)})")
        return sources


def _describe(error: dict) -> str:
    loc = [str(part) for part in error["loc"]]
    # pydantic puts the discriminator value into the location of a source's
    # fields (sources.NAME.hub.max_samples); the user wrote sources.NAME.max_samples.
    if len(loc) >= 3 and loc[0] == "sources" and loc[2] in SOURCE_KINDS:
        del loc[2]
    key = ".".join(loc) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("value_error", "missing"):
        return f"{key}: {message}"
    return f"{key} = {error['input']!r}: {message}"


def parse_params(raw: dict, origin: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{origin}: {_describe(error)}" for error in exc.errors()]
        raise ParamsError("\n".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return parse_params(raw, str(path))


def run_stage(main, argv=None) -> None:
    """Run a stage's main(argv); a StageError ends it with one line and exit code 1."""
    try:
        main(argv)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def stage_arguments(description: str) -> argparse.ArgumentParser:
    """The command line every stage shares: ``python -m stages.NAME [--params FILE]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser

