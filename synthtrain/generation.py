"""Loading the model under evaluation, and batched chat generation.

Every generation of the eval stage goes through ``Generator``: prompts are user
turns rendered with the model's chat template, left-padded into batches of
similar length and decoded with the KV cache, greedy unless the params ask for
sampling (then seeded per batch). A reply ends at the generation config's end
tokens or at ``max_new_tokens``.
"""

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from synthtrain.params import EvalGeneration, StageError
from synthtrain.precision import PRECISIONS, faster_dtype, precision_name
from synthtrain.teacher import teacher_folder

log = logging.getLogger("eval")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct"


def load_model(path: str | Path, fix: str = "run `dvc repro train`, or point the eval stage at a save_pretrained directory with --model"
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, loaded offline, in eval mode: a teacher name (its folder
    under models/teachers), a save_pretrained directory, or a hub id already in the local cache.
    ``fix`` tells the user what to do."""
    path = teacher_folder(str(path))
    local = Path(path)
    is_hub_id = not local.exists() and HUB_ID.fullmatch(str(path)) is not None
    if not is_hub_id and not (local / "config.json").is_file():
        raise StageError(f"{path} holds no model (no config.json): {fix}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        if is_hub_id:
            raise StageError(f"{path} holds no model: no such directory, and no hub model of that id in the local cache; {fix}") from None
        raise StageError(f"{path} is not a causal language model that transformers can load offline ({exc}); {fix}") from None
    if not tokenizer.chat_template or tokenizer.eos_token_id is None:
        raise StageError(f"{path}: the tokenizer has no chat template or no eos token; {fix}")
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise StageError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{model.get_input_embeddings().num_embeddings} embeddings; the two do not belong together")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def use_faster_precision(model: PreTrainedModel, batch_size: int, precision: str = "auto") -> str:
    """Casts ``model`` to bf16 or fp32, whichever generates faster here (``precision.faster_dtype``,
    timed on a batch of ``batch_size`` 32-token prompts decoding 8 tokens each), or to ``precision``
    when it names one; returns its name. For a teacher writing data: the eval stage keeps fp32 on
    the CPU, so that the scores of models evaluated on different machines compare."""
    if precision in PRECISIONS:
        model.to(PRECISIONS[precision])
        return precision
    prompts = torch.randint(0, model.config.vocab_size, (batch_size, 32), generator=torch.Generator().manual_seed(0)).to(model.device)

    def decode():
        model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), min_new_tokens=8, max_new_tokens=8,
                       do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=0)

    dtype = faster_dtype(model, decode)
    model.to(dtype)
    return precision_name(dtype)


@dataclass
class Reply:
    text: str
    stopped: bool  # ended at an end token, not at the max_new_tokens cap


class Generator:
    """``generator(prompts) -> replies``, one Reply per prompt, in order; counts
    what it generated so the stage can report items and tokens per second."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: EvalGeneration, seed: int):
        self.model, self.tokenizer, self.config, self.seed = model, tokenizer, config, seed
        end = model.generation_config.eos_token_id
        self.end_ids = sorted(set([end] if isinstance(end, int) else (end or [])) | {tokenizer.eos_token_id})
        self.context = getattr(model.config, "max_position_embeddings", None)
        self.items = self.new_tokens = self.batches = 0
        self.seconds = 0.0

    def __call__(self, prompts: list[str], desc: str = "generating") -> list[Reply]:
        """Replies to ``prompts``, each the user turn of a new conversation."""
        return self.complete([self.chat_prompt(p) for p in prompts], desc)

    def chat_prompt(self, user: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)

    def reseed(self, seed: int) -> None:
        """Sampling from here on depends on ``seed`` and the batch number only (a resumed shard repeats itself)."""
        self.seed, self.batches = seed, 0

    def complete(self, texts: list[str], desc: str = "generating", stop: list[str] | None = None, min_new_tokens: int = 0,
                 max_new_tokens: int | None = None) -> list[Reply]:
        """Continuations of already rendered texts (special tokens included), in order;
        a continuation also ends at any of the ``stop`` strings (kept in its text), not at
        an end token before ``min_new_tokens``, and at ``max_new_tokens`` (default: the config's)."""
        ids = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
        replies: list[Reply | None] = [None] * len(ids)
        size = self.config.batch_size
        for start in tqdm(range(0, len(order), size), desc=desc, unit="batch", leave=False):
            batch = order[start : start + size]
            for i, reply in zip(batch, self._generate([ids[i] for i in batch], stop, min_new_tokens, max_new_tokens)):
                replies[i] = reply
        return replies

    def _generate(self, batch: list[list[int]], stop: list[str] | None, min_new_tokens: int, max_new_tokens: int | None) -> list[Reply]:
        longest = max(map(len, batch))
        max_new = max_new_tokens or self.config.max_new_tokens
        if self.context:  # a prompt longer than the context keeps its end (where the question and the turn start are)
            keep = max(1, self.context - max_new)
            batch = [ids[-keep:] for ids in batch]
            longest = min(longest, keep)
            max_new = max(1, min(max_new, self.context - longest))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (longest - len(ids)) + ids for ids in batch])
        attention = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in batch])
        sampling = ({"do_sample": True, "temperature": self.config.temperature, "top_p": self.config.top_p}
                    if self.config.do_sample else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
        if stop:
            sampling.update(stop_strings=stop, tokenizer=self.tokenizer)
        if min_new_tokens:
            sampling.update(min_new_tokens=min(min_new_tokens, max_new))
        torch.manual_seed(self.seed + self.batches)  # sampling depends on the batch, not on what ran before
        device = self.model.device
        started = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            output = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), max_new_tokens=max_new,
                                         eos_token_id=self.end_ids, pad_token_id=pad, use_cache=True, **sampling)
        self.seconds += time.perf_counter() - started
        self.batches += 1
        replies = []
        for row in output[:, longest:].tolist():
            ends = [i for i, token in enumerate(row) if token in self.end_ids]
            generated = row[: ends[0] + 1] if ends else row
            self.new_tokens += len(generated)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            replies.append(Reply(text.strip(), stopped=bool(ends) or any(s in text for s in stop or ())))
        self.items += len(batch)
        return replies

    def speed(self) -> dict:
        return {"generation_items": self.items, "generation_tokens": self.new_tokens,
                "generation_items_per_s": round(self.items / max(self.seconds, 1e-9), 2),
                "generation_tokens_per_s": round(self.new_tokens / max(self.seconds, 1e-9), 1)}
