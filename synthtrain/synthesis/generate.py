"""``kind: generate``: records written by a teacher model, run by the download
stage like any other source.

A method (``self_instruct.py``, ``evol_instruct.py``, ``magpie.py``) turns a
shard of prompts into candidates: a conversation, or the reason it was
rejected. ``generate`` runs the shards with the eval stage's ``load_model`` and
batched ``Generator``, and writes each finished shard to, and reads it back
from, ``data/generate/<source>-<fingerprint>/`` (settings and
``weights_fingerprint``), so an interrupted run resumes. Settings, resume,
reject reasons and provenance: docs/sources.md.
"""

import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from synthtrain.sources import local
from synthtrain.sources.formats import FORMATS, INPUT_SEPARATOR, Rejected
from synthtrain.generation import Generator, load_model, use_faster_precision
from synthtrain.params import TEACHER_OR_FOLDER, GenerateSource, LocalSource, StageError
from synthtrain.precision import PRECISIONS
from synthtrain.records import InvalidRecord, RecordWriter, RejectWriter, make_record
from synthtrain.synthesis import evol_instruct, magpie, self_instruct
from synthtrain.synthesis.common import Candidate

log = logging.getLogger("generate")
SHARDS = Path("data/generate")
# where the shards go instead of <root>/data/generate: research.experiments points the runs it starts in DVC's
# temporary workspaces at the main workspace's, so that a run killed with its workspace resumes in the next one
SHARDS_ENV = "SYNTHTRAIN_GENERATE_SHARDS"
SHARD_SCHEMA = pa.schema([("reason", pa.string()), ("detail", pa.string()), ("candidate", pa.string())])


def instruction_of(user: str) -> str:
    """A user turn without its input: ``formats.alpaca_prompt`` puts an input after a blank line."""
    return user.split(INPUT_SEPARATOR, 1)[0]


def read_seeds(source: GenerateSource) -> list[str]:
    """The seed file's instructions (its first user turns, each on one line; for self_instruct without
    the input that follows an instruction), unique, in file order. Prompts without answers (MT-bench's
    turns) are seeds too."""
    supported = f"supported formats: {', '.join(FORMATS)} in {', '.join(local.FILE_TYPES)} files"
    settings = LocalSource(kind="local", path=source.seed_file, category="instruction", max_samples=1, format=source.seed_format,
                           split="line")
    seeds: dict[str, None] = {}
    try:
        for item in local.read(settings, prompts=True):
            if isinstance(item, Rejected) or item.messages is None:
                continue
            user = next((m["content"] for m in item.messages if m.get("role") == "user" and isinstance(m.get("content"), str)), "")
            if source.method == "self_instruct":  # its prompt lists tasks by their instruction alone, without inputs (Wang et al.)
                user = instruction_of(user)
            if user.strip():
                seeds[" ".join(user.split())] = None
    except StageError as exc:  # it says what is supported where that is the problem (a file type, a format)
        raise StageError(f"seed_file: {exc}") from None
    if not seeds:
        raise StageError(f"seed_file {source.seed_file}: no instructions (no user turns) in it; {supported}")
    return list(seeds)


def weights_fingerprint(model) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def method_for(source: GenerateSource, generator: Generator, seeds: list[str]):
    methods = {"self_instruct": self_instruct.SelfInstruct, "evol_instruct": evol_instruct.EvolInstruct, "magpie": magpie.Magpie}
    return methods[source.method](source, generator, seeds)


def write_shard(path: Path, candidates: list[Candidate]) -> None:
    """Written to a temporary name and renamed, so a shard on disk is always whole. Renamed
    at once, not with the stage's outputs (records.output_transaction): a shard is the
    state an interrupted or failed run resumes from, so it must outlive the stage."""
    table = pa.table({"reason": [c.reason for c in candidates], "detail": [c.detail for c in candidates],
                      "candidate": [json.dumps({"messages": c.messages, "meta": c.meta}, ensure_ascii=False) for c in candidates]},
                     schema=SHARD_SCHEMA)  # fmt: skip
    partial = path.with_suffix(".partial")
    pq.write_table(table, partial)
    partial.rename(path)


def shards_root(root: str | Path) -> Path:
    return Path(os.environ[SHARDS_ENV]) if os.environ.get(SHARDS_ENV) else Path(root) / SHARDS


def generate(source: GenerateSource, name: str, max_chars: int, records: RecordWriter, rejects: RejectWriter, root: str | Path = ".",
             precision: str = "auto") -> dict:
    """Run the shards of ``source`` into ``records`` and ``rejects``; returns the download stage's counts.
    ``precision``: auto (the faster of fp32 and bf16 here), or one of them (bench/generate_speed.py)."""
    model, tokenizer = load_model(source.teacher, fix=f"sources.{name}.teacher must be {TEACHER_OR_FOLDER} of a causal language "
                                  "model with a chat template (for example models/current), or a hub id in the local cache")
    seeds = read_seeds(source) if source.seed_file else []
    teacher = weights_fingerprint(model)  # of the weights as saved, before the cast
    settings = source.model_dump(exclude={"preferences"})

    def folder(precision: str) -> Path:  # a shard is what this teacher wrote in this precision: sampling in bf16 and in fp32 differ
        fingerprint = hashlib.blake2b(json.dumps([settings, teacher, precision], sort_keys=True).encode(), digest_size=6).hexdigest()
        return shards_root(root) / f"{name}-{fingerprint}"

    if precision == "auto":  # a resumed run goes on in the precision its shards were written in; where the two time
        # close, a fresh timing could pick the other one and start over, losing the hours already generated
        precision = next((known for known in PRECISIONS if any(folder(known).glob("shard-*.parquet"))), precision)
    precision = use_faster_precision(model, source.sampling.batch_size, precision)
    generator = Generator(model, tokenizer, source.sampling, source.seed)
    method = method_for(source, generator, seeds)
    provenance = {"teacher": source.teacher, "teacher_weights": teacher, "precision": precision, "method": source.method,
                  "template": method.template, "sampling": source.sampling.model_dump(), "seed": source.seed}  # fmt: skip
    shards = folder(precision)
    shards.mkdir(parents=True, exist_ok=True)
    budget = source.n * source.max_attempts
    kept = read = resumed = 0
    started = time.perf_counter()
    log.info("%s: %s with %s (weights %s), %d records, shards in %s", name, source.method, source.teacher, teacher, source.n, shards)
    with tqdm(total=source.n, unit="rec", desc=f"generate {name}", mininterval=1) as bar:
        for number in range(budget):
            if kept >= source.n or read >= budget:
                break
            size = min(source.shard_prompts, source.n - kept, budget - read)
            path = shards / f"shard-{number:05d}.parquet"
            if path.exists():
                resumed += 1
            else:
                generator.reseed(source.seed * 1_000_003 + number)
                write_shard(path, method.shard(size, random.Random(f"{source.seed}-{number}")))
            kept_now = []
            for index, row in enumerate(pq.read_table(path).to_pylist()):
                candidate = json.loads(row["candidate"])
                location = f"{path}#{index}"
                read += 1
                if row["reason"] is not None:
                    rejects.reject(row["reason"], location, row["detail"], candidate)
                    continue
                try:
                    record = make_record(name, source.category, messages=candidate["messages"], meta={**candidate["meta"], **provenance},
                                         max_chars=max_chars)
                except InvalidRecord as exc:
                    rejects.reject(exc.reason, location, str(exc), candidate)
                    continue
                records.write(record)
                kept_now.append(candidate)
            method.remember(kept_now)
            kept += len(kept_now)
            bar.update(len(kept_now))
    if kept == 0:
        raise StageError(f"source '{name}': the teacher's {read} generations left no valid record after filtering "
                         f"(rejected by reason: {dict(sorted(rejects.by_reason.items()))})")
    if kept < source.n:
        log.warning("%s: only %d of %d records after %d prompts (n x max_attempts); rejected by reason: %s", name, kept, source.n,
                    read, dict(sorted(rejects.by_reason.items())))
    for stale in shards_root(root).glob(f"{name}-*"):  # shards of earlier settings or teachers can never be resumed
        if stale != shards and stale.is_dir() and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{12}}", stale.name):
            shutil.rmtree(stale)
    seconds = time.perf_counter() - started
    speed = generator.speed()
    log.info("%s: %d records in %.0fs (%.2f records/s, %.0f generated tokens/s), %d shards resumed", name, kept, seconds,
             kept / max(seconds, 1e-9), speed["generation_tokens_per_s"], resumed)
    return {"read": read, "kept": kept, "by_category": {source.category: kept}, "shards_resumed": resumed,
            "records_per_s": round(kept / max(seconds, 1e-9), 3), "precision": precision, **speed}  # fmt: skip
