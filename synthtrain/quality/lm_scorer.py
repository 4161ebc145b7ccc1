"""The LM scorer: a real small language model (the teacher stage's SmolLM2-135M-Instruct
by default) reads each record and gives three numbers (docs/quality.md, "The LM scorer"):

- ``lm_perplexity``: the perplexity of the response (a conversation's last assistant turn,
  or a document) read alone, from a document start;
- ``lm_ifd``: the instruction-following difficulty of Cherry LLM (Li et al., 2023) and
  Superfiltering: loss(answer | instruction) / loss(answer), the instruction rendered
  with the model's chat template; near 1 or above, the instruction does not help
  predict the answer (they do not belong together); conversations only;
- ``lm_end_surprisal``: -log P(end | response), in nats, the end being the turn's end
  token after a reply and the end-of-text token after a document: high when the text
  was cut off. NaN when the response was cut to ``max_tokens``.

Records are sorted by length and packed into batches of about ``batch_tokens``
tokens, right-padded; the vocabulary projection runs only at the positions that are
scored. The model runs in bf16 where a timed forward pass says it is faster than
fp32 (``precision.faster_dtype``), so that machines without fast bf16 keep fp32.
"""

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from synthtrain.generation import load_model
from synthtrain.precision import PRECISIONS, faster_dtype
from synthtrain.tokens.chat import ENDOFTEXT, IM_END

log = logging.getLogger("quality")
DOCUMENT_START = ENDOFTEXT  # SmolLM2's document separator: the first token of a text has context


@dataclass
class Item:
    """One record as the LM reads it: ``prompt`` (None for a document) and the response."""

    prompt: str | None
    response: str


def items_of(messages: list | None, text: str | None) -> Item | None:
    """The response of a record and the conversation before it; None when there is no
    response to score (a conversation without an assistant turn, an empty text)."""
    if messages:
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or not messages[last]["content"].strip():
            return None
        return Item(prompt=messages[:last], response=messages[last]["content"])
    return Item(prompt=None, response=text) if text and text.strip() else None


class LMScorer:
    """``scorer(items) -> {"lm_perplexity", "lm_ifd", "lm_end_surprisal"}`` arrays, one value per item."""

    def __init__(self, model: str, max_tokens: int, batch_tokens: int, precision: str = "auto"):
        self.model, self.tokenizer = load_model(model, fix="run `dvc repro teacher`, or set quality.lm_scorer.model")
        self.max_tokens, self.batch_tokens = max_tokens, batch_tokens
        vocabulary = self.tokenizer.get_vocab()
        self.end_of_text = vocabulary.get(DOCUMENT_START, self.tokenizer.eos_token_id)  # also a document's start
        self.turn_end = vocabulary.get(IM_END, self.tokenizer.eos_token_id)
        self.device = next(self.model.parameters()).device
        example = torch.randint(0, len(self.tokenizer), (max(1, batch_tokens // max_tokens), max_tokens), device=self.device)
        self.dtype = faster_dtype(self.model, lambda: self.model(example)) if precision == "auto" else PRECISIONS[precision]
        self.model.to(self.dtype)
        self.tokens = 0
        self.seconds = 0.0

    def _sequences(self, items: list[Item]) -> list[tuple[list[int], int, int | None]]:
        """Per item and pass: (tokens, first scored position, end token or None when cut).
        Pass 0 reads the response alone, pass 1 after its prompt (conversations only)."""
        sequences = []
        for item in items:
            response = self.tokenizer(item.response, add_special_tokens=False)["input_ids"]
            end = self.turn_end if item.prompt is not None else self.end_of_text
            for prompt in ([self.end_of_text],) + ((self._prompt(item.prompt),) if item.prompt is not None else ()):
                room = self.max_tokens - len(prompt) - 1
                if room < 1:  # a prompt longer than max_tokens keeps only its last part
                    prompt, room = prompt[-(self.max_tokens // 2):], self.max_tokens - self.max_tokens // 2 - 1
                cut = len(response) > room
                sequences.append((prompt + response[:room] + ([] if cut else [end]), len(prompt), None if cut else end))
        return sequences

    def _prompt(self, messages: list) -> list[int]:
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def _losses(self, sequences) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss over each sequence's response tokens and the end token's surprisal (NaN when cut)."""
        loss, end_surprisal = np.full(len(sequences), np.nan), np.full(len(sequences), np.nan)
        order = np.argsort([len(s[0]) for s in sequences], kind="stable")
        batches, batch = [], []
        for index in order:
            if batch and (len(batch) + 1) * len(sequences[index][0]) > self.batch_tokens:
                batches.append(batch)
                batch = []
            batch.append(index)
        batches += [batch] if batch else []
        for batch in tqdm(batches, desc="LM scorer", unit="batch", mininterval=2, leave=False):
            width = max(len(sequences[i][0]) for i in batch)
            ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(sequences[i][0])] = torch.tensor(sequences[i][0])
                mask[row, : len(sequences[i][0])] = 1
            started = time.perf_counter()
            hidden = self.model.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            rows, columns = [], []
            for row, i in enumerate(batch):
                tokens, first, _ = sequences[i]
                rows += [row] * (len(tokens) - first)
                columns += range(first - 1, len(tokens) - 1)  # position p predicts token p + 1
            targets = torch.cat([torch.tensor(sequences[i][0][sequences[i][1]:]) for i in batch]).to(self.device)
            logits = self.model.lm_head(hidden[rows, columns]).float()
            token_loss = F.cross_entropy(logits, targets, reduction="none").cpu().numpy()
            self.seconds += time.perf_counter() - started
            self.tokens += int(mask.sum())
            start = 0
            for i in batch:
                tokens, first, end = sequences[i]
                scored = token_loss[start: start + len(tokens) - first]
                start += len(tokens) - first
                response = scored[:-1] if end is not None else scored
                loss[i] = response.mean() if len(response) else np.nan
                end_surprisal[i] = scored[-1] if end is not None else np.nan
        return loss, end_surprisal

    def __call__(self, items: list[Item | None]) -> dict[str, np.ndarray]:
        present = [i for i, item in enumerate(items) if item is not None]
        scores = {name: np.full(len(items), np.nan) for name in ("lm_perplexity", "lm_ifd", "lm_end_surprisal")}
        if not present:
            return scores
        chosen = [items[i] for i in present]
        sequences = self._sequences(chosen)
        loss, end_surprisal = self._losses(sequences)
        at = 0
        for index, item in zip(present, chosen):
            alone = loss[at]
            scores["lm_perplexity"][index] = math.exp(alone) if not np.isnan(alone) else np.nan
            if item.prompt is not None:
                conditioned = loss[at + 1]
                scores["lm_ifd"][index] = conditioned / alone if alone > 0 else np.nan
                scores["lm_end_surprisal"][index] = end_surprisal[at + 1]
                at += 2
            else:
                scores["lm_end_surprisal"][index] = end_surprisal[at]
                at += 1
        return scores

    def speed(self) -> dict:
        return {"precision": "bf16" if self.dtype == torch.bfloat16 else "fp32", "tokens": self.tokens,
                "seconds": round(self.seconds, 2), "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else None}
