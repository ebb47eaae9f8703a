"""Gaussian density estimator (GDE) with Ledoit-Wolf shrinkage; score = Mahalanobis distance.

CutPaste (Li et al., CVPR 2021, eq. 2) scores an embedding by its log-density under a Gaussian
fitted to the embeddings of the normal training images; the paper uses scikit-learn's
``LedoitWolf`` covariance. The anomaly score here is the Mahalanobis distance
``sqrt((z - mu)^T Sigma^-1 (z - mu))``, a monotone function of the negative log-density.

Per-location models (CutPaste's patch-level detector fits one GDE per grid cell for aligned
objects: 57 x 57 cells of 512-d) would need 3249 dense 512 x 512 precision matrices (3.4 GB).
With fewer training images n than dimensions d, the shrunk covariance is
``Sigma = a I + b X^T X`` (X the n x d centred data, a = shrinkage * mu, b = (1 - shrinkage) / n),
and by the Woodbury identity ``Sigma^-1 = (I - X^T (a/b I + X X^T)^-1 X) / a``: storing X and
an n x n matrix per location gives the same distances in a fraction of the memory. The
shrinkage itself is computed in closed form from n x n Gram matrices with scikit-learn's
formula (``sklearn.covariance.ledoit_wolf_shrinkage``); a test checks both against sklearn.

``l2_normalize=True`` scales every embedding (training and test) to unit L2 norm before the
Gaussian is fitted and scored. This is what the released code of CutPaste's GDE reference [52]
does (Sohn et al., "Learning and evaluating representations for deep one-class
classification", ICLR 2021; google-research/deep_representation_one_class ``util/train.py``
l.575-578: ``tf.nn.l2_normalize(feats, axis=1)`` before ``GaussianMixture(n_components=1,
covariance_type='full')``). CutPaste's paper does not say whether it normalises; its own code
was never released. Default False (the paper's eq. 2 as written).
"""
from __future__ import annotations

from typing import Optional

import torch


def ledoit_wolf_shrinkage(xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrinkage and mu (mean eigenvalue) for centred data ``xc`` [L, n, p], float64.

    Same algebra as sklearn's ``ledoit_wolf_shrinkage`` (assume_centered data), with the
    smaller of the n x n and p x p Gram matrices.
    """
    _, n, p = xc.shape
    x2 = xc * xc
    emp_trace = x2.sum(dim=(1, 2)) / n  # trace of the empirical covariance
    mu = emp_trace / p
    # ||X^T X||_F^2 = ||X X^T||_F^2: use the smaller of the two Gram matrices
    gram = xc @ xc.transpose(1, 2) if n <= p else xc.transpose(1, 2) @ xc
    delta_ = (gram * gram).sum(dim=(1, 2)) / (n * n)
    beta_ = (x2.sum(dim=2) ** 2).sum(dim=1)  # sum_k |x_k|^4
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * emp_trace + p * mu * mu) / p
    beta = torch.minimum(beta, delta)
    shrinkage = torch.where(delta > 0, beta / delta.clamp_min(1e-300), torch.zeros_like(delta))
    return shrinkage, mu


class GaussianDensity:
    """One or many (per location) Gaussians with Ledoit-Wolf covariance.

    ``fit(x)`` with x [n, d] fits one Gaussian; with x [L, n, d] one per location. ``score(z)``
    takes [m, d] (or [L, m, d]) and returns Mahalanobis distances [m] (or [L, m]).
    """

    def __init__(self, l2_normalize: bool = False) -> None:
        self.l2_normalize = bool(l2_normalize)
        self.mean: Optional[torch.Tensor] = None
        self.low_rank = False

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Unit L2 norm along the feature axis when ``l2_normalize`` (DROC's GDE), else as is."""
        if not self.l2_normalize:
            return x
        x = x.double()
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def fit(self, x: torch.Tensor, chunk_bytes: int = 256 * 2**20) -> "GaussianDensity":
        """Fit on [n, d] or [L, n, d] embeddings; locations are processed in chunks so the
        float64 work arrays stay under ``chunk_bytes``."""
        batched = x.dim() == 3
        x = self._prepare(x if batched else x[None])
        n, d = x.shape[1], x.shape[2]
        if n < 2:
            raise ValueError("GDE needs at least 2 training embeddings")
        step = max(1, int(chunk_bytes // (8 * n * max(n, d))))
        parts = [GaussianDensity()._fit_dense(x[i : i + step]) for i in range(0, x.shape[0], step)]
        self.low_rank = parts[0].low_rank
        names = ["mean", "shrinkage"] + (["data", "k_inv", "a"] if self.low_rank else ["precision"])
        for name in names:
            setattr(self, name, torch.cat([getattr(p, name) for p in parts]))
        return self

    def _fit_dense(self, x: torch.Tensor) -> "GaussianDensity":
        x = x.double()
        n, d = x.shape[1], x.shape[2]
        mean = x.mean(dim=1, keepdim=True)
        xc = x - mean
        shrink, mu = ledoit_wolf_shrinkage(xc)
        a = (shrink * mu).clamp_min(1e-12)  # [L]
        b = (1.0 - shrink) / n
        self.shrinkage = shrink.float()
        self.mean = mean.float()  # [L, 1, d]
        self.low_rank = n < d
        if self.low_rank:
            eye = torch.eye(n, dtype=torch.float64)
            k = xc @ xc.transpose(1, 2) + (a / b.clamp_min(1e-300))[:, None, None] * eye
            self.data = xc.float()  # [L, n, d]
            self.k_inv = torch.linalg.inv(k).float()  # [L, n, n]
            self.a = a.float()
            if bool((b <= 0).any()):  # full shrinkage: Sigma = a I
                self.k_inv[b <= 0] = 0.0
        else:
            cov = (1.0 - shrink)[:, None, None] * (xc.transpose(1, 2) @ xc) / n
            cov = cov + (shrink * mu)[:, None, None] * torch.eye(d, dtype=torch.float64)
            self.precision = torch.linalg.inv(cov).float()  # [L, d, d]
        return self

    @torch.no_grad()
    def score(self, z: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            raise RuntimeError("GaussianDensity.score before fit")
        batched = z.dim() == 3
        zc = self._prepare((z if batched else z[None]).cpu()).float() - self.mean  # [L, m, d]
        if self.low_rank:
            proj = self.data @ zc.transpose(1, 2)  # [L, n, m]
            q = (proj * (self.k_inv @ proj)).sum(dim=1)  # [L, m]
            d2 = ((zc * zc).sum(dim=2) - q) / self.a[:, None]
        else:
            d2 = ((zc @ self.precision) * zc).sum(dim=2)
        dist = d2.clamp_min(0).sqrt()
        return dist if batched else dist[0]
