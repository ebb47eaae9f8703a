"""Reverse Distillation: architecture mirrors any teacher, the official loss and map, the
student's loss falls, and with real lite0 features it separates a generated category."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from adbench.config import resolve_config
from adbench.detector import RunContext
from adbench.registry import METHODS

from striped_category import SIZE, as_batch as _batch, make_category, one_thread  # noqa: F401  (autouse fixture)


def _rd():
    return METHODS.get("reverse_distillation")


def _make(overrides, weights=None, seed=0):
    torch.manual_seed(seed)
    cls = _rd()
    cfg = resolve_config(cls.Config, cls.PROFILES, "quick", {"image_size": SIZE, "batch_size": 16, **overrides})
    return cls(cfg, RunContext(profile="quick", weights=weights, seed=seed))


def test_paper_profile_matches_the_sources():
    cls = _rd()
    cfg = resolve_config(cls.Config, cls.PROFILES, "paper")
    assert (cfg.backbone, tuple(cfg.layers), cfg.image_size, cfg.crop_size) == ("wide_resnet50_2.tv_in1k", (1, 2, 3), 256, None)
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.batch_size, cfg.epochs, cfg.blur_sigma) == (0.005, 0.5, 0.999, 32, 200, 4.0)
    assert (cfg.oce_blocks, tuple(cfg.decoder_blocks), cfg.cache_features) == (3, (3, 4, 6), False)
    quick = resolve_config(cls.Config, cls.PROFILES, "quick")
    assert quick.backbone == "tf_efficientnet_lite0.in1k"


@pytest.mark.parametrize("backbone", ["resnet18", "tf_efficientnet_lite0"])
def test_student_mirrors_the_teacher(backbone):
    """Decoder outputs have the teacher's channels and resolutions whatever the backbone."""
    det = _make({"backbone": backbone, "oce_blocks": 3, "decoder_blocks": (3, 4, 6)}, weights="random")
    x = torch.rand(2, 3, SIZE, SIZE)
    teacher = det.teacher(x)
    student = det._student(teacher)
    assert [t.shape for t in teacher] == [s.shape for s in student]
    assert det.bottleneck.out_channels == 2 * det.teacher.channels[-1]


def test_loss_and_map_follow_the_official_definitions():
    from adbench.methods.reverse_distillation import anomaly_map, distillation_loss

    t = [torch.randn(3, 5, 8, 8), torch.randn(3, 7, 4, 4)]
    assert float(distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    # per-sample flattened cosine: invariant to a per-sample positive rescaling of the student
    scaled = [x * torch.tensor([1.0, 3.0, 0.2]).view(3, 1, 1, 1) for x in t]
    assert float(distillation_loss(t, scaled)) == pytest.approx(0.0, abs=1e-5)
    s = [torch.randn_like(x) for x in t]
    manual = sum((1 - torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))).mean() for a, b in zip(t, s))
    assert float(distillation_loss(t, s)) == pytest.approx(float(manual), rel=1e-5)
    # map: zero where student == teacher, high where they disagree, at the requested size
    s = [x.clone() for x in t]
    s[0][:, :, 2, 3] = -s[0][:, :, 2, 3]
    m = anomaly_map(t, s, (32, 32))
    assert m.shape == (3, 32, 32)
    assert float(m[:, 8:12, 12:16].mean()) > 1.0 > float(m[:, 24:, 24:].max()) + 0.5


def test_fit_is_deterministic_and_the_loss_falls():
    """Paper-depth OCBE and decoder on a small random teacher: the loss falls; same seed, same scores."""
    batches, test, _ = make_category(n_train=16, n_good=2, n_bad=2)
    runs = []
    for _ in range(2):
        det = _make({"epochs": 4, "oce_blocks": 3, "decoder_blocks": (3, 4, 6)}, weights="random")
        det.fit(batches)
        runs.append((det.loss_history, det.predict(_batch(test)).scores))
    history = runs[0][0]
    assert len(history) == 4 and history[-1] < 0.9 * history[0], history
    assert torch.equal(runs[0][1], runs[1][1])


def test_separates_a_generated_category_with_pretrained_features(shared_weights):
    batches, test, labels = make_category()
    det = _make({"epochs": 6})
    assert det.weights_info().tag == "tf_efficientnet_lite0.in1k"
    det.fit(batches)
    assert det.loss_history[-1] < det.loss_history[0]
    pred = det.predict(_batch(test))
    assert pred.maps.shape == (len(test), SIZE, SIZE)
    scores, maps = pred.numpy()
    auroc = roc_auc_score(labels, scores)
    print(f"RD generated-category image AUROC {auroc:.3f}, loss {det.loss_history[0]:.3f} -> {det.loss_history[-1]:.3f}")
    assert auroc >= 0.8, auroc
