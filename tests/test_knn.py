"""The exact nearest-neighbour search: faiss and the torch path (what a GPU without faiss-gpu
uses) give the same neighbours, checked against a brute-force reference, and the index says
where it ran (the record's ``knn_device``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.components import knn as knn_module
from adbench.components.knn import NearestNeighbours


def _reference(bank: np.ndarray, queries: np.ndarray, k: int):
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None, :, :]) ** 2).sum(-1))
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exact_neighbours_match_brute_force(backend, monkeypatch):
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(700, 24)).astype(np.float32)
    queries = rng.normal(size=(301, 24)).astype(np.float32)
    monkeypatch.setattr(knn_module, "TORCH_BLOCK_BYTES", 64 * 700 * 4)  # force 64-query chunks
    index = NearestNeighbours(torch.from_numpy(bank), backend=backend, chunk=100)
    dist, idx = index.search(torch.from_numpy(queries), k=3)
    ref_d, ref_i = _reference(bank, queries, 3)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64 and dist.shape == (301, 3)
    np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-4, atol=1e-4)
    assert (idx.numpy() == ref_i).mean() > 0.999  # ties aside, the same neighbours
    assert index.where == f"cpu {backend}"


def test_exact_hits_have_zero_distance_and_k_is_capped():
    bank = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    for backend in ("faiss", "torch"):
        dist, idx = NearestNeighbours(bank, backend=backend).search(torch.tensor([[3.0, 4.0]]), k=5)
        assert idx.tolist() == [[1, 0]] and dist.tolist() == [[0.0, 5.0]]


def test_auto_backend_on_a_gpu_without_faiss_gpu_is_torch(monkeypatch):
    """On a CUDA device without faiss-gpu the search runs in torch on that device (no silent
    CPU fallback); on the CPU it is faiss. Checked without a GPU: the choice only."""
    monkeypatch.setattr(knn_module, "faiss_has_gpu", lambda: False)
    built = {}
    monkeypatch.setattr(NearestNeighbours, "_build_torch", lambda self, bank, device: built.update(torch=device))
    monkeypatch.setattr(NearestNeighbours, "_build_faiss", lambda self, bank, device: built.update(faiss=device))
    NearestNeighbours(torch.zeros(4, 2), device="cuda:1")
    assert built == {"torch": torch.device("cuda:1")}
    built.clear()
    NearestNeighbours(torch.zeros(4, 2), device="cpu")
    assert built == {"faiss": torch.device("cpu")}
    with pytest.raises(ValueError, match="non-empty"):
        NearestNeighbours(torch.zeros(0, 2))


def test_records_say_where_the_search_ran(tmp_path):
    """A PatchCore job's record names the index it searched with; methods without one say null."""
    import json

    import adbench_testkit
    from adbench.run.runner import RunOptions, run

    root = adbench_testkit.make_kit_data(tmp_path / "data", categories=("obj_b",))
    common = dict(dataset="kitgen", data_root=str(root), results=str(tmp_path / "r"), plugins=["adbench_testkit"],
                  progress=False, profile="quick", weights="random", device="cpu")
    assert run(RunOptions(method="patchcore", set_options=["backbone=resnet18.tv_in1k", "image_size=64",
                                                           "crop_size=none"], **common)).exit_code == 0
    assert run(RunOptions(method="kit_mean", **common)).exit_code == 0
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "r").rglob("*.json"))}
    assert records["patchcore"]["knn_device"] == "cpu faiss"
    assert records["kit_mean"]["knn_device"] is None
