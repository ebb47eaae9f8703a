"""Streaming storage for training patch embeddings (float16, bounded RAM).

PatchCore needs every training patch as a coreset candidate: 784 patches x 1024 dims per
224-pixel image, i.e. 3.2 MB per image in float32, 32 GB for a 10,000-image MIAD category.
``EmbeddingStore`` appends embeddings batch by batch as float16 to a flat file in the job's
scratch folder (``RunContext.workdir``; a private temp folder otherwise) and gives them back as
a read-only ``np.memmap``: the OS pages it in and out, so resident memory stays bounded by what
the coreset sampler reads at a time (one chunk), not by N. float16 keeps 3 significant digits,
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

    def array(self) -> np.ndarray:
        """All embeddings, [N, D] float16 (a read-only memmap once spilled)."""
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None
        if self.path is not None:
            return np.memmap(self.path, dtype=np.float16, mode="r", shape=(self.count, self.dim))
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
