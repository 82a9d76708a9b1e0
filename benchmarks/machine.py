"""The machine a benchmark ran on, recorded with its results (shared by every benchmark)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runs from a checkout without installing it
    sys.path.insert(0, str(REPO))

from utils.benchmark import synchronize  # noqa: E402  (re-exported for the benchmarks)

__all__ = ["cpu_model", "machine_info", "synchronize", "write_report"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """Date, CPU, threads, versions, device, load, speed-relevant environment, git commit."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "load_average_at_start": list(os.getloadavg())
        if hasattr(os, "getloadavg")
        else None,
        "environment": {  # variables that change how fast the same code runs
            name: value
            for name, value in sorted(os.environ.items())
            if name.startswith(
                ("MALLOC_", "OMP_", "MKL_", "KMP_", "LD_PRELOAD", "CUDA_")
            )
        },
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        info["git_commit"] = commit.stdout.strip() or None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "utils", "benchmarks"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        info["uncommitted_changes_in_utils_or_benchmarks"] = bool(status.stdout.strip())
    except OSError:
        info["git_commit"] = None
    return info


def write_report(report: dict, path: Path) -> Path:
    """Add the load average at the end to ``report["machine"]``, write it as JSON to ``path``."""
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_at_end"] = list(os.getloadavg())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return path
