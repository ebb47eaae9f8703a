"""FastFlow: the 2D flow is invertible with an exact log-determinant, the map follows the
paper's rule, and with real lite0 features it separates a generated category."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.config import resolve_config
from adbench.detector import RunContext
from adbench.registry import METHODS

from striped_category import SIZE, as_batch as _batch, make_category, one_thread  # noqa: F401  (autouse fixture)


def _ff():
    return METHODS.get("fastflow")


def test_paper_profile_matches_the_sources():
    cls = _ff()
    cfg = resolve_config(cls.Config, cls.PROFILES, "paper")
    assert (cfg.backbone, tuple(cfg.layers), cfg.image_size, cfg.crop_size) == ("wide_resnet50_2.racm_in1k", (1, 2, 3), 256, None)
    assert (cfg.flow_steps, cfg.hidden_ratio, cfg.clamp, cfg.conv3x3_only) == (8, 1.0, 2.0, False)
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.epochs, cfg.cache_features) == (1e-3, 1e-5, 32, 500, False)
    assert resolve_config(cls.Config, cls.PROFILES, "quick").backbone == "tf_efficientnet_lite0.in1k"


def _random_flow(shape, steps=4):
    from adbench.methods.fastflow import build_flow

    torch.manual_seed(0)
    np.random.seed(0)  # FrEIA draws its channel permutations from NumPy
    flow = build_flow(shape, steps).double()
    with torch.no_grad():  # move away from the near-identity initialisation
        for p in flow.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return flow


def test_flow_alternates_3x3_and_1x1_subnets():
    flow = _random_flow((4, 5, 5), steps=8)
    kernels = [m.subnet.net[0].kernel_size[0] for m in flow.module_list]
    assert kernels == [3, 1, 3, 1, 3, 1, 3, 1]


def test_flow_is_invertible_and_its_log_det_matches_autograd():
    shape = (4, 3, 3)
    flow = _random_flow(shape)
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        z, log_jac = flow(x)
        x_back, inv_log_jac = flow(z, rev=True)
    assert torch.allclose(x_back, x, atol=1e-9)
    assert torch.allclose(inv_log_jac, -log_jac, atol=1e-9)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v.view(1, *shape))[0].flatten(), x[i].flatten())
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert float(sign) != 0.0
        assert float(logabsdet) == pytest.approx(float(log_jac[i]), abs=1e-8)


def test_map_and_loss_follow_the_paper():
    from adbench.methods.fastflow import anomaly_map, flow_nll

    zero = [torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 2, 2)]
    m = anomaly_map(zero, (16, 16))
    assert m.shape == (2, 16, 16) and torch.allclose(m, torch.full_like(m, -1.0))
    z = [t.clone() for t in zero]
    z[0][0, :, 1, 1] = 3.0  # a far-out latent at one position of one image
    m = anomaly_map(z, (16, 16))
    assert float(m[0].max()) > float(m[1].max()) and float(m[0, 4:8, 4:8].mean()) > float(m[0, 12:, 12:].mean())
    log_jac = [torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5])]
    expected = (0.5 * 27.0 - 1.0 + 0.0 - 2.0) / 2 + (-0.5)
    assert float(flow_nll(z, log_jac)) == pytest.approx(expected)


def test_separates_a_generated_category_with_pretrained_features(shared_weights, fit_and_score):
    batches, test, labels = make_category()
    cls = _ff()
    torch.manual_seed(0)
    np.random.seed(0)
    cfg = resolve_config(cls.Config, cls.PROFILES, "quick", {"image_size": SIZE, "batch_size": 16, "epochs": 5})
    det = cls(cfg, RunContext(profile="quick", seed=0))
    assert det.weights_info().tag == "tf_efficientnet_lite0.in1k"
    pred, auroc = fit_and_score(det, batches, test, labels, "FastFlow", ".1f")
    assert det.loss_history[-1] < det.loss_history[0]
    assert pred.maps.shape == (len(test), SIZE, SIZE)
    assert auroc >= 0.8, auroc


def test_resnet18_profile_is_deterministic_for_a_seed():
    """The paper's lighter option (``--profile resnet18``: torchvision's ResNet-18 weights, which
    the reference implementation's timm 0.5.4 loaded for bare ``resnet18``, and 3x3-only
    subnets as its configs/resnet18.yaml) builds on random weights, trains, and a fixed seed
    (torch + NumPy, which FrEIA's permutations use) gives identical scores."""
    batches, test, _ = make_category(n_train=16, n_good=2, n_bad=2)
    cls = _ff()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        np.random.seed(0)
        overrides = {"image_size": SIZE, "batch_size": 16, "epochs": 2}
        cfg = resolve_config(cls.Config, cls.PROFILES, "resnet18", overrides)
        assert cls.pretrained_tags(cfg) == ["resnet18.tv_in1k"]
        det = cls(cfg, RunContext(profile="resnet18", weights="random", seed=0))
        assert det.backbone.model_name == "resnet18.tv_in1k" and det.backbone.channels == [64, 128, 256]
        for flow in det.flows:  # every coupling subnet of every scale is 3x3, both convolutions
            convs = [m for step in flow.module_list for m in step.subnet.net if isinstance(m, torch.nn.Conv2d)]
            assert {m.kernel_size for m in convs} == {(3, 3)}
        det.fit(batches)
        runs.append(det.predict(_batch(test)).scores)
    assert torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1])


def test_weights_tags_and_silent_options():
    from adbench.errors import ConfigError

    cls = _ff()
    for profile in ("paper", "miad"):  # what the reference implementation's timm 0.5.4 loaded
        cfg = resolve_config(cls.Config, cls.PROFILES, profile)
        assert cls.pretrained_tags(cfg) == ["wide_resnet50_2.racm_in1k"]
    for profile in cls.PROFILES:  # no profile sets an inert option
        resolve_config(cls.Config, cls.PROFILES, profile)
    resolve_config(cls.Config, cls.PROFILES, "paper", {"flow_steps": 1})
    with pytest.raises(ConfigError) as info:
        resolve_config(cls.Config, cls.PROFILES, "paper", {"flow_steps": 1, "conv3x3_only": True})
    assert info.value.problems == ["--set conv3x3_only=true has no effect: flow_steps=1 has no 1x1 step to replace"]
    with pytest.raises(ConfigError, match="--set hidden_ratio=0.0: must be positive"):
        resolve_config(cls.Config, cls.PROFILES, "paper", {"hidden_ratio": 0})
