"""The precision a model runs inference in: bf16 or fp32, whichever a timed pass
finds faster on this machine (``faster_dtype``). On CPUs with AVX512-BF16 or
AMX bf16 is 2-3x faster; on CPUs with neither it is slower, so it is measured,
never assumed. Used by the teacher's generation, the LM quality scorer and the
MiniLM encoder; training picks its precision from matmul peaks instead
(``hardware``), so the train stage does not depend on this module.
"""

import time
from collections.abc import Callable

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
BF16_MARGIN = 1.2  # bf16 is 2-3x faster where the CPU has AVX512-BF16 or AMX, and slower where it has neither


def precision_name(dtype: torch.dtype) -> str:
    return next(name for name, known in PRECISIONS.items() if known == dtype)


def faster_dtype(model: torch.nn.Module, forward: Callable[[], object], repeats: int = 2) -> torch.dtype:
    """bf16 or fp32, whichever runs ``forward()`` (a pass of ``model`` over a typical batch) faster,
    by the best of ``repeats`` timed calls after a warm-up one. bf16 must win by ``BF16_MARGIN``:
    where the two are close (tiny models) a coin-flip timing would make the same run's outputs
    differ from one try to the next. On a GPU: bf16 where it is supported. The model is left in fp32,
    with its weights as they were.

    The casts happen outside ``torch.inference_mode()``: parameters cast inside it become inference
    tensors, and SmolLM2's bf16 generation on those ran no faster than fp32, so the probe picked
    fp32 on an AVX512-BF16 EPYC where bf16 generates twice as fast (bench/generate_speed.py)."""
    if next(model.parameters()).device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    # a cast to bf16 and back rounds the weights: restored after, so a run that timed writes what one told its precision does
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        with torch.inference_mode():
            forward()  # warm-up: one-off kernel selection
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                forward()
                times.append(time.perf_counter() - started)
        seconds[dtype] = min(times)
    model.to(torch.float32)
    model.load_state_dict(weights)
    return torch.bfloat16 if seconds[torch.float32] > BF16_MARGIN * seconds[torch.bfloat16] else torch.float32
