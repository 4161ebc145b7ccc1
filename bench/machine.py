"""The machine a benchmark ran on, and the results file every benchmark writes.

``write_results(name, figures, settings)`` writes ``bench/results/<name>.json``:
the benchmark's name, its command line, ``machine()``, the settings it ran with
and the figures it printed. ``python -m bench.report`` builds docs/benchmarks.md
from these files.
"""

import datetime
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

from synthtrain.hardware import cpu_info

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent


def machine() -> dict:
    """CPU model, the bf16-relevant flags present, usable cores, torch, GPU, Python, date (UTC)."""
    cpu = cpu_info()
    return {
        "cpu": cpu["cpu"],
        "arch": platform.machine(),
        "cpu_flags": cpu["cpu_flags"],
        "cores": cpu["cores"],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
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
