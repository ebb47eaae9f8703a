"""Coreset sampler, faiss wrapper and float16 embedding store."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.components.coreset import (
    TwoLevelCoreset,
    approximate_greedy_coreset,
    coreset_size,
    coverage_radius,
    exact_greedy_kcenter,
    greedy_coreset,
    two_level_coreset,
)
from adbench.components.knn import NearestNeighbours
from adbench.methods._patchcore_memory_bank import EmbeddingStore


def clustered(n=6000, d=64, clusters=60, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=gen) * 3
    scale = torch.rand(clusters, 1, generator=gen) + 0.2
    which = torch.randint(0, clusters, (n,), generator=gen)
    return centres[which] + torch.randn(n, d, generator=gen) * scale[which]


def flat_greedy(z, k, first=0):
    """The textbook loop the lazy sampler must reproduce."""
    mind = torch.full((z.shape[0],), float("inf"))
    out, idx = [], first
    for _ in range(k):
        out.append(idx)
        mind = torch.minimum(mind, ((z - z[idx]) ** 2).sum(1))
        idx = int(mind.argmax())
    return out


def test_lazy_blocks_pick_exactly_the_flat_greedy_centres():
    z = clustered(3000, 16)
    start = (z - z[0]).norm(dim=1)  # the flat loop's state after taking row 0
    reference = flat_greedy(z, 200)[1:]
    for block in (64, 1000, 4096):
        assert greedy_coreset(z, 199, start=start, block_size=block).tolist() == reference


def test_coreset_size_and_validation():
    assert coreset_size(1000, 0.1) == 100
    assert coreset_size(1001, 0.01) == 11
    assert coreset_size(5, 0.01) == 1
    with pytest.raises(ValueError):
        coreset_size(10, 0.0)


def test_approximate_coreset_is_deterministic_and_covers_like_exact():
    x = clustered()
    k = 300
    a = approximate_greedy_coreset(x, k, proj_dim=32, seed=3)
    b = approximate_greedy_coreset(x, k, proj_dim=32, seed=3)
    assert torch.equal(a, b) and len(set(a.tolist())) == k
    exact = exact_greedy_kcenter(x, k)
    r_ours, _ = coverage_radius(x, a)
    r_exact, _ = coverage_radius(x, exact)
    r_random, _ = coverage_radius(x, torch.randperm(len(x))[:k])
    assert r_ours <= 1.25 * r_exact, (r_ours, r_exact)
    assert r_ours < r_random, (r_ours, r_random)


def test_true_distance_ranking_covers_closer_to_exact_than_projection_alone():
    """A strong 8-d projection of 64-d clusters distorts the largest distances; ranking by the
    original-space distance to the projected-nearest centre must win most of that back."""
    x = clustered(4000, 64, clusters=40, seed=1)
    k = 200
    r_exact, _ = coverage_radius(x, exact_greedy_kcenter(x, k))
    official = approximate_greedy_coreset(x, k, proj_dim=8, seed=0)
    ours = approximate_greedy_coreset(x, k, proj_dim=8, seed=0, true_distance=True)
    again = approximate_greedy_coreset(x, k, proj_dim=8, seed=0, true_distance=True)
    assert torch.equal(ours, again) and len(set(ours.tolist())) == k
    r_official, _ = coverage_radius(x, official)
    r_ours, _ = coverage_radius(x, ours)
    assert r_ours < r_official, (r_ours, r_official)
    assert r_ours <= 1.1 * r_exact, (r_ours, r_exact)


def test_true_distance_criterion_is_an_upper_bound_that_matches_a_plain_loop():
    """Lazy blocks with true-distance ranking pick what the one-row-at-a-time loop picks when
    every pending centre is applied one by one (max_pending=1)."""
    x = clustered(1500, 32, clusters=30, seed=2)
    z = x[:, :6] * 1.0  # a crude "projection": the first 6 coordinates
    k = 60

    def plain():
        proj = torch.full((len(x),), float("inf"))
        crit = torch.full((len(x),), float("inf"))
        out, i = [], 0
        for _ in range(k):
            out.append(i)
            dz = ((z - z[i]) ** 2).sum(1)
            closer = dz < proj
            proj = torch.where(closer, dz, proj)
            crit = torch.where(closer, torch.minimum(crit, ((x - x[i]) ** 2).sum(1)), crit)
            crit[out] = -1.0
            i = int(crit.argmax())
        return out

    from adbench.components.coreset import greedy_coreset as lazy
    reference = plain()
    start_proj = (z - z[0]).norm(dim=1)
    start_true = (x - x[0]).norm(dim=1)
    for block in (50, 700):
        picks = lazy(z, k - 1, start=start_proj, block_size=block, max_pending=1, true_features=x,
                     true_start=start_true)
        assert picks.tolist() == reference[1:]


def test_two_level_covers_every_chunk_and_stays_close_to_flat():
    x = clustered(8000, 64).half().numpy()  # float16 in, as from the memmap
    ratio = 0.05
    picks = two_level_coreset(x, ratio, chunk_size=1500, proj_dim=32, seed=0)
    assert len(picks) == coreset_size(len(x), ratio) == len(set(picks.tolist()))
    assert int(picks.max()) < len(x) and int(picks.min()) >= 0
    flat = approximate_greedy_coreset(x, len(picks), proj_dim=32, seed=0)
    r_two, _ = coverage_radius(x, picks)
    r_flat, _ = coverage_radius(x, flat)
    assert r_two <= 1.3 * r_flat, (r_two, r_flat)
    with pytest.raises(ValueError):
        TwoLevelCoreset(8, 0.1).finish()


def test_knn_matches_brute_force_in_chunks():
    gen = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(500, 24, generator=gen), torch.randn(301, 24, generator=gen)
    nn = NearestNeighbours(bank, chunk=64)
    dist, idx = nn.search(queries, k=3)
    ref = torch.cdist(queries, bank)
    ref_d, ref_i = ref.topk(3, largest=False)
    assert torch.equal(idx, ref_i)
    assert torch.allclose(dist, ref_d, atol=1e-4)
    with pytest.raises(ValueError):
        NearestNeighbours(torch.empty(0, 4))


def test_embedding_store_spills_float16_and_cleans_up(tmp_path):
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(100, 8, generator=gen) for _ in range(5)]
    store = EmbeddingStore(8, workdir=str(tmp_path), spill_bytes=3000)
    for p in parts:
        store.append(p)
    arr = store.array()
    assert store.spilled and arr.shape == (500, 8)
    full = torch.cat(parts).half().numpy()
    assert np.array_equal(arr[0:500], full) and np.array_equal(arr[120:250], full[120:250])
    rows = np.array([499, 3, 250, 3, 0])
    assert np.array_equal(arr[rows], full[rows])
    path = store.path
    store.close()
    assert not path.exists()
    small = EmbeddingStore(8, spill_bytes=10**9)
    small.append(parts[0])
    assert not small.spilled and small.array().dtype == np.float16
