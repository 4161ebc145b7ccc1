"""What the machine is and how fast it can multiply: the CPU model and its
bf16-relevant flags (``cpu_info``), the matmul peak of a precision measured so
that a busy moment does not set it (``matmul_peak``), and the datasheet peaks
of known GPUs and CPUs (``datasheet_peak``). The train stage divides by these
for MFU; the benchmarks name the machine with them.

Why the measured peak is a best-of over sizes and a window: one 2048² matmul
timed while another job holds a core reads half the machine's speed, and the
MFU computed from it doubles (issue: training throughput). The train stage
measures at start-up, at each held-out evaluation and at the end of training,
and divides by the best of these and of the best this machine has measured
before (``recorded_peak``: a small JSON file in the user's cache directory,
one entry per CPU model, flags, cores, torch version and precision), so runs
on one machine share one peak (docs/training.md, "MFU").
"""

import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; the first
# name contained in torch.cuda.get_device_name() wins, so longer names go first.
GPU_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.1), ("L40", 181.0),
    ("L4", 121.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0), ("RTX A6000", 154.8),
)  # fmt: skip
# Memory of the same GPUs, GiB as their datasheets give it, for the experiments' memory check
# (synthtrain/experiments.py); an A100 is taken as its 40 GB model: a run that fits it fits the 80 GB one.
GPU_MEMORY_GIB = (
    ("H100 PCIe", 80), ("H100", 80), ("H200", 141), ("A100", 40), ("L40S", 48), ("L40", 48),
    ("L4", 24), ("RTX 4090", 24), ("RTX 3090", 24), ("RTX A6000", 48),
)  # fmt: skip
# CPUs whose model name says the microarchitecture and clock, TFLOP/s per core at
# the base clock: Intel AMX does 1,024 bf16 FLOP per cycle per core and two
# AVX-512 FMA units 64 fp32 FLOP (Intel's optimization manual). A virtual
# machine that shows only "Intel(R) Xeon(R) Processor" is not in the table.
CPU_PEAK_TFLOPS_PER_CORE = (
    # (name contained in the model name, base GHz, {precision: TFLOP/s per core})
    ("Xeon(R) Platinum 8488C", 2.4, {"bf16": 1024 * 2.4e-3, "fp32": 64 * 2.4e-3}),
    ("Xeon(R) Platinum 8480", 2.0, {"bf16": 1024 * 2.0e-3, "fp32": 64 * 2.0e-3}),
    ("Xeon(R) Platinum 8580", 2.0, {"bf16": 1024 * 2.0e-3, "fp32": 64 * 2.0e-3}),
    ("Xeon(R) Platinum 8592+", 1.9, {"bf16": 1024 * 1.9e-3, "fp32": 64 * 1.9e-3}),
)
# The CPU flags that decide bf16 speed on a CPU: AMX tiles, AVX512-BF16, AVX-512, AVX2.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")
# Square sizes of the peak measurement: small, medium and large enough for the
# fastest blocking of each library; each timed for at least PEAK_SECONDS.
PEAK_SIZES = (1024, 2048, 4096)
PEAK_SECONDS = 0.5
PEAK_METHOD = (f"best single matmul over squares {', '.join(f'{size}²' for size in PEAK_SIZES)}, each timed for {PEAK_SECONDS} s "
               "(at least 3 runs); no larger square once one matmul outlasts that")
PEAK_DRIFT = 0.10  # start and end peaks further apart than this: the machine was busy for one of them


def cpu_info() -> dict:
    """CPU model name (/proc/cpuinfo, else lscpu), the bf16-relevant flags it has and the usable cores."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    if model is None or not flags:
        try:
            output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            output = ""
        for line in output.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and model is None:
                model = value.strip()
            elif key.strip() == "Flags" and not flags:
                flags = set(value.split())
    return {"cpu": model or platform.processor() or platform.machine(), "cpu_flags": [flag for flag in BF16_FLAGS if flag in flags],
            "cores": len(os.sched_getaffinity(0))}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _best_matmul_seconds(device: torch.device, dtype: torch.dtype, size: int, seconds: float) -> float:
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: allocation, library dispatch, AMX tile set-up
    best, start, runs = math.inf, time.perf_counter(), 0
    while time.perf_counter() - start < seconds or runs < 3:
        begun = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best, runs = min(best, time.perf_counter() - begun), runs + 1
    return best


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes=PEAK_SIZES, seconds: float = PEAK_SECONDS) -> float:
    """FLOP/s of the fastest single square matmul in dtype over `sizes`: the peak the
    machine reaches when nothing interrupts it, not an average over interruptions.
    Sizes are tried smallest first, and none larger once one matmul outlasts `seconds`: on a
    CPU without bf16 instructions bf16 is emulated, far slower than fp32: the 4096² one
    alone took minutes, timed four times, before every training run (AMD EPYC with AVX2 only)."""
    peak = 0.0
    for size in sorted(sizes):
        best = _best_matmul_seconds(device, dtype, size, seconds)
        peak = max(peak, 2 * size**3 / best)
        if best > seconds:
            break
    return peak


def matmul_peaks(device: torch.device) -> dict[str, float]:
    """Measured peak FLOP/s of each precision the CPU can train in."""
    return {"bf16": matmul_peak(device, torch.bfloat16), "fp32": matmul_peak(device, torch.float32)}


def datasheet_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(FLOP/s of the device's datasheet, its source), or (None, why not) for a device not in the tables."""
    if device.type == "cuda":
        name = device_name(device)
        known = next((tflops for key, tflops in GPU_PEAK_TFLOPS if key in name), None)
        return (known * 1e12, f"datasheet bf16 peak of {name}") if known else (None, f"{name} is not in GPU_PEAK_TFLOPS")
    cpu = cpu_info()
    return cpu_datasheet_peak(cpu["cpu"], cpu["cores"], precision)


def cpu_datasheet_peak(model: str, cores: int, precision: str) -> tuple[float | None, str]:
    for key, ghz, per_core in CPU_PEAK_TFLOPS_PER_CORE:
        if key in model:
            return per_core[precision] * cores * 1e12, f"datasheet {precision} peak of {key}, {cores} cores at {ghz} GHz base"
    return None, f"{model!r} is not in CPU_PEAK_TFLOPS_PER_CORE"


def peak_drift(start: float, end: float) -> float:
    """How far apart two measurements of one peak are, as a share of the larger."""
    return abs(start - end) / max(start, end)


def peak_record_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "synth-train" / "matmul_peaks.json"


def machine_key(precision: str) -> str:
    cpu = cpu_info()
    return f"{cpu['cpu']} | {' '.join(cpu['cpu_flags'])} | {cpu['cores']} cores | torch {torch.__version__} | {precision}"


def recorded_peak(precision: str) -> float | None:
    """The best peak (FLOP/s) this machine has measured for precision, None when none is recorded."""
    try:
        return json.loads(peak_record_path().read_text()).get(machine_key(precision))
    except (OSError, ValueError, AttributeError):
        return None


def record_peak(precision: str, flops: float) -> None:
    """Keep flops as this machine's best when it is better; a cache that cannot be written is skipped."""
    path = peak_record_path()
    try:
        records = json.loads(path.read_text()) if path.is_file() else {}
        key = machine_key(precision)
        if flops <= records.get(key, 0.0):
            return
        records[key] = flops
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        partial.write_text(json.dumps(records, indent=1, sort_keys=True))
        partial.replace(path)
    except (OSError, ValueError, AttributeError):
        pass
