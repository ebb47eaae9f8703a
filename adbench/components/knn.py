"""Exact nearest-neighbour search over a memory bank (PatchCore, ToCoAD).

``NearestNeighbours(bank, device=...)`` picks where the search runs:

* on a CUDA device, faiss's GPU index when the installed faiss has GPU support (faiss-gpu, an
  optional extra), otherwise an exact chunked search in torch on that GPU (``torch``): no extra
  install, and on MIAD the test search (about 6 PFLOP) takes minutes on a GPU against hours on a
  CPU. faiss-gpu wheels are CUDA-version specific, so the torch path is what always works;
* elsewhere faiss's exact CPU index (``IndexFlatL2``), with faiss's OpenMP pool set to torch's
  thread count so the harness's thread budget holds inside faiss.

``where`` says which one was used (``"cuda:0 torch"``, ``"cuda:0 faiss-gpu"``, ``"cpu faiss"``);
records carry it as ``knn_device``, read from the index actually built, not from an option.
``search(queries, k)`` runs in chunks so the distance buffer stays bounded whatever the number
of test patches, and returns Euclidean (not squared) distances as float32 tensors plus int64
indices, on the CPU.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

#: bytes of one chunk's [queries, bank] distance block in the torch search (on the GPU)
TORCH_BLOCK_BYTES = 512 * 2**20


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
    """Exact k-NN over ``bank`` ([M, D]) on ``device`` (see the module docstring).

    ``backend`` is ``auto`` (the rule above), ``faiss`` or ``torch`` (any device; the tests
    compare the two on the CPU)."""

    def __init__(self, bank, *, device: Optional[torch.device | str] = None, chunk: int = 16384,
                 backend: str = "auto"):
        device = torch.device(device) if device is not None else torch.device("cpu")
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"backend must be auto, faiss or torch, not {backend!r}")
        if backend == "auto":
            backend = "torch" if device.type == "cuda" and not faiss_has_gpu() else "faiss"
        shape = tuple(bank.shape) if hasattr(bank, "shape") else np.shape(bank)
        if len(shape) != 2 or shape[0] == 0:
            raise ValueError(f"memory bank must be a non-empty [M, D] array, got shape {shape}")
        self.size, self.dim = int(shape[0]), int(shape[1])
        self.chunk = int(chunk)
        self.backend = backend
        if backend == "torch":
            self._build_torch(bank, device)
        else:
            self._build_faiss(bank, device)

    # --- faiss (CPU, or GPU with faiss-gpu) ----------------------------------------------------
    def _build_faiss(self, bank, device: torch.device) -> None:
        faiss = _faiss()
        faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
        index = faiss.IndexFlatL2(self.dim)
        self.on_gpu = False
        self.where = "cpu faiss"
        if device.type == "cuda" and faiss_has_gpu():
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, device.index or 0, index)
            self.on_gpu = True
            self.where = f"cuda:{device.index or 0} faiss-gpu"
        index.add(_as_f32(bank))
        self.index = index

    def _search_faiss(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist = np.empty((q.shape[0], k), dtype=np.float32)
        idx = np.empty((q.shape[0], k), dtype=np.int64)
        for s in range(0, q.shape[0], self.chunk):
            d, i = self.index.search(q[s : s + self.chunk], k)
            dist[s : s + self.chunk] = d
            idx[s : s + self.chunk] = i
        return dist, idx

    # --- torch (exact, chunked) ---------------------------------------------------------------
    def _build_torch(self, bank, device: torch.device) -> None:
        self.device = device
        self.bank_t = torch.as_tensor(_as_f32(bank)).to(device)
        self.bank_sq = (self.bank_t * self.bank_t).sum(dim=1)  # ||b||^2, [M]
        self.on_gpu = device.type == "cuda"
        self.where = f"{device.type}:{device.index or 0} torch" if device.type == "cuda" else f"{device.type} torch"
        # queries per chunk so that the [chunk, M] distance block stays within TORCH_BLOCK_BYTES
        self.torch_chunk = max(1, min(self.chunk, TORCH_BLOCK_BYTES // (4 * self.size)))

    @torch.no_grad()
    def _search_torch(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """||q - b||^2 = ||q||^2 - 2 q.b + ||b||^2 in float32 (what faiss's flat index computes
        for batched queries), smallest k per row."""
        dist = torch.empty((q.shape[0], k), dtype=torch.float32)
        idx = torch.empty((q.shape[0], k), dtype=torch.int64)
        queries = torch.from_numpy(q)
        for s in range(0, q.shape[0], self.torch_chunk):
            block = queries[s : s + self.torch_chunk].to(self.device, non_blocking=True)
            d2 = torch.addmm(self.bank_sq.unsqueeze(0), block, self.bank_t.T, alpha=-2.0)
            d2 += (block * block).sum(dim=1, keepdim=True)
            d, i = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            dist[s : s + len(block)] = d.cpu()
            idx[s : s + len(block)] = i.cpu()
        return dist.numpy(), idx.numpy()

    # --- search -------------------------------------------------------------------------------
    def search(self, queries, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances [Q, k] (Euclidean, float32) and indices [Q, k] (int64) of the k nearest."""
        q = _as_f32(queries)
        k = int(min(k, self.size))
        dist, idx = self._search_torch(q, k) if self.backend == "torch" else self._search_faiss(q, k)
        np.maximum(dist, 0.0, out=dist)  # float rounding can give tiny negatives
        return torch.from_numpy(np.sqrt(dist)), torch.from_numpy(idx)
