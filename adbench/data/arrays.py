"""One large array in RAM when it fits the job's budget, else memory-mapped on disk.

The disk copy lives in the job's private work folder (``RunContext.workdir``, under
``--workdir``), which the harness removes when the job ends, so a spilled cache never outlives
its job. Either way the caller gets a torch tensor: a memory-mapped one reads its rows from the
page cache on indexing, and forked DataLoader workers share it without copying.
"""
from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

_NUMPY = {torch.uint8: np.uint8, torch.float16: np.float16, torch.float32: np.float32}


@dataclass
class Placed:
    """An allocated array and where it lives (``ram`` or the spill file's path)."""

    tensor: torch.Tensor
    where: str

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()

    def describe(self) -> dict:
        """For a record: RAM or disk, and the bytes (not the spill file's path: it is in the
        job's work folder and gone with the job)."""
        return {"where": "ram" if self.where == "ram" else "disk", "bytes": self.nbytes}


def ram_or_disk(shape: tuple[int, ...], dtype: torch.dtype, budget_bytes: int, workdir: Optional[str],
                name: str) -> Placed:
    """A zero-filled ``shape`` tensor of ``dtype``: in RAM if it takes at most ``budget_bytes``,
    else backed by ``<workdir>/<name>.bin`` (the system temp folder without a workdir)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes <= budget_bytes:
        return Placed(torch.zeros(shape, dtype=dtype), "ram")
    folder = workdir or tempfile.gettempdir()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.bin")
    array = np.lib.format.open_memmap(path, mode="w+", dtype=_NUMPY[dtype], shape=shape)
    reserve_blocks(path, nbytes, name)
    return Placed(torch.from_numpy(array), path)


def reserve_blocks(path: str, nbytes: int, name: str) -> None:
    """Give the memory-mapped file its disk blocks now. A memory map of a sparse file that later
    finds the disk full kills the job with SIGBUS and no word; reserving up front turns that
    into one "disk full" line (``adbench.errors.DiskFull``) before any work is done."""
    from adbench.errors import DiskFull
    from adbench.files import size_text

    folder = os.path.dirname(path)
    free = shutil.disk_usage(folder).free
    size = os.path.getsize(path)
    problem = None
    if free < nbytes:
        problem = f"only {size_text(free)} free"
    elif hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                problem = f"only {size_text(shutil.disk_usage(folder).free)} free"
            # other errors (a file system without fallocate): the free-space check above stands
        finally:
            os.close(fd)
    if problem:
        os.remove(path)
        raise DiskFull(f"disk full: the {name} cache needs {size_text(nbytes)} in {folder} (--workdir), {problem}; "
                       f"give --workdir a larger disk, or --cache-gb more memory")
