"""train stage: a Llama model from scratch on the packed token shards, or a
pretrained model fine-tuned on them (``train.init``).

    python -m stages.train [--params params.yaml]
    accelerate launch --multi_gpu --num_processes N -m stages.train     # DDP (FSDP: docs/training.md)

``train`` reads ``data/tokens/`` and ``models/tokenizer/`` (with ``train.init``:
the init model's folder, its weights and its tokenizer, which params validation
makes the pipeline's tokenizer too) and writes
``models/current/`` (whole, when the stage succeeds: records.output_directory),
``models/checkpoint/`` and dvclive's ``metrics/train/`` (as training goes, so
it can be watched).
``layout`` splits each step over processes and micro-batches; the summed loss
is divided by the loss tokens of the global batch and DDP averages, so each
process scales by N. ``choose_precision`` times bf16 against fp32 on a CPU,
``check_budget`` is the budget guard, and a checkpoint resumes only under the
same model, data, params (``RESUMABLE_CHANGES`` excepted) and code (``CODE``).
Nothing on disk changes before the guard has accepted the run, so a refused
run leaves the previous outputs and checkpoint as they were; then
``make_room`` moves another run's checkpoint aside (``aside_path``), never
deleting it unless ``train.discard_checkpoint`` says so.
The loop, precision, MFU, metrics, budget guard and checkpoints:
docs/training.md.
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list
from dvclive import Live
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import AutoModelForCausalLM, GenerationConfig

from synthtrain.hardware import (PEAK_DRIFT, PEAK_METHOD, cpu_info, datasheet_peak, device_name, matmul_peak, matmul_peaks, peak_drift,
                                 record_peak, recorded_peak)
from synthtrain.model import PRESETS, build_model, flops_per_token, llama_config, parameter_count
from synthtrain.params import StageError, Train
from synthtrain.records import output_directory
from synthtrain.teacher import teacher_folder
from synthtrain.tokens.encoding import load_tokenizer

TOKENS = Path("data/tokens")
TOKENIZER = Path("models/tokenizer")
OUTPUT = Path("models/current")
CHECKPOINTS = Path("models/checkpoint")
LIVE = Path("metrics/train")

# Params that may change between a checkpoint and its resumption: they do not change the weights.
RESUMABLE_CHANGES = {"launcher", "micro_batch", "gradient_checkpointing", "compile", "eval_every", "eval_sequences", "checkpoint_every",
                     "discard_checkpoint", "price_per_hour", "budget_usd", "max_hours", "over_budget", "guard_steps", "peak_tflops"}  # fmt: skip
COMPILE_MIN_STEPS = 100  # train.compile: auto compiles runs at least this long
LAST_STEPS = 10  # the summary's train loss is the mean of the last steps' losses
CODE = (Path(__file__), Path(__file__).with_name("model.py"))  # a checkpoint resumes only under the code that wrote it


def say(accelerator: Accelerator, message: str) -> None:
    if accelerator.is_main_process:
        tqdm.write(f"train: {message}", file=sys.stderr)


# --- data ----------------------------------------------------------------------------------
class TokenSet:
    """A directory of tokenize's packed shards, read through memory maps."""

    def __init__(self, directory: Path):
        index = json.loads((directory / "index.json").read_text())
        self.tokens = [np.load(directory / shard["tokens"], mmap_mode="r") for shard in index["shards"]]
        self.masks = [np.load(directory / shard["mask"], mmap_mode="r") for shard in index["shards"]]
        self.starts = np.cumsum([0] + [len(shard) for shard in self.tokens])
        self.sequences = int(self.starts[-1])

    def rows(self, start: int, count: int, which: str = "both") -> tuple[np.ndarray | None, np.ndarray]:
        """Sequences start .. start+count (wrapping round at the end) as (tokens, mask)."""
        index = np.arange(start, start + count) % self.sequences
        shard = np.searchsorted(self.starts, index, side="right") - 1
        tokens = None if which == "mask" else np.concatenate([self.tokens[s][index[shard == s] - self.starts[s]] for s in np.unique(shard)])
        mask = np.concatenate([self.masks[s][index[shard == s] - self.starts[s]] for s in np.unique(shard)])
        return tokens, mask

    def batch(self, start: int, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = self.rows(start, count)
        return torch.from_numpy(tokens.astype(np.int64)).to(device), torch.from_numpy(mask.astype(bool)).to(device)

    def loss_tokens(self, start: int, count: int) -> int:
        """Tokens counted in the loss: every masked token but each sequence's first, which has nothing before it."""
        return int(self.rows(start, count, which="mask")[1][:, 1:].sum())


def data_fingerprint(directory: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(directory)).encode())
            with path.open("rb") as file:
                digest.update(hashlib.file_digest(file, "blake2b").digest())
    return digest.hexdigest()


def read_inputs(params) -> tuple[dict, object, TokenSet, dict[str, TokenSet]]:
    """metadata.json, the tokenizer, the training set and the held-out sets, checked against params."""
    if not (TOKENS / "metadata.json").is_file() or not (TOKENS / "train/index.json").is_file():
        raise StageError(f"{TOKENS}/ holds no token shards: run `dvc repro tokenize` first")
    metadata = json.loads((TOKENS / "metadata.json").read_text())
    source = teacher_folder(params.train.init) if params.train.init else TOKENIZER  # a fine-tuned model keeps its own tokenizer
    tokenizer = load_tokenizer(source)
    if len(tokenizer) != metadata["vocab_size"]:
        raise StageError(f"{source} has {len(tokenizer):,} tokens but {TOKENS}/ was made with {metadata['vocab_size']:,}: "
                         "run `dvc repro tokenize` to re-tokenize")
    if metadata["seq_len"] != params.tokenize.seq_len:
        raise StageError(f"{TOKENS}/ holds sequences of {metadata['seq_len']} tokens but tokenize.seq_len is "
                         f"{params.tokenize.seq_len} (the model's context): run `dvc repro tokenize`, or set tokenize.seq_len back")
    heldout = {path.name: TokenSet(path) for path in sorted((TOKENS / "heldout").glob("*")) if (path / "index.json").is_file()}
    return metadata, tokenizer, TokenSet(TOKENS / "train"), heldout


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a step's global batch splits into processes and micro-batches."""

    sequences_per_step: int
    sequences_per_process: int
    accumulation: int
    steps: int


def layout(config: Train, seq_len: int, processes: int, train_sequences: int) -> Layout:
    if config.batch_tokens % seq_len:
        raise StageError(f"train.batch_tokens = {config.batch_tokens:,} is not a multiple of tokenize.seq_len = {seq_len}")
    sequences = config.batch_tokens // seq_len
    if sequences % (config.micro_batch * processes):
        raise StageError(f"train.batch_tokens = {config.batch_tokens:,} is {sequences} sequences of {seq_len}, not a multiple of "
                         f"train.micro_batch = {config.micro_batch} x {processes} process(es); make batch_tokens a multiple of "
                         f"{config.micro_batch * processes * seq_len:,} or change micro_batch")
    tokens = config.tokens if config.tokens is not None else train_sequences * seq_len
    steps = tokens // config.batch_tokens
    if steps == 0:
        raise StageError(f"train.tokens = {tokens:,} is less than one step of train.batch_tokens = {config.batch_tokens:,}")
    return Layout(sequences, sequences // processes, sequences // processes // config.micro_batch, steps)


def pretrained_model(folder: str, seq_len: int, vocab_size: int):
    """train.init's weights in fp32 (the optimizer's precision), checked against the data they will read."""
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise StageError(f"train.init = {folder}: not a causal language model that transformers can load offline "
                         f"({str(exc).splitlines()[0]})") from None
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and seq_len > context:
        raise StageError(f"tokenize.seq_len = {seq_len} is longer than train.init's context of {context} tokens: lower tokenize.seq_len")
    if vocab_size > model.get_input_embeddings().num_embeddings:
        raise StageError(f"train.init = {folder}: its tokenizer has {vocab_size:,} tokens but the model only "
                         f"{model.get_input_embeddings().num_embeddings:,} embeddings")
    return model


# --- precision and peak ------------------------------------------------------------------------
def choose_precision(config: Train, device: torch.device, resumed: str | None = None) -> dict:
    """The precision to compute in (a resumed run's, else train.precision or the faster) and the device
    peak that MFU divides by (FLOP/s, None when unknown): train.peak_tflops, else on a GPU its datasheet's,
    on a CPU the measured one (hardware.matmul_peak; measured again at the end: ``final_peak``). A CPU's
    datasheet peak is kept beside it where the model is known."""
    precision = resumed or (None if config.precision == "auto" else config.precision)
    if device.type == "cuda":
        precision = precision or ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
        datasheet, source = datasheet_peak(device, precision)
        peak, source = (config.peak_tflops * 1e12, "train.peak_tflops") if config.peak_tflops else (datasheet, source)
        return {"device": device_name(device), "precision": precision, "peak_flops": peak, "peak_source": source}
    measured = matmul_peaks(device)
    precision = precision or max(measured, key=measured.get)
    datasheet, datasheet_source = datasheet_peak(device, precision)
    best = max(measured[precision], recorded_peak(precision) or 0.0)  # this machine's record, when it has one
    peak, source = (config.peak_tflops * 1e12, "train.peak_tflops") if config.peak_tflops else (best, f"measured {precision} matmul")
    return {"device": "cpu", **cpu_info(), "precision": precision, "peak_flops": peak, "peak_source": source, "peak_method": PEAK_METHOD,
            "matmul_tflops": {name: round(flops / 1e12, 4) for name, flops in measured.items()},
            "datasheet_peak_flops": datasheet, "datasheet_source": datasheet_source}


def sample_peak(hardware: dict, device: torch.device, config: Train) -> None:
    """Measure the CPU peak of the precision in use again (at each held-out evaluation) into hardware["peak_samples"]."""
    if device.type == "cpu" and not config.peak_tflops:
        dtype = torch.bfloat16 if hardware["precision"] == "bf16" else torch.float32
        hardware.setdefault("peak_samples", []).append(matmul_peak(device, dtype))


def final_peak(hardware: dict, device: torch.device, config: Train) -> dict:
    """The peak measured once more after training, and the best of this run's measurements and of this
    machine's record (hardware.recorded_peak) that MFU divides by: another job on the cores, or a slow
    moment of a shared machine, lowers the measurements it overlaps only (docs/training.md, MFU)."""
    if device.type == "cuda" or config.peak_tflops:
        return {"peak_flops": hardware["peak_flops"]}
    start, precision = hardware["matmul_tflops"][hardware["precision"]] * 1e12, hardware["precision"]
    sample_peak(hardware, device, config)
    end, this_run = hardware["peak_samples"][-1], max(start, *hardware["peak_samples"])
    record = recorded_peak(precision)
    record_peak(precision, this_run)
    return {"peak_flops": max(this_run, record or 0.0), "peak_source": f"measured {precision} matmul, best of this run and this machine's record",
            "peak_tflops_start": round(start / 1e12, 4), "peak_tflops_end": round(end / 1e12, 4), "peak_drift": round(peak_drift(start, end), 4),
            "peak_tflops_this_run": round(this_run / 1e12, 4), "peak_measurements": 1 + len(hardware["peak_samples"]),
            "peak_tflops_recorded_before": round(record / 1e12, 4) if record else None}


# --- the step ---------------------------------------------------------------------------------
def token_loss_sum(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the tokens whose mask is 1, each predicted from the ones before it."""
    targets = tokens[:, 1:].masked_fill(~mask[:, 1:], -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")


@dataclasses.dataclass(frozen=True)
class LossSum:
    """A micro-batch's summed loss: the model's logits (in bf16 autocast or fp32) through the token loss,
    both possibly torch.compile'd (``compiled``)."""

    forward: Callable
    bf16: bool
    token_loss: Callable = token_loss_sum

    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.forward(input_ids=tokens).logits
        return self.token_loss(logits, tokens, mask)


def compiled(model, bf16: bool) -> LossSum:
    """The loss through torch.compile'd model and token loss (inductor fuses the norms, activations,
    casts and the vocabulary's log-softmax). On a CPU the attention runs eager, as matmuls and a softmax
    that inductor fuses: the CPU SDPA kernel is opaque to it and slower at these head widths
    (docs/training.md has the profile). The attention setting is not saved with the model."""
    if next(model.parameters()).device.type == "cpu":
        unwrapped = model.module if hasattr(model, "module") else model
        unwrapped.set_attn_implementation("eager")
        # Inductor's CPU scatter-add (the embedding's backward) adds across OpenMP threads with atomics, in
        # a different order each run; deterministic mode lowers it to the eager kernel, so the same machine
        # gives the same weights. Filling new tensors with NaN, the mode's debugging aid, is left off.
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = False
    return LossSum(torch.compile(model), bf16, torch.compile(token_loss_sum))


def compile_this_run(config: Train, steps_left: int) -> bool:
    """train.compile, where auto compiles runs of COMPILE_MIN_STEPS or more: a CPU compile takes about a
    minute and the compiled step saves about a second (docs/training.md)."""
    return config.compile is True or (config.compile == "auto" and steps_left >= COMPILE_MIN_STEPS)


def learning_rate(step: int, steps: int, config: Train) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    floor = config.lr * config.min_lr_ratio
    if config.schedule == "wsd":
        decay_start = steps - max(1, round(config.decay_fraction * steps))
        if step < decay_start:
            return config.lr
        return config.lr - (config.lr - floor) * (step - decay_start + 1) / (steps - decay_start)
    progress = (step - config.warmup_steps + 1) / max(1, steps - config.warmup_steps)
    return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def adamw(model, config: Train, device: torch.device) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": config.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=1e-8, fused=True)  # one kernel per step on GPU and CPU alike


def train_step(model, optimizer, accelerator: Accelerator, data: TokenSet, plan: Layout, step: int, micro_batch: int,
               loss_sum_of: LossSum, grad_clip: float) -> tuple[float, float]:
    """One optimizer step on the step's global batch; returns (mean loss over the batch, gradient norm)."""
    first = step * plan.sequences_per_step
    normaliser = max(1, data.loss_tokens(first, plan.sequences_per_step))
    mine = first + accelerator.process_index * plan.sequences_per_process
    loss_sum = torch.zeros((), device=accelerator.device)
    for micro in range(plan.accumulation):
        tokens, mask = data.batch(mine + micro * micro_batch, micro_batch, accelerator.device)
        last = micro == plan.accumulation - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            micro_loss = loss_sum_of(tokens, mask)
            accelerator.backward(micro_loss * (accelerator.num_processes / normaliser))
        loss_sum += micro_loss.detach()
    loss = accelerator.reduce(loss_sum, "sum").item() / normaliser
    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), grad_clip or math.inf))
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(loss, grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm


class NonFiniteLoss(Exception):
    def __init__(self, loss: float, grad_norm: float):
        super().__init__(f"loss {loss}, gradient norm {grad_norm}")


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error) or "out of memory" in str(error)


def out_of_memory_advice(config: Train, error: BaseException) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    checkpointing = "" if config.gradient_checkpointing else ", or set train.gradient_checkpointing: true (about 30% slower)"
    return (f"out of memory with train.micro_batch = {config.micro_batch} on the {config.model} preset ({first_line}): "
            f"lower train.micro_batch (train.batch_tokens stays, so the result does not change){checkpointing}")


def evaluate(model, heldout: dict[str, TokenSet], config: Train, accelerator: Accelerator, bf16: bool) -> dict[str, float]:
    """Mean loss per held-out set on its first eval_sequences (a multiple of the processes), and over all.
    Uncompiled: the last batch of a set is smaller, and a new shape would compile again."""
    loss_sum_of = LossSum(model, bf16)
    model.eval()
    sums, total = {}, torch.zeros(2, device=accelerator.device)
    with torch.no_grad():
        for name, data in heldout.items():
            per_process = min(config.eval_sequences, data.sequences) // accelerator.num_processes
            first = accelerator.process_index * per_process
            local = torch.zeros(2, device=accelerator.device)
            for offset in range(0, per_process, config.micro_batch):
                tokens, mask = data.batch(first + offset, min(config.micro_batch, per_process - offset), accelerator.device)
                local += torch.stack([loss_sum_of(tokens, mask), mask[:, 1:].sum()])
            sums[name] = accelerator.reduce(local, "sum")
            total += sums[name]
    model.train()
    losses = {name: (loss / count).item() for name, (loss, count) in sums.items() if count > 0}
    if total[1] > 0:
        losses["all"] = (total[0] / total[1]).item()
    return losses


# --- checkpoints -------------------------------------------------------------------------------
def weights_for_file(weights: dict, tied: bool) -> dict:
    """A tied output head is the embedding: safetensors stores each tensor once."""
    return {name: tensor.contiguous() for name, tensor in weights.items() if not (tied and name == "lm_head.weight")}


def optimizer_file(accelerator: Accelerator) -> str | None:
    """This process's optimizer file: FSDP shards the state, so each process writes its own; otherwise the main one."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return f"optimizer-{accelerator.process_index:03d}-of-{accelerator.num_processes:03d}.safetensors"
    return "optimizer.safetensors" if accelerator.is_main_process else None


def save_checkpoint(accelerator: Accelerator, model, optimizer, state: dict, tied: bool) -> None:
    weights = accelerator.get_state_dict(model)  # every process: FSDP gathers the shards
    optimizer_state = optimizer.state_dict()
    staging = CHECKPOINTS / ".staging"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_file(weights_for_file(weights, tied), staging / "model.safetensors")
        rng = {"cpu": torch.get_rng_state()} | ({"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})
        save_file(rng, staging / "rng.safetensors")
        (staging / "state.json").write_text(json.dumps(state, indent=1))
    accelerator.wait_for_everyone()
    if name := optimizer_file(accelerator):
        tensors = {f"{index}.{key}": value.contiguous() for index, values in optimizer_state["state"].items()
                   for key, value in values.items()}  # fmt: skip
        save_file(tensors, staging / name, metadata={"param_groups": json.dumps(optimizer_state["param_groups"])})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = CHECKPOINTS / "last"
        previous = CHECKPOINTS / ".previous"
        shutil.rmtree(previous, ignore_errors=True)
        if final.exists():
            final.rename(previous)
        staging.rename(final)  # the one moment the checkpoint changes: a kill before it keeps the previous one
        shutil.rmtree(previous, ignore_errors=True)
    accelerator.wait_for_everyone()


@dataclasses.dataclass(frozen=True)
class Found:
    """What models/checkpoint holds, read without changing anything (a refused run touches nothing)."""

    directory: Path | None  # last, or .previous when a kill came between save_checkpoint's renames; None: no checkpoint
    state: dict | None  # its state.json when it belongs to this run, else None
    step: int | None  # its step, None when unreadable
    aside: Path | None  # another run's checkpoint: where it goes once the run is accepted (unless discard_checkpoint)
    why: str


def find_checkpoint(run: dict) -> Found:
    """The checkpoint in models/checkpoint, and whether it belongs to this run. Reads only:
    what a killed write left is tidied, and another run's checkpoint moved aside, by
    ``make_room`` once the budget guard has accepted the run."""
    directory = CHECKPOINTS / "last"
    if not directory.is_dir() and (CHECKPOINTS / ".previous").is_dir():
        directory = CHECKPOINTS / ".previous"  # killed between the two renames: the previous checkpoint is whole
    if not directory.is_dir():
        return Found(None, None, None, None, "no checkpoint")
    try:
        state = json.loads((directory / "state.json").read_text())
        step, theirs = int(state["step"]), state["run"]
        changed = [f"{section}.{key}" for section in run for key in sorted(set(run[section]) | set(theirs.get(section, {})))
                   if run[section].get(key) != theirs.get(section, {}).get(key)]  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        reason = f"{type(error).__name__}: {error}"
        return Found(directory, None, None, aside_path(None, None), f"the checkpoint in {directory} is unreadable ({reason})")
    if changed:
        return Found(directory, None, step, aside_path(step, theirs),
                     f"the checkpoint at step {step} is for another run (changed: {', '.join(changed)})")
    return Found(directory, state, step, None, f"resuming from the checkpoint at step {step}")


def aside_path(step: int | None, run: dict | None) -> Path:
    """models/checkpoint-<step>-<8 hex digits of that run's fingerprint>: a sibling of
    models/checkpoint, which DVC does not track, git and DVC ignore (.gitignore, .dvcignore)."""
    if run is None:
        name = f"checkpoint-unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
    else:
        name = f"checkpoint-{step}-{hashlib.blake2b(json.dumps(run, sort_keys=True).encode(), digest_size=4).hexdigest()}"
    path, copy = CHECKPOINTS.with_name(name), 1
    while path.exists():
        copy += 1
        path = CHECKPOINTS.with_name(f"{name}-{copy}")
    return path


def make_room(found: Found, discard: bool) -> str | None:
    """Once the run is accepted, before its first write: clear what a killed write left,
    restore a checkpoint left as .previous, and move another run's checkpoint aside
    (delete it with ``discard``). Returns what it did to another run's checkpoint."""
    shutil.rmtree(CHECKPOINTS / ".staging", ignore_errors=True)  # killed while writing: the last one is whole
    if (CHECKPOINTS / ".previous").is_dir() and not (CHECKPOINTS / "last").exists():
        (CHECKPOINTS / ".previous").rename(CHECKPOINTS / "last")  # killed between the two renames
    if found.directory is None or found.state is not None:
        return None
    which = f"the checkpoint at step {found.step}" if found.step is not None else "the unreadable checkpoint"
    if discard:
        shutil.rmtree(CHECKPOINTS)
        return f"deleted {which} of the other run in {CHECKPOINTS}/ (train.discard_checkpoint: true)"
    CHECKPOINTS.rename(found.aside)
    return (f"moved {which} of the other run aside to {found.aside}/ (to resume that run, set its params back and make it "
            f"{CHECKPOINTS} again; delete it when it is no longer needed)")


def load_checkpoint_weights(model, tied: bool, directory: Path) -> None:
    missing, unexpected = model.load_state_dict(load_file(directory / "model.safetensors"), strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if tied else set()):
        raise StageError(f"{directory} does not fit the model (missing {missing}, unexpected {unexpected}); delete it and re-run")


def load_checkpoint_optimizer_and_rng(accelerator: Accelerator, optimizer, directory: Path) -> None:
    name = optimizer_file(accelerator) or "optimizer.safetensors"
    path = directory / name
    with safe_open(path, "pt") as file:
        groups = json.loads(file.metadata()["param_groups"])
    state: dict[int, dict] = {}
    for key, value in load_file(path).items():
        index, field = key.split(".", 1)
        state.setdefault(int(index), {})[field] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    rng = load_file(directory / "rng.safetensors")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


# --- the stage ---------------------------------------------------------------------------------
class Stop:
    """SIGTERM (a preempted spot instance, `kill`) asks for a checkpoint and a clean exit after the current step."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum, frame):
        self.requested = True

    def agreed(self, accelerator: Accelerator) -> bool:
        if accelerator.num_processes == 1:
            return self.requested
        return bool(accelerator.reduce(torch.tensor(float(self.requested), device=accelerator.device), "sum").item())


def log_step(live: Live | None, record: dict) -> None:
    if live is None:
        return
    live.step = record["step"]
    for name, value in record.items():
        if name != "step" and value is not None:
            live.log_metric(name, value)


def train(params) -> dict:
    config = params.train
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    metadata, tokenizer, data, heldout = read_inputs(params)
    seq_len = metadata["seq_len"]
    plan = layout(config, seq_len, accelerator.num_processes, data.sequences)

    init = teacher_folder(config.init) if config.init else None
    shape = {"init_weights": data_fingerprint(Path(init))} if init else {"preset": config.model, **dataclasses.asdict(PRESETS[config.model])}
    run = {
        "model": {**shape, "vocab_size": len(tokenizer), "seq_len": seq_len},
        "data": {"tokens": data_fingerprint(TOKENS / "train")},
        "train": {key: value for key, value in config.model_dump().items() if key not in RESUMABLE_CHANGES},
        "code": {f"synthtrain/{path.name}": hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest() for path in CODE},
    }
    # Nothing on disk changes until the budget guard has accepted the run (accept()): a refused run leaves
    # models/checkpoint, models/current and metrics/train as they were.
    found = broadcast_object_list([find_checkpoint(run) if accelerator.is_main_process else None])[0]
    state = found.state
    if state:
        say(accelerator, found.why)
    elif found.directory is None:
        say(accelerator, f"{found.why}; starting from step 0")
    else:
        fate = "deleted (train.discard_checkpoint: true)" if config.discard_checkpoint else f"moved aside to {found.aside}/"
        say(accelerator, f"{found.why}; starting from step 0; {found.directory} is kept until the budget guard accepts this run, "
                         f"then {fate}")

    hardware = None
    if accelerator.is_main_process:  # a resumed run computes as it began, and on the same device keeps its peak
        same_device = state and state["hardware"]["device"] == device_name(accelerator.device) and not config.peak_tflops
        hardware = state["hardware"] if same_device else choose_precision(config, accelerator.device, state and state["hardware"]["precision"])
    hardware = broadcast_object_list([hardware])[0]
    bf16 = hardware["precision"] == "bf16"

    torch.manual_seed(config.seed)
    model = pretrained_model(init, seq_len, len(tokenizer)) if init else build_model(
        llama_config(config.model, len(tokenizer), seq_len, metadata["eos_id"], metadata["pad_id"]))
    name = f"{config.init} (init)" if init else f"{config.model} preset"
    parameters = parameter_count(model)
    flops = flops_per_token(model.config, parameters, seq_len)
    tied = model.config.tie_word_embeddings
    if state:
        load_checkpoint_weights(model, tied, found.directory)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    optimizer = adamw(model, config, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    if state:
        load_checkpoint_optimizer_and_rng(accelerator, optimizer, found.directory)

    step = state["step"] if state else 0
    compiling = compile_this_run(config, plan.steps - step)
    loss_sum_of = compiled(model, bf16) if compiling else LossSum(model, bf16)
    history: list[dict] = state["history"] if state else []
    seconds = state["seconds"] if state else {"wall": 0.0, "steps": 0.0, "timed_steps": 0, "warmup": 0.0}
    peak = hardware["peak_flops"] * accelerator.num_processes if hardware["peak_flops"] else None
    say(accelerator, f"{name}: {parameters:,} parameters, {flops / 1e6:.1f} MFLOP per token; {hardware['precision']} on "
                     f"{hardware['device']} x {accelerator.num_processes}, peak {hardware['peak_flops'] / 1e12 if peak else float('nan'):.3f} "
                     f"TFLOP/s each ({hardware['peak_source']}); {plan.steps:,} steps of {config.batch_tokens:,} tokens "
                     f"({plan.accumulation} x {config.micro_batch} sequences per process) over {data.sequences:,} sequences of {seq_len}")

    live = None  # dvclive's metrics/train, from the moment the run is accepted
    kept = {"step": state["step"], "in": found.directory} if state else None  # this run's checkpoint on disk

    def accept() -> None:
        """The budget guard accepted the run, or it is too short to time: from here on the stage writes."""
        nonlocal live
        if accelerator.is_main_process:
            if done := make_room(found, config.discard_checkpoint):
                say(accelerator, done)
            shutil.rmtree(LIVE, ignore_errors=True)
            live = Live(str(LIVE), dvcyaml=None, save_dvc_exp=False, report=None)
            for record in history:
                log_step(live, record)
        if kept:
            kept["in"] = CHECKPOINTS / "last"  # make_room restored a .previous
        accelerator.wait_for_everyone()

    def checkpoint() -> None:
        nonlocal kept
        state = {"step": step, "next_sequence": step * plan.sequences_per_step, "run": run,
                 "hardware": hardware, "seconds": seconds, "history": history}
        save_checkpoint(accelerator, model, optimizer, state, tied)
        kept = {"step": step, "in": CHECKPOINTS / "last"}

    stop = Stop()
    final = None  # the last held-out evaluation; the last step always has one
    guard_times: list[float] = []
    progress = tqdm(total=plan.steps, initial=step, desc="train", unit="step", disable=not accelerator.is_main_process, file=sys.stderr)
    session_start = time.perf_counter() - seconds["wall"]
    # the guard times guard_steps steps after a warm-up one; a run with fewer steps left is accepted at once
    accepted = plan.steps - step <= config.guard_steps
    if accepted:
        accept()
    try:
        while step < plan.steps:
            lr = learning_rate(step, plan.steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            started = time.perf_counter()
            try:
                loss, grad_norm = train_step(model, optimizer, accelerator, data, plan, step, config.micro_batch, loss_sum_of, config.grad_clip)
            except NonFiniteLoss as error:
                last = f"the checkpoint of step {kept['step']} in {kept['in']} is kept" if kept else "no checkpoint of this run was written yet"
                raise StageError(f"{error} at step {step + 1}: training stopped; {last}. Lower train.lr or raise train.warmup_steps "
                                 "(a changed param starts afresh)") from None
            elapsed = time.perf_counter() - started
            # a session's first step warms up (and compiles): its time is kept apart from the step speed
            warming_up = not guard_times
            seconds["warmup" if warming_up else "steps"] += elapsed
            seconds["timed_steps"] += 0 if warming_up else 1
            step += 1
            tokens_per_s = config.batch_tokens / elapsed
            record = {"step": step, "train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                      "train/tokens_per_s": tokens_per_s, "train/mfu": flops * tokens_per_s / peak if peak else None}  # fmt: skip
            if step % config.eval_every == 0 or step == plan.steps:
                final = evaluate(model, heldout, config, accelerator, bf16)
                record["heldout/loss"] = final.get("all")
                if accelerator.is_main_process and step < plan.steps:
                    sample_peak(hardware, accelerator.device, config)
            history.append(record)
            log_step(live, record)
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)

            guard_times.append(elapsed)
            if not accepted and len(guard_times) == config.guard_steps + 1:
                # every process decides on the main process's times, so that all refuse or none
                times, so_far = broadcast_object_list([guard_times[1:], time.perf_counter() - session_start])
                check_budget(accelerator, config, plan, step, times, so_far)
                accept()
                accepted = True
            seconds["wall"] = time.perf_counter() - session_start
            stopping = stop.agreed(accelerator)
            if accepted and (step % config.checkpoint_every == 0 or step == plan.steps or stopping):
                checkpoint()
            if stopping and not accepted:
                raise StageError(f"stopped by SIGTERM after step {step}, before the budget guard's estimate: nothing was written "
                                 f"(models/checkpoint is as it was); re-run to start again")
            if stopping:
                raise StageError(f"stopped by SIGTERM after step {step}; the checkpoint is in {CHECKPOINTS}/last: re-run to resume")
    except RuntimeError as error:
        if is_out_of_memory(error):
            raise StageError(out_of_memory_advice(config, error)) from None
        raise
    finally:
        progress.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # past the loop, SIGTERM ends the process at once again

    if final is None:  # resumed from the last step's checkpoint: nothing evaluated in this session
        final = evaluate(model, heldout, config, accelerator, bf16)
    if accelerator.is_main_process:
        hardware = hardware | final_peak(hardware, accelerator.device, config)
        if hardware.get("peak_drift", 0) > PEAK_DRIFT:
            say(accelerator, f"warning: the {hardware['precision']} matmul peak was {hardware['peak_tflops_start']:.3f} TFLOP/s at start-up and "
                             f"{hardware['peak_tflops_end']:.3f} at the end ({hardware['peak_drift']:.0%} apart): another job shared the cores "
                             "during one of them; MFU divides by the larger")
    weights = accelerator.get_state_dict(model)
    summary = summarise(config, plan, history, seconds, final, parameters, flops, hardware, accelerator.num_processes, data, seq_len,
                        compiling)
    summary["init"] = config.init
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), weights, tokenizer, metadata)
        live.summary.update(summary)
        live.make_summary()
        live.end()
    accelerator.wait_for_everyone()  # gloo's teardown hangs a process whose peer has already left
    accelerator.end_training()
    return summary if accelerator.is_main_process else None


def check_budget(accelerator: Accelerator, config: Train, plan: Layout, step: int, step_times: list[float], elapsed: float) -> None:
    """Stop when the run, at the rate of the timed steps, would take longer than max_hours or cost more than budget_usd."""
    per_step = sum(step_times) / len(step_times)
    hours = (elapsed + per_step * (plan.steps - step)) / 3600
    cost = hours * accelerator.num_processes * config.price_per_hour
    estimate = (f"about {hours:.2f} h on {accelerator.num_processes} device(s), ${cost:.2f} at ${config.price_per_hour:.2f} per device-hour "
                f"({plan.steps:,} steps x {config.batch_tokens:,} tokens at {config.batch_tokens / per_step:,.0f} tokens/s, "
                f"timed over {len(step_times)} steps)")
    over = [limit for limit, exceeded in (("train.max_hours", hours > config.max_hours), ("train.budget_usd", cost > config.budget_usd)) if exceeded]
    if over and not config.over_budget:
        raise StageError(f"estimated {estimate}, over {' and '.join(over)} ({config.max_hours} h, ${config.budget_usd}): lower "
                         "train.tokens or pick a smaller train.model, raise the limit, or set train.over_budget: true to run anyway")
    say(accelerator, f"estimated {estimate}{' (over budget, allowed by train.over_budget)' if over else ''}")


def summarise(config: Train, plan: Layout, history: list[dict], seconds: dict, heldout: dict, parameters: int, flops: float,
              hardware: dict, processes: int, data: TokenSet, seq_len: int, compiling: bool) -> dict:
    tokens = plan.steps * config.batch_tokens
    if seconds["timed_steps"]:
        tokens_per_s = seconds["timed_steps"] * config.batch_tokens / seconds["steps"]
    else:  # every step was a session's first
        tokens_per_s = tokens / seconds["warmup"]
    peak = hardware["peak_flops"]
    device_hours = seconds["wall"] * processes / 3600
    datasheet = hardware.get("datasheet_peak_flops")
    measurement = {key: hardware[key] for key in ("cpu", "cpu_flags", "cores", "peak_method", "peak_tflops_start", "peak_tflops_end",
                                                  "peak_drift", "peak_tflops_this_run", "peak_measurements", "peak_tflops_recorded_before",
                                                  "matmul_tflops", "datasheet_source") if key in hardware}  # fmt: skip
    return {
        "model": config.model, "parameters": parameters, "flops_per_token": flops, "precision": hardware["precision"],
        "device": hardware["device"], "processes": processes, "peak_tflops": peak / 1e12 if peak else None,
        "peak_source": hardware["peak_source"], **measurement,
        "datasheet_peak_tflops": datasheet / 1e12 if datasheet else None,
        "mfu_vs_datasheet": flops * tokens_per_s / (datasheet * processes) if datasheet else None,
        "steps": plan.steps, "tokens": tokens, "epochs": round(tokens / (data.sequences * seq_len), 4),
        "train_loss": sum(r["train/loss"] for r in history[-LAST_STEPS:]) / len(history[-LAST_STEPS:]),
        "heldout_loss": heldout.get("all"), "heldout_by_source": {name: loss for name, loss in heldout.items() if name != "all"},
        "wall_time_s": round(seconds["wall"], 1), "warmup_s": round(seconds["warmup"], 3), "compiled": compiling,
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": flops * tokens_per_s / (peak * processes) if peak else None,
        "device_hours": round(device_hours, 5), "cost_usd": round(device_hours * config.price_per_hour, 4),
    }  # fmt: skip


def save_model(model, weights: dict, tokenizer, metadata: dict) -> None:
    """models/current: save_pretrained weights and config, the tokenizer and a generation config that stops at a turn's end.
    Written whole into a temporary directory that replaces the old model when the stage succeeds."""
    model.config.use_cache = True  # off for training; generation wants its KV cache
    end_of_turn = tokenizer.get_vocab().get("<|im_end|>")  # a fine-tuned model's own template may close turns otherwise
    with output_directory(OUTPUT) as directory:
        model.save_pretrained(directory, state_dict=weights)
        tokenizer.save_pretrained(directory)
        GenerationConfig(eos_token_id=sorted({metadata["eos_id"], end_of_turn} - {None}), pad_token_id=metadata["pad_id"],
                         max_new_tokens=256).save_pretrained(directory)  # fmt: skip
