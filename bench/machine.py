"""The machine a benchmark ran on, and the results file every benchmark writes.

``write_results(name, figures, settings)`` writes ``bench/results/<name>.json``:
the benchmark's name, its command line, ``machine()``, the settings it ran with
and the figures it printed. ``python -m bench.report`` builds docs/benchmarks.md
from these files.
"""

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent
# The CPU flags that decide bf16 speed on a CPU: AMX tiles, AVX512-BF16, AVX-512, AVX2.
FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")


def _cpuinfo() -> tuple[str | None, set[str]]:
    """CPU model name and flags from /proc/cpuinfo, else from lscpu."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model is None:
                model = value.strip()
            elif key == "flags" and not flags:
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
    return model or platform.processor() or platform.machine(), flags


def machine() -> dict:
    """CPU model, the bf16-relevant flags present, usable cores, torch, GPU, Python, date (UTC)."""
    model, flags = _cpuinfo()
    try:
        import torch
    except ImportError:  # a benchmark without torch still describes its machine
        torch = None
    return {
        "cpu": model,
        "arch": platform.machine(),
        "cpu_flags": [flag for flag in FLAGS if flag in flags],
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__ if torch else None,
        "torch_threads": torch.get_num_threads() if torch else None,
        "gpu": torch.cuda.get_device_name() if torch and torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def command() -> str:
    """This process's command line, as typed from the repository root."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:  # python -m bench.<name>
        head = ["python", "-m", spec.name]
    else:
        script = Path(sys.argv[0]).resolve()
        head = ["python", str(script.relative_to(REPO)) if script.is_relative_to(REPO) else sys.argv[0]]
    return shlex.join(head + sys.argv[1:])


def _plain(value):
    """JSON-ready: numpy scalars to Python, floats to 6 significant digits."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_results(name: str, figures: dict, settings: dict) -> Path:
    """Write bench/results/<name>.json and return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"bench": name, "command": command(), "machine": machine(), "settings": _plain(settings), "figures": _plain(figures)}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"results: {path.relative_to(REPO)}")
    return path
