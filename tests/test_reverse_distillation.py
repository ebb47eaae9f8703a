"""Reverse Distillation: architecture mirrors any teacher, the official loss and map, the
student's loss falls, and with real lite0 features it separates a generated category."""
from __future__ import annotations

import numpy as np
import pytest
import torch

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
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.batch_size, cfg.epochs, cfg.blur_sigma) == (0.005, 0.5, 0.999, 16, 200, 4.0)
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


def test_separates_a_generated_category_with_pretrained_features(shared_weights, fit_and_score):
    batches, test, labels = make_category()
    det = _make({"epochs": 6})
    assert det.weights_info().tag == "tf_efficientnet_lite0.in1k"
    pred, auroc = fit_and_score(det, batches, test, labels, "RD", ".3f")
    assert det.loss_history[-1] < det.loss_history[0]
    assert pred.maps.shape == (len(test), SIZE, SIZE)
    assert auroc >= 0.8, auroc


# --- issue 13: official initialisation, the ``miad`` profile (anomalib v0.3.7) and its switches ---
def test_miad_profile_follows_the_appendix_and_anomalib_037():
    cls = _rd()
    cfg = resolve_config(cls.Config, cls.PROFILES, "miad")
    # appendix A.2.1: 256 px, WRN50, Adam lr 0.005, betas (0.5, 0.999), batch 32
    assert (cfg.image_size, cfg.crop_size, cfg.batch_size) == (256, None, 32)
    assert (cfg.lr, cfg.beta1, cfg.beta2) == (0.005, 0.5, 0.999)
    # anomalib v0.3.7 defaults: timm 0.5.4's bare wide_resnet50_2 (racm), layers 1-3, 200 epochs,
    # per-pixel cosine loss, multiplied map, sigma 4, OCBE width_per_group 64 (inner = out / 4)
    assert (cfg.backbone, tuple(cfg.layers), cfg.epochs) == ("wide_resnet50_2.racm_in1k", (1, 2, 3), 200)
    assert (cfg.loss, cfg.map_mode, cfg.blur_sigma, cfg.oce_inner_ratio) == ("per_pixel", "multiply", 4.0, 0.25)
    assert (cfg.oce_blocks, tuple(cfg.decoder_blocks), cfg.cache_features) == (3, (3, 4, 6), False)
    paper = resolve_config(cls.Config, cls.PROFILES, "paper")  # official RD4AD: unchanged
    assert (paper.loss, paper.map_mode, paper.oce_inner_ratio) == ("flattened", "add", 0.5)


def test_per_pixel_and_flattened_loss_by_hand():
    from adbench.methods.reverse_distillation import distillation_loss

    # one sample, 2 channels, 1x2 positions: teacher (1, 0) | (0, 1); student (1, 0) | (0, 2)
    t = [torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])]
    s = [torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])]
    # per position the directions agree: per-pixel loss 0; flattened: cos([1,0,0,1], [1,0,0,2]) = 3/sqrt(10)
    assert float(distillation_loss(t, s, "per_pixel")) == pytest.approx(0.0, abs=1e-7)
    assert float(distillation_loss(t, s, "flattened")) == pytest.approx(1 - 3 / 10**0.5, rel=1e-6)
    # student (1, 0) | (1, 0): per-pixel mean(0, 1) = 0.5; flattened 1 - 1/(sqrt2 * sqrt2) = 0.5
    s = [torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])]
    assert float(distillation_loss(t, s, "per_pixel")) == pytest.approx(0.5, rel=1e-6)
    s = [torch.tensor([[[[2.0, 1.0]], [[0.0, 0.0]]]])]  # (2, 0) | (1, 0): flattened 1 - 2/(sqrt5 sqrt2)
    assert float(distillation_loss(t, s, "per_pixel")) == pytest.approx(0.5, rel=1e-6)
    assert float(distillation_loss(t, s, "flattened")) == pytest.approx(1 - 2 / 10**0.5, rel=1e-6)


def test_map_multiply_versus_add_by_hand():
    from adbench.methods.reverse_distillation import anomaly_map

    # two layers at the map's own size (align_corners=True resizing to the same size is exact);
    # at position (0, 0): layer 1 at 90 degrees (1 - cos = 1), layer 2 at 60 degrees (0.5)
    c60 = torch.tensor([0.5, 3**0.5 / 2])
    t = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)]
    t[0][0, 0], t[1][0, 0] = 1.0, 1.0  # teachers point along channel 0 everywhere
    s = [x.clone() for x in t]
    s[0][0, :, 0, 0] = torch.tensor([0.0, 1.0])
    s[1][0, :, 0, 0] = c60
    s[1][0, :, 1, 1] = torch.tensor([0.0, 1.0])  # (1, 1): only layer 2 disagrees
    add, mul = anomaly_map(t, s, (2, 2), "add"), anomaly_map(t, s, (2, 2), "multiply")
    assert add[0].flatten().tolist() == pytest.approx([1.5, 0.0, 0.0, 1.0], abs=1e-6)
    assert mul[0].flatten().tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0], abs=1e-6)


def test_init_is_the_official_kaiming_fan_out_and_switches_change_only_their_part():
    """Without training: every Conv2d of the bottleneck and decoder is N(0, 2 / fan_out),
    ConvTranspose2d keeps PyTorch's default, batch-norm 1 / 0. The OCE width switch changes the
    OCE's inner width only; the map switch changes the map only."""
    import math

    det = _make({"backbone": "resnet18", "oce_blocks": 3, "decoder_blocks": (3, 4, 6)}, weights="random")
    checked = 0
    for module in (det.bottleneck, det.student):
        for m in module.modules():
            w = m.weight.detach() if hasattr(m, "weight") and m.weight is not None else None
            if isinstance(m, torch.nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                if w.numel() >= 20_000:  # enough samples for a 5 % check of the std
                    assert float(w.std()) == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05)
                    assert abs(float(w.mean())) < 0.05 * math.sqrt(2.0 / fan_out)
                    checked += 1
            elif isinstance(m, torch.nn.ConvTranspose2d):
                fan_in = w.shape[1] * w[0, 0].numel()  # PyTorch's fan_in for a transposed conv
                assert float(w.abs().max()) <= 1.0 / math.sqrt(fan_in) + 1e-7  # kaiming_uniform(a=sqrt 5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                assert bool((m.weight == 1).all()) and bool((m.bias == 0).all())
    assert checked >= 10
    x = torch.rand(2, 3, SIZE, SIZE)
    feats = det.teacher(x)
    quarter = _make({"backbone": "resnet18", "oce_blocks": 3, "decoder_blocks": (3, 4, 6), "oce_inner_ratio": 0.25},
                    weights="random")
    first, narrow = det.bottleneck.oce[0], quarter.bottleneck.oce[0]
    assert (first.conv1.out_channels, narrow.conv1.out_channels) == (256, 128)  # 512-channel code
    assert [p.shape for p in det.student.parameters()] == [p.shape for p in quarter.student.parameters()]
    assert [f.shape for f in det._student(feats)] == [f.shape for f in quarter._student(feats)]
    det.student.eval(), det.bottleneck.eval()
    added = det.predict(_batch(x))
    det.config.map_mode = "multiply"
    multiplied = det.predict(_batch(x))
    assert not torch.allclose(added.maps, multiplied.maps)
    assert float(det.teacher(x)[0].sub(feats[0]).abs().max()) == 0.0  # teacher untouched
