"""The k-shot protocol: which K normal images a job trains on.

Few-shot results are read as curves over K (1, 2, 4, 8 ...) with a spread over seeds, so the draws
must be *nested*: for one seed, the 1-shot image is among the 2-shot images, which are among the
4-shot ones, and so on. A job's seed fixes one permutation of the category's training images
(sorted by path first, so the order the adapter lists them in does not matter); the K-shot set is
the first K of it. Different seeds give different permutations, so ``--shots 1,2,4,8 --seed
0,1,2,3,4`` gives the usual table with five draws per K.

The permutation has its own generator, seeded from (job seed, category), never the job's global
random state: the draw does not depend on what ran before it in the process, and two categories
of one seed draw independently.
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np

from adbench.data.samples import Sample


def shot_order(samples: Sequence[Sample], seed: int, category: str) -> list[Sample]:
    """Every training sample, in the seed's fixed random order (the K-shot set is a prefix)."""
    ordered = sorted(samples, key=lambda s: str(s.path))
    digest = hashlib.sha256(f"shots|{seed}|{category}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return [ordered[i] for i in rng.permutation(len(ordered))]


def draw_shots(samples: Sequence[Sample], shots: Optional[int], seed: int, category: str) -> list[Sample]:
    """The ``shots`` training samples of this seed (all of them when ``shots`` is None)."""
    if shots is None:
        return list(samples)
    if not 1 <= shots <= len(samples):
        raise ValueError(f"--shots {shots}: {category} has {len(samples)} training image(s)")
    return shot_order(samples, seed, category)[:shots]


def shot_names(samples: Sequence[Sample]) -> list[str]:
    """What a record keeps of the drawn images: ``<parent folder>/<file name>``."""
    return [f"{s.path.parent.name}/{s.path.name}" for s in samples]
