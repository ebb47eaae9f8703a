"""Streaming storage for training patch embeddings (float16, bounded RAM).

PatchCore needs every training patch as a coreset candidate: 784 patches x 1024 dims per
224-pixel image, i.e. 3.2 MB per image in float32, 32 GB for a 10,000-image MIAD category.
``EmbeddingStore`` appends embeddings batch by batch as float16 to a flat file in the job's
scratch folder (``RunContext.workdir``; a private temp folder otherwise) and gives them back as
a ``SpilledArray``: slicing or fancy-indexing it maps just the rows asked for, copies them and
unmaps again. (A single ``np.memmap`` over the whole file would keep every page it ever touched
mapped, and those pages count in the process's resident set: 16 GB for 10,000 images.) So
resident memory stays bounded by what the coreset sampler reads at a time (one chunk), not N. float16 keeps 3 significant digits,
far below the spread of patch distances that the coreset and nearest-neighbour steps compare.
Small sets (below ``spill_bytes``) stay in RAM as float16 chunks.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch


class EmbeddingStore:
    """Append [n, D] embeddings; read back as one [N, D] float16 array (memmap when spilled)."""

    def __init__(self, dim: int, *, workdir: Optional[str] = None, spill_bytes: int = 256 * 2**20, name: str = "embeddings"):
        self.dim = int(dim)
        self.count = 0
        self.spill_bytes = int(spill_bytes)
        self._workdir = workdir
        self._own_dir: Optional[str] = None
        self._name = name
        self._chunks: list[np.ndarray] = []
        self._file = None
        self.path: Optional[Path] = None

    @property
    def nbytes(self) -> int:
        return self.count * self.dim * 2

    @property
    def spilled(self) -> bool:
        return self.path is not None

    def _open_file(self) -> None:
        folder = self._workdir
        if not folder:
            self._own_dir = tempfile.mkdtemp(prefix="adbench-bank-")
            folder = self._own_dir
        os.makedirs(folder, exist_ok=True)
        self.path = Path(folder) / f"{self._name}-{os.getpid()}-{id(self)}.f16"
        self._file = open(self.path, "wb")
        for chunk in self._chunks:
            self._file.write(chunk.tobytes())
        self._chunks = []

    def append(self, x: torch.Tensor | np.ndarray) -> None:
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float16).numpy()
        x = np.ascontiguousarray(x, dtype=np.float16).reshape(-1, self.dim)
        self.count += x.shape[0]
        if self._file is None and self.nbytes > self.spill_bytes:
            self._open_file()
        if self._file is not None:
            self._file.write(x.tobytes())
        else:
            self._chunks.append(x)

    def array(self):
        """All embeddings, [N, D] float16: an ndarray, or a ``SpilledArray`` once spilled."""
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None
        if self.path is not None:
            return SpilledArray(self.path, self.count, self.dim)
        if not self._chunks:
            return np.empty((0, self.dim), dtype=np.float16)
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0]

    def close(self) -> None:
        """Delete the spill file (and the private temp folder)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None and self.path.exists():
            self.path.unlink()
        if self._own_dir:
            shutil.rmtree(self._own_dir, ignore_errors=True)
        self._chunks = []


class SpilledArray:
    """Read-only [N, D] float16 rows in a flat file; indexing returns in-memory copies.

    Supports ``a[i:j]`` (slices with step 1) and ``a[int_array]``; each access maps only the
    span it needs and unmaps it before returning, so pages never pile up in the resident set.
    """

    dtype = np.dtype(np.float16)

    def __init__(self, path: Path, count: int, dim: int):
        self.path = Path(path)
        self.shape = (int(count), int(dim))
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, start: int, stop: int) -> np.ndarray:
        n, d = self.shape
        start, stop = max(0, start), min(n, stop)
        if stop <= start:
            return np.empty((0, d), dtype=np.float16)
        view = np.memmap(self.path, dtype=np.float16, mode="r", offset=start * d * 2, shape=(stop - start, d))
        out = np.array(view)
        del view
        return out

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("SpilledArray supports step-1 slices only")
            return self._rows(start, stop)
        idx = np.asarray(key, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return np.empty((0, self.shape[1]), dtype=np.float16)
        if idx.min() < 0 or idx.max() >= self.shape[0]:
            raise IndexError("SpilledArray index out of range")
        order = np.argsort(idx, kind="stable")
        out = np.empty((idx.size, self.shape[1]), dtype=np.float16)
        span = 65536  # rows mapped at a time
        pos = 0
        sorted_idx = idx[order]
        while pos < sorted_idx.size:
            lo = int(sorted_idx[pos])
            end = int(np.searchsorted(sorted_idx, lo + span, side="left"))
            block = self._rows(lo, int(sorted_idx[end - 1]) + 1)
            out[order[pos:end]] = block[sorted_idx[pos:end] - lo]
            pos = end
        return out
