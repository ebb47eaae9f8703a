"""The two honest baselines: mean_image (raw pixels) and feature_gaussian (PaDiM-like).

The central check is the synthetic set's purpose (issue 2, "what it must show"): with real
ImageNet features the feature baseline reaches >= 0.8 mean image AUROC, the naive per-pixel
baseline scores at least 0.1 lower on most categories, and both beat chance clearly on every
category. The set is shared with test_synthetic.py through the session's temp folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adbench.config import resolve_config
from adbench.data import Batch, Preprocess, make_loader
from adbench.detector import RunContext
from adbench.errors import ConfigError
from adbench.registry import DATASETS, METHODS

synthetic = pytest.importorskip("adbench.datasets.synthetic")


def roc_auc(scores, labels) -> float:
    try:
        from adbench.evaluation.metrics import image_auroc
    except ImportError:  # metrics written in parallel; sklearn computes the same number
        from sklearn.metrics import roc_auc_score as image_auroc
    return float(image_auroc(np.asarray(scores), np.asarray(labels)))


def make_detector(name: str, profile: str = "quick", weights=None, seed: int = 0, **overrides):
    cls = METHODS.get(name)
    config = resolve_config(cls.Config, cls.PROFILES, profile, overrides, method=name)
    torch.manual_seed(seed)
    return cls(config, RunContext(seed=seed, weights=weights, profile=profile))


def evaluate(detector, index) -> tuple[float, np.ndarray]:
    pre = detector.preprocess()
    detector.fit(make_loader(index.train, pre, batch_size=detector.config.batch_size, train=True))
    scores, labels = [], []
    for batch in make_loader(index.test, pre, batch_size=16, train=False):
        pred = detector.predict(batch)
        s, maps = pred.numpy()
        assert maps.shape == (len(batch), pre.output_size, pre.output_size)
        assert np.isfinite(s).all() and np.isfinite(maps).all()
        scores.append(s)
        labels.append(batch.labels.numpy())
    return roc_auc(np.concatenate(scores), np.concatenate(labels)), np.concatenate(scores)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return synthetic.ensure_generated(tmp_path_factory.getbasetemp() / "adbench-synthetic-cache")


def batch_of(images: torch.Tensor) -> Batch:
    n = images.shape[0]
    return Batch(images=images, labels=torch.zeros(n, dtype=torch.long), paths=[""] * n,
                 categories=["x"] * n, defect_types=["good"] * n)


# --- mean_image -----------------------------------------------------------------------------
def test_mean_image_is_distance_to_mean():
    det = make_detector("mean_image", map_sigma=0.0, image_size=16)
    train = torch.stack([torch.full((3, 16, 16), v) for v in (0.2, 0.4, 0.6)])
    det.fit([batch_of(train[:2]), batch_of(train[2:])])
    assert torch.allclose(det.mean, torch.full((3, 16, 16), 0.4))
    test = torch.full((2, 3, 16, 16), 0.4)
    test[1, :, 4:6, 4:6] = 0.9
    pred = det.predict(batch_of(test))
    assert float(pred.maps[0].max()) < 1e-6
    assert pred.scores[1] == pytest.approx(np.sqrt(3 * 0.5**2), rel=1e-5)
    assert METHODS.get("mean_image").produces_maps


# --- feature_gaussian: the estimator -------------------------------------------------------------
class _VectorsOnly(METHODS.get("feature_gaussian")):
    """feature_gaussian with the backbone replaced by given vectors (tests the statistics)."""

    def __init__(self, config):
        self.config = config
        self.context = RunContext()

    def embed(self, images):
        return images


def test_streamed_ledoit_wolf_matches_sklearn():
    from sklearn.covariance import LedoitWolf

    cls = METHODS.get("feature_gaussian")
    config = resolve_config(cls.Config, cls.PROFILES, "paper", {"eps": 0.0})
    det = _VectorsOnly(config)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(30, 3, 20)) * np.linspace(1, 5, 20) + 3, dtype=torch.float32)

    class B:  # three uneven batches: the moments must combine exactly
        def __init__(self, images):
            self.images = images

    det.fit([B(x[:7]), B(x[7:19]), B(x[19:])])
    for loc in range(3):
        lw = LedoitWolf().fit(x[:, loc].double().numpy())
        np.testing.assert_allclose(det.mean[loc].numpy(), lw.location_, atol=1e-5)
        np.testing.assert_allclose(det.precision[loc].numpy(), np.linalg.inv(lw.covariance_), rtol=1e-4, atol=1e-5)


def test_feature_gaussian_config_checks_and_determinism():
    with pytest.raises(ConfigError, match="grid_stride"):
        make_detector("feature_gaussian", weights="random", image_size=100, grid_stride=8)
    a = make_detector("feature_gaussian", weights="random", seed=3, image_size=64)
    b = make_detector("feature_gaussian", weights="random", seed=3, image_size=64)
    assert torch.equal(a.channel_index, b.channel_index) and a.channel_index.numel() == 100
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a.fit([batch_of(images)])
    b.fit([batch_of(images)])
    pa, pb = a.predict(batch_of(images[:2])), b.predict(batch_of(images[:2]))
    assert torch.equal(pa.scores, pb.scores) and pa.maps.shape == (2, 64, 64)
    assert a.weights_info().tag == "random"


def test_paper_profile_geometry_with_random_weights():
    """PaDiM's set-up: WRN-50-2 layers 1-3, 56x56 grid at 224 px, 550 random dimensions."""
    det = make_detector("feature_gaussian", profile="paper", weights="random", image_size=72, crop_size=64)
    assert det.config.backbone == "wide_resnet50_2.tv_in1k" and det.channel_index.numel() == 550
    assert sum(det.backbone.channels) == 1792
    assert det.preprocess().output_size == 64
    assert det.embed(torch.rand(1, 3, 64, 64)).shape == (1, 16 * 16, 550)


# --- the synthetic set separates the two ------------------------------------------------------
@pytest.mark.slow
def test_synthetic_set_separates_pixel_and_feature_baselines(synthetic_root, shared_weights):
    ds = DATASETS.get("synthetic")(synthetic_root)
    results = {}
    for cat in ds.categories():
        index = ds.index(cat)
        naive, _ = evaluate(make_detector("mean_image"), index)
        feature_det = make_detector("feature_gaussian")
        assert feature_det.weights_info().tag == "tf_efficientnet_lite0.in1k"
        feature, _ = evaluate(feature_det, index)
        results[cat] = (naive, feature)
    print("image AUROC (mean_image, feature_gaussian):", results)
    naive = np.array([r[0] for r in results.values()])
    feature = np.array([r[1] for r in results.values()])
    assert feature.mean() >= 0.8, results
    assert (feature - naive >= 0.1).sum() > len(results) / 2, results  # "most categories"
    assert (naive >= 0.6).all() and (feature >= 0.6).all(), results  # both clearly above chance
