"""The GPUs a run may use, found without touching CUDA in the run's own process.

The process that plans and supervises a run never initialises CUDA: a CUDA context in the
parent would sit on GPU 0 for the whole grid (hundreds of MB, and a busy GPU 0 for every job),
and a forked child cannot use CUDA after its parent did. So the GPUs are listed with
``nvidia-smi`` (a separate program), restricted to ``CUDA_VISIBLE_DEVICES`` when it is set, and
jobs see their GPU through their own ``CUDA_VISIBLE_DEVICES``. Where ``nvidia-smi`` is missing
(some containers), a short child Python process asks torch instead.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class GPU:
    index: int  # physical index (nvidia-smi's), what CUDA_VISIBLE_DEVICES names
    uuid: str = ""
    name: str = ""


def _query_nvidia_smi() -> Optional[list[GPU]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index,uuid,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3 and parts[0].isdigit():
            gpus.append(GPU(int(parts[0]), parts[1], parts[2]))
    return gpus


def _count_in_child() -> int:
    """``torch.cuda.device_count()`` in a throw-away process (CUDA stays out of this one)."""
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                             capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip() or 0)
    except (OSError, subprocess.SubprocessError, ValueError):
        return 0


@functools.lru_cache(maxsize=1)
def visible_gpus() -> tuple[GPU, ...]:
    """The GPUs this run may use, in ``CUDA_VISIBLE_DEVICES`` order when that is set."""
    listed = _query_nvidia_smi()
    if listed is None:
        return tuple(GPU(i) for i in range(_count_in_child()))
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return tuple(listed)
    chosen = []
    for item in (x.strip() for x in env.split(",") if x.strip()):
        match = [g for g in listed if str(g.index) == item or g.uuid == item or g.uuid.startswith(item)]
        if not match:
            break  # CUDA stops at the first invalid entry too
        chosen.append(match[0])
    return tuple(chosen)
