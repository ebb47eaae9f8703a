"""Bootstrap intervals: coverage on a case with a known AUROC, shrinking with more images,
pixel intervals by image resampling, and the paired comparison."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from adbench.reporting.bootstrap import image_auroc_ci, paired_image_auroc, pixel_auroc_ci


def sample(rng, n_pos, n_neg, d):
    """Anomalous ~ N(d, 1), normal ~ N(0, 1): true AUROC = Phi(d / sqrt 2)."""
    scores = np.concatenate([rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)])
    labels = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
    return scores, labels


def test_point_value_is_the_auroc_with_ties():
    scores = np.array([0.9, 0.5, 0.5, 0.1, 0.5])
    labels = np.array([1, 1, 0, 0, 0])
    assert image_auroc_ci(scores, labels, n_boot=50).value == pytest.approx(roc_auc_score(labels, scores))


def test_coverage_of_the_true_auroc():
    d = 1.0
    truth = norm.cdf(d / np.sqrt(2))  # 0.760
    rng = np.random.default_rng(0)
    trials = 150
    covered = 0
    for t in range(trials):
        ci = image_auroc_ci(*sample(rng, 40, 40, d), n_boot=400, seed=t)
        covered += ci.low <= truth <= ci.high
    # nominal 95 %; percentile bootstrap undercovers a little at n = 40 + 40
    assert 0.86 <= covered / trials <= 0.99


def test_intervals_shrink_with_more_images():
    rng = np.random.default_rng(1)
    small = np.mean([image_auroc_ci(*sample(rng, 20, 20, 1.0), n_boot=300, seed=i).width for i in range(10)])
    large = np.mean([image_auroc_ci(*sample(rng, 320, 320, 1.0), n_boot=300, seed=i).width for i in range(10)])
    assert large < small / 3  # ~ 1/sqrt(n): 16x the images, ~4x narrower


def test_paired_comparison():
    rng = np.random.default_rng(2)
    scores, labels = sample(rng, 60, 60, 1.5)
    same = paired_image_auroc(scores, scores + 1e-9 * rng.normal(size=scores.size), labels, n_boot=500)
    assert abs(same["diff"]) < 0.01 and same["p"] > 0.5
    worse = scores + rng.normal(0, 3, scores.size)  # the same images, much noisier method
    res = paired_image_auroc(scores, worse, labels, n_boot=500)
    assert res["diff"] > 0 and res["low"] > 0 and res["p"] < 0.05


def test_pixel_interval_by_image_resampling():
    rng = np.random.default_rng(3)
    def make(n):
        masks = np.zeros((n, 16, 16), bool)
        masks[: n // 2, 4:8, 4:8] = True
        maps = rng.normal(0, 1, masks.shape) + 1.5 * masks
        return maps, masks
    maps, masks = make(40)
    ci = pixel_auroc_ci(maps, masks, n_boot=200)
    exact = roc_auc_score(masks.reshape(-1), maps.reshape(-1))
    assert ci.value == pytest.approx(exact, abs=2e-3)
    assert ci.low < exact < ci.high
    wide = pixel_auroc_ci(*make(10), n_boot=200).width
    assert ci.width < wide
