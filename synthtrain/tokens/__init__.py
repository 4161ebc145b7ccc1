"""Tokens: the chat template (``chat``), BPE training (``bpe``), the token API
every later stage uses (``encoding``) and packing into sequences (``packing``)."""

import os
from pathlib import Path

TOKENIZER = Path("models/tokenizer")  # the tokenizer stage's output, which every later stage loads

# Set before tokenizers first starts its thread pool (at the first batch call): on this machine tokenizers 0.23
# encoded on one thread unless RAYON_NUM_THREADS was set (0.55M against 1.1M
# tokens/s on 2 cores). Results do not depend on the thread count.
os.environ.setdefault("RAYON_NUM_THREADS", str(len(os.sched_getaffinity(0))))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
