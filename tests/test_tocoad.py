"""ToCoAD on generated data with random weights: each stage does what the paper says it does.

* stage I: D learns to segment synthetic anomalies (pixel AUROC on held-out samples);
* stage II: F's weights move, D's (weights and batch-norm statistics) do not, L_neg's gradient
  reaches F, and the SimSiam heads do not collapse;
* the no-DNP/no-NCL switch is PatchCore: identical scores, also through ToCoAD's own
  (union-layer, trainable) extractor when no training happens;
* eq. 8-9 per patch equals a brute-force evaluation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from adbench.components.backbone import Backbone
from adbench.components.tocoad_training import ToCoADTrainer
from adbench.config import resolve_config
from adbench.data import Batch
from adbench.detector import RunContext
from adbench.methods.patchcore import PatchCore, PatchCoreConfig
from adbench.methods.tocoad import ToCoAD, ToCoADConfig
from adbench.registry import METHODS

SIZE = 64


def normal_images(n: int, seed: int) -> torch.Tensor:
    """'Products': smooth gradients over a grid pattern, colour, grid phase and noise varying
    per image (SimSiam needs some variety between images to show it does not collapse)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    phase = torch.rand(n, 2, 1, 1, generator=g) * 6.28
    grid = ((torch.sin(xx * 24 + phase[:, :1]) > 0.7) | (torch.sin(yy * 24 + phase[:, 1:]) > 0.7)).float()
    base = 0.35 + 0.3 * torch.rand(n, 3, 1, 1, generator=g)
    imgs = base + 0.15 * yy + 0.1 * grid - 0.05 + 0.02 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return imgs.clamp(0, 1)


def batches(images: torch.Tensor, bs: int = 8) -> list[Batch]:
    out = []
    for s in range(0, len(images), bs):
        x = images[s : s + bs]
        out.append(Batch(images=x, labels=torch.zeros(len(x), dtype=torch.long), paths=[f"{s + i}.png" for i in range(len(x))],
                         categories=["toy"] * len(x), defect_types=["good"] * len(x)))
    return out


def small_config(**kw) -> ToCoADConfig:
    base = dict(backbone="resnet18", image_size=SIZE, crop_size=None, batch_size=8, dnp_width=32, proj_dim=64,
                pretrain_embed_dim=64, target_embed_dim=64, dnp_epochs=1, ncl_epochs=1, dnp_milestones=(100,))
    base.update(kw)
    return ToCoADConfig(**base)


def random_weights_file(tmp_path, name: str = "resnet18") -> str:
    torch.manual_seed(123)
    state = Backbone(name, (1, 2, 3, 4), weights="random").model.state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    return str(path)


def test_registered_and_profiles():
    assert METHODS.get("tocoad") is ToCoAD
    cfg = resolve_config(ToCoADConfig, ToCoAD.PROFILES, "paper")
    assert (cfg.backbone, cfg.layers, cfg.contrastive_layers, cfg.coreset_ratio, cfg.reweight_b) == (
        "wide_resnet50_2.tv_in1k", (2, 3), (3, 4), 0.1, 9)
    assert (cfg.dnp_epochs, cfg.ncl_epochs, cfg.batch_size, cfg.image_size, cfg.crop_size, cfg.lam) == (100, 100, 16, 256, 224, 0.5)
    quick = resolve_config(ToCoADConfig, ToCoAD.PROFILES, "quick", {"stages": "ncl", "contrastive_layers": "2,3,4"})
    assert quick.backbone == "tf_efficientnet_lite0.in1k" and quick.contrastive_layers == (2, 3, 4)


def test_stage1_discriminator_segments_held_out_synthetic_anomalies(shared_weights):
    """D on a frozen *ImageNet* F (the paper's setting; random-weight features are too poor for
    a short run to segment anything): held-out synthetic anomalies, pixel AUROC >= 0.8."""
    torch.manual_seed(0)
    cfg = small_config(backbone="tf_efficientnet_lite0", dnp_lr=2e-3, steps_per_epoch=None)
    trainer = ToCoADTrainer(cfg, weights=str(shared_weights / "tf_efficientnet_lite0.pth"), seed=0)
    trainer.fit_dnp(normal_images(32, seed=1), epochs=6)
    assert trainer.history["dnp_loss"][-1] < trainer.history["dnp_loss"][0]
    x, masks = trainer.G(normal_images(16, seed=99), np.random.default_rng(12345))
    prob = trainer.segment(x)
    auroc = roc_auc_score(masks.flatten().numpy(), prob.flatten().numpy())
    assert auroc >= 0.8, auroc


def test_stage2_moves_F_not_D_and_neg_gradient_reaches_F():
    torch.manual_seed(0)
    cfg = small_config(ncl_lr=0.05, steps_per_epoch=2)
    trainer = ToCoADTrainer(cfg, weights="random", seed=0)
    images = normal_images(16, seed=2)
    trainer.fit_dnp(images, epochs=1)
    d_before = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    f_before = {k: v.clone() for k, v in trainer.F.model.named_parameters()}

    # L_neg alone: its gradient flows through the frozen D into F (layers D reads)
    trainer.set_extractor_trainable(True)
    for p in trainer.D.parameters():
        p.requires_grad_(False)
    _, l_neg = trainer.ncl_losses(images[:8])
    l_neg.backward()
    grads = {k: p.grad for k, p in trainer.F.model.named_parameters()}
    reached = [k for k, g in grads.items() if g is not None and float(g.abs().sum()) > 0]
    assert any(k.startswith("layer1") for k in reached) and any(k.startswith("layer3") for k in reached)
    assert all(p.grad is None for p in trainer.D.parameters())
    trainer.F.model.zero_grad(set_to_none=True)

    trainer.fit_ncl(images, epochs=2)
    d_after = trainer.D.state_dict()
    assert all(torch.equal(d_before[k], d_after[k]) for k in d_before), "D changed in stage II"
    moved = [k for k, p in trainer.F.model.named_parameters() if not torch.equal(f_before[k], p)]
    for layer in ("layer2", "layer3", "layer4"):
        assert any(k.startswith(layer) for k in moved), f"{layer} of F did not change"
    assert not any(p.requires_grad for p in trainer.F.model.parameters())  # frozen again for the bank


def test_stage2_simsiam_does_not_collapse():
    torch.manual_seed(0)
    cfg = small_config(ncl_lr=0.05, steps_per_epoch=None, stages="ncl")
    trainer = ToCoADTrainer(cfg, weights="random", seed=0)
    images = normal_images(32, seed=3)
    trainer.fit_ncl(images, epochs=3, lam=1.0)
    assert all(math.isfinite(v) for v in trainer.history["ncl_sym"])
    spread = trainer.projector_spread(images[:16])
    assert len(spread) == 2  # one head per layer (3 and 4), no concatenation
    assert all(s >= 0.5 / math.sqrt(cfg.proj_dim) for s in spread), spread


@pytest.mark.parametrize("stages,extra", [("none", {}), ("ncl", {"ncl_epochs": 0})])
def test_without_dnp_and_ncl_equals_patchcore(tmp_path, stages, extra):
    weights = random_weights_file(tmp_path)
    ctx = RunContext(seed=0, weights=weights, workdir=str(tmp_path))
    train, test = batches(normal_images(8, seed=4)), batches(normal_images(4, seed=5).flip(-1))
    shared = dict(backbone="resnet18", image_size=SIZE, crop_size=None, batch_size=8, pretrain_embed_dim=64,
                  target_embed_dim=64, coreset_ratio=0.25)
    torch.manual_seed(0)
    pc = PatchCore(PatchCoreConfig(**shared), ctx)
    pc.fit(train)
    torch.manual_seed(0)
    tc = ToCoAD(ToCoADConfig(**shared, stages=stages, reweight_per_patch=False, dnp_width=16, proj_dim=32, **extra), ctx)
    tc.fit(train)
    if stages == "ncl":
        assert tc.trainer is not None and tc.trainer.F.layer_indices == (1, 2, 3, 4)  # union-layer F, picked
    assert torch.equal(pc.bank, tc.bank)
    for batch in test:
        a, b = pc.predict(batch), tc.predict(batch)
        assert torch.equal(torch.as_tensor(a.scores), torch.as_tensor(b.scores))
        assert torch.equal(torch.as_tensor(a.maps), torch.as_tensor(b.maps))


def test_patch_reweighting_matches_equation_9(tmp_path):
    ctx = RunContext(seed=0, weights=random_weights_file(tmp_path), workdir=str(tmp_path))
    cfg = ToCoADConfig(backbone="resnet18", image_size=SIZE, crop_size=None, pretrain_embed_dim=32, target_embed_dim=32,
                       coreset_ratio=0.5, stages="none", reweight_b=4)
    tc = ToCoAD(cfg, ctx)
    tc.fit(batches(normal_images(8, seed=6)))
    q = torch.randn(50, 32) + tc.bank[:50]
    got = tc.patch_scores(q)
    bank = tc.bank.double()
    for i in range(len(q)):
        d = torch.cdist(q[i : i + 1].double(), bank)[0]
        c_star = int(d.argmin())
        nb = torch.cdist(bank[c_star : c_star + 1], bank)[0].argsort()[:4]  # N_b(c*), c* included
        s_prime = d[c_star]
        want = (1 - torch.exp(s_prime) / torch.exp(d[nb]).sum()) * s_prime
        assert abs(float(got[i]) - float(want)) < 1e-3 * max(1.0, float(want))
    # the image score is the max patch score, the map has the input size
    pred = tc.predict(batches(normal_images(2, seed=7))[0])
    assert pred.maps.shape == (2, SIZE, SIZE)
