"""Exact nearest-neighbour search over a memory bank with faiss (PatchCore, ToCoAD).

``NearestNeighbours(bank)`` builds an exact L2 index (``IndexFlatL2``): on the CPU by default,
on the GPU when the installed faiss has GPU support (faiss-gpu) and the requested device is
CUDA. ``search(queries, k)`` runs in chunks of ``chunk`` queries so that the distance buffer
faiss allocates stays bounded whatever the number of test patches, and returns Euclidean (not
squared) distances as float32 tensors plus int64 indices.

faiss's own OpenMP pool is set to torch's thread count, so the harness's thread budget (2 on
the shared CI box) also holds inside faiss.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def _faiss():
    import faiss  # lazy: faiss pulls in its SWIG module and OpenMP at import

    return faiss


def faiss_has_gpu() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0


def _as_f32(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


class NearestNeighbours:
    """Exact k-NN over ``bank`` ([M, D]); GPU index when possible and asked for."""

    def __init__(self, bank, *, device: Optional[torch.device | str] = None, chunk: int = 16384):
        faiss = _faiss()
        data = _as_f32(bank)
        if data.ndim != 2 or data.shape[0] == 0:
            raise ValueError(f"memory bank must be a non-empty [M, D] array, got shape {data.shape}")
        self.dim = int(data.shape[1])
        self.size = int(data.shape[0])
        self.chunk = int(chunk)
        faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
        index = faiss.IndexFlatL2(self.dim)
        self.on_gpu = False
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "cuda" and faiss_has_gpu():
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, device.index or 0, index)
            self.on_gpu = True
        index.add(data)
        self.index = index

    def search(self, queries, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances [Q, k] (Euclidean, float32) and indices [Q, k] (int64) of the k nearest."""
        q = _as_f32(queries)
        k = int(min(k, self.size))
        dist = np.empty((q.shape[0], k), dtype=np.float32)
        idx = np.empty((q.shape[0], k), dtype=np.int64)
        for s in range(0, q.shape[0], self.chunk):
            d, i = self.index.search(q[s : s + self.chunk], k)
            dist[s : s + self.chunk] = d
            idx[s : s + self.chunk] = i
        np.maximum(dist, 0.0, out=dist)  # float rounding can give tiny negatives
        return torch.from_numpy(np.sqrt(dist)), torch.from_numpy(idx)
