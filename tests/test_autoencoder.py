"""U-Net autoencoder on generated data: learning, detection, and why full skips are avoided."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from adbench.config import resolve_config
from adbench.detector import RunContext
from adbench.registry import METHODS

from adbench_testkit import as_batches, disk_category


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _smooth_noise(g: torch.Generator, size: int) -> torch.Tensor:
    field = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(size, size), mode="bicubic", align_corners=True)[0]
    return (field + 0.08 * torch.randn(3, size, size, generator=g)).clamp(0, 1)


def noisy_smooth_category(n_train: int, n_test: int, size: int = 32, seed: int = 0):
    """Normal: a smooth random colour field (bicubic 4x4 -> size) plus pixel noise (sigma 0.08):
    reconstructing it well needs fine detail, which is what tempts a full-skip U-Net into
    copying its input. Anomalous test images: a disk of random colour, radius 2.5-5 px."""
    return disk_category(_smooth_noise, n_train, n_test, size=size, seed=seed, radius=(2.5, 2.5), margin=6)


def make(profile: str = "quick", **overrides):
    cls = METHODS.get("autoencoder")
    cfg = resolve_config(cls.Config, cls.PROFILES, profile, overrides, method="autoencoder")
    return cls(cfg, RunContext(seed=0))


TINY = dict(image_size=32, base_width=8, max_width=32, depth=3, batch_size=8, lr=3e-3, map_sigma=2.0)


def test_registered_with_paper_values():
    cls = METHODS.get("autoencoder")
    paper = resolve_config(cls.Config, cls.PROFILES, "paper")
    assert (paper.image_size, paper.batch_size, paper.epochs, paper.lr, paper.weight_decay) == (256, 16, 100, 1e-4, 5e-4)
    assert paper.loss == "l2" and paper.skip_min_stride == 16
    assert paper.map_sigma == 0.0  # no source smooths the residual map
    assert make("paper").model.skip_levels == [4]  # only the 16x16 stage of 256 px feeds the decoder


def test_skip_levels_follow_option():
    from adbench.methods.autoencoder import UNetAutoencoder

    assert UNetAutoencoder(4, 16, 3, skip_min_stride=1).skip_levels == [0, 1, 2]
    assert UNetAutoencoder(4, 16, 3, skip_min_stride=4).skip_levels == [2]
    assert UNetAutoencoder(4, 16, 3, skip_min_stride=64).skip_levels == []
    for s in (1, 4, 64):
        assert UNetAutoencoder(4, 16, 3, skip_min_stride=s)(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_learns_and_detects_and_full_skips_copy_defects():
    """Same data, same training: the default remedy (skips only at coarse levels, here stride 4
    of 32 px) detects pasted disks; a full-skip U-Net copies them through, so the error inside
    the defect is several times lower, absolutely and relative to normal pixels."""
    train, test, labels, masks = noisy_smooth_category(64, 40)
    error = {}
    for name, stride in (("coarse", 4), ("full", 1)):
        torch.manual_seed(0)
        det = make(**TINY, epochs=40, skip_min_stride=stride)
        det.fit(as_batches(train))
        assert np.mean(det.loss_history[-2:]) < 0.5 * np.mean(det.loss_history[:2]), det.loss_history
        scores, maps = det.predict(as_batches(test, 40)[0]).numpy()
        assert maps.shape == (40, 32, 32)
        if name == "coarse":
            assert roc_auc_score(labels.numpy(), scores) >= 0.7
        raw = ((det.reconstruct(test) - test) ** 2).mean(1)
        error[name] = (float(raw[masks].mean()), float(raw[masks].mean() / raw[~masks].mean()))
    assert error["coarse"][0] > 3 * error["full"][0], error  # defect error, absolute
    assert error["coarse"][1] > 1.5 * error["full"][1], error  # defect error / normal error


def test_ssim_option_gives_ssim_residual_maps():
    train, test, _, _ = noisy_smooth_category(16, 4)
    det = make(**TINY, epochs=1, loss="ssim", skip_min_stride=4)
    det.fit(as_batches(train))
    scores, maps = det.predict(as_batches(test)[0]).numpy()
    assert maps.shape == (4, 32, 32) and np.isfinite(scores).all()
    assert det.record_extras()["skip_connections"] == "strides [4]"


def test_no_blur_by_default_and_blur_option_changes_only_the_map():
    """Untrained tiny model: without blur (paper, quick) the returned map is the raw
    per-pixel squared error; ``map_sigma`` blurs that same map (and the score is its max)."""
    from adbench.components.blur import gaussian_blur

    _, test, _, _ = noisy_smooth_category(1, 4)
    batch = as_batches(test)[0]
    shape = dict(image_size=32, base_width=4, max_width=16, depth=3)
    assert make("quick").config.map_sigma == 0.0
    torch.manual_seed(0)
    plain = make(**shape)
    torch.manual_seed(0)
    blurred = make(**shape, map_sigma=2.0)
    raw = ((plain.reconstruct(test) - test) ** 2).mean(1)
    assert torch.equal(((blurred.reconstruct(test) - test) ** 2).mean(1), raw)  # same model
    pred = plain.predict(batch)
    assert torch.equal(pred.maps, raw) and torch.equal(pred.scores, raw.flatten(1).amax(1))
    pred = blurred.predict(batch)
    smooth = gaussian_blur(raw, 2.0)
    assert torch.equal(pred.maps, smooth) and not torch.allclose(smooth, raw)
    assert torch.equal(pred.scores, smooth.flatten(1).amax(1))


def test_negative_blur_is_an_error():
    from adbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--set map_sigma=-1.0: must be >= 0"):
        make(map_sigma=-1)
    for profile in METHODS.get("autoencoder").PROFILES:
        make(profile)
