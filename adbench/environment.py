"""Facts about where a job ran: package versions, git commit, host.

Every record carries them so a number in a table can be traced to the code and machine that
produced it. Collected once per process (they do not change during a run) and never raise:
a missing package or a checkout without git yields ``None``, not a failed job.
"""
from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]

#: distributions whose version goes into every record (import name -> distribution name)
_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "faiss": "faiss-cpu",
    "numpy": "numpy",
    "adbench": "adbench",
}


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name, dist in _PACKAGES.items():
        out[name] = _dist_version(dist, name)
    return out


def _dist_version(dist: str, module: str) -> Optional[str]:
    candidates = [dist] + (["faiss-gpu", "faiss-gpu-cu12", "faiss"] if module == "faiss" else [])
    for candidate in candidates:
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    if module == "adbench":
        import adbench

        return getattr(adbench, "__version__", None)
    return None


@functools.lru_cache(maxsize=1)
def git_commit() -> Optional[str]:
    """Commit of the adbench checkout, with ``-dirty`` when tracked files are modified."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        commit = head.stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def host() -> dict[str, object]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        # the GPU a job ran on is the worker's to say (record["gpu"]); asking torch here would
        # initialise CUDA in the run's own process and name GPU 0 whatever the job used
        "gpu_name": None,
    }


def _cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def rss_mb() -> float | None:
    """Current resident memory of this process in MiB (None where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    ``VmHWM`` from /proc starts afresh in a new process (at fork it is the current RSS, at exec
    it is reset), so a job process reports its own peak, not its parent's (``ru_maxrss``
    survives exec on Linux and would report the parent's peak when larger).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
