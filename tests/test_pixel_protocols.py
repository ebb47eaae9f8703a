"""Pixel AUROC over the anomalous test images only (ToCoAD Sec. 4.1.2: "measured against the
masks of the anomalous samples"), beside the all-test-images pixel AUROC every method gets
(issue 24). Checked against scikit-learn on the same pixels, and shown to differ from the
all-images protocol where normal images carry high scores."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from adbench.evaluation.streaming import StreamingEvaluator


def _test_set(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.array([0, 0, 1, 1, 1, 0])
    masks = np.zeros((6, 12, 12), bool)
    masks[2, 2:6, 3:7] = True
    masks[3, 7:11, 1:4] = True
    masks[4, 0:3, 8:12] = True
    maps = rng.normal(0, 1, size=(6, 12, 12)) + 2.0 * masks
    maps[0] += 1.5  # a normal image with high scores: it only hurts the all-images protocol
    return maps.astype(np.float32), masks, labels


def test_anomalous_images_only_matches_sklearn_on_those_pixels():
    maps, masks, labels = _test_set()
    ev = StreamingEvaluator()
    for batch in (slice(0, 4), slice(4, 6)):  # two batches: the channel survives streaming
        ev.update(scores=maps[batch].reshape(-1, 144).max(1), labels=labels[batch], maps=maps[batch],
                  masks=masks[batch])
    values = ev.compute().values
    anomalous = labels == 1
    expected = roc_auc_score(masks[anomalous].reshape(-1), maps[anomalous].reshape(-1))
    everything = roc_auc_score(masks.reshape(-1), maps.reshape(-1))
    assert values["pixel_auroc_anomalous"] == pytest.approx(expected, abs=2e-4)
    assert values["pixel_auroc"] == pytest.approx(everything, abs=2e-4)
    assert values["pixel_auroc_anomalous"] > values["pixel_auroc"] + 0.01  # the protocols differ here


def test_it_survives_a_range_that_grows_and_is_undefined_without_anomalous_normal_pixels():
    maps, masks, labels = _test_set(1)
    ev = StreamingEvaluator(n_bins=1 << 14)
    ev.update(scores=np.zeros(3), labels=labels[:3], maps=maps[:3] * 0.01, masks=masks[:3])
    ev.update(scores=np.zeros(3), labels=labels[3:], maps=maps[3:] * 100, masks=masks[3:])  # range x 1e4
    both = np.concatenate([maps[:3] * 0.01, maps[3:] * 100])
    anomalous = labels == 1
    expected = roc_auc_score(masks[anomalous].reshape(-1), both[anomalous].reshape(-1))
    assert ev.compute().values["pixel_auroc_anomalous"] == pytest.approx(expected, abs=2e-3)
    full = np.ones((1, 4, 4), bool)
    ev = StreamingEvaluator()
    ev.update(scores=[0.0, 1.0], labels=[0, 1], maps=np.stack([np.zeros((4, 4)), np.ones((4, 4))]),
              masks=np.concatenate([np.zeros((1, 4, 4), bool), full]))
    result = ev.compute()
    assert "pixel_auroc_anomalous" not in result.values
    assert result.undefined["pixel_auroc_anomalous"] == "no normal pixel in the anomalous test images"
