"""ToCoAD on generated data with random weights: each stage does what the paper says it does.

* stage I: D learns to segment synthetic anomalies (pixel AUROC on held-out samples);
* stage II: F's weights move, D's (weights and batch-norm statistics) do not, L_neg's gradient
  reaches F, and the SimSiam heads do not collapse;
* the no-DNP/no-NCL switch is PatchCore: identical scores, also through ToCoAD's own
  (union-layer, trainable) extractor when no training happens;
* eq. 8-9 per patch equals a brute-force evaluation;
* issue 13's switches, each observed on outputs without training a model: freeze_epochs
  (F still, C trains, then F moves), neg_loss=ce (L_neg only), the inverse D (shape,
  parameters), L_sym = eq. 5, SimSiam's views (rates, seeding, each operation), the cutout
  generator, the convnext profile's strides, and the no-silent-options rule.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from adbench.components.backbone import Backbone
from adbench.methods._tocoad_training import ToCoADTrainer
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
    """Trainer-level tests: resnet18 at 64 px and the light D (cheap); the inverse D has its own
    test. Without D (stages=ncl) the D settings are left at their defaults (no silent options)."""
    base = dict(backbone="resnet18", image_size=SIZE, crop_size=None, batch_size=8, proj_dim=64,
                pretrain_embed_dim=64, target_embed_dim=64, ncl_epochs=1)
    if kw.get("stages", "both") == "both":
        base.update(dnp_decoder="light", dnp_width=32, dnp_epochs=1)
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
    assert (cfg.dnp_decoder, cfg.dnp_blocks, cfg.neg_loss, cfg.ncl_views, cfg.freeze_epochs) == ("inverse", (3, 4, 6), "focal", 2, 0)
    quick = resolve_config(ToCoADConfig, ToCoAD.PROFILES, "quick", {"contrastive_layers": "2,3,4"})
    assert quick.backbone == "tf_efficientnet_lite0.in1k" and quick.contrastive_layers == (2, 3, 4)
    assert (quick.dnp_decoder, quick.dnp_blocks) == ("inverse", (2, 2, 6))
    convnext = resolve_config(ToCoADConfig, ToCoAD.PROFILES, "convnext")
    assert (convnext.backbone, convnext.freeze_epochs, convnext.dnp_blocks) == ("convnext_tiny.fb_in1k", 20, (3, 3, 9))


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
    l_neg = trainer.neg_loss(*trainer.anomalies(images[:8], "tocoad/ncl"))
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


@pytest.mark.parametrize("stages,extra,reweight", [("none", {}, False), ("none", {}, True),
                                                  ("ncl", {"ncl_epochs": 0, "proj_dim": 32}, False)])
def test_without_dnp_and_ncl_equals_patchcore(tmp_path, stages, extra, reweight):
    """stages=none with reweight_per_patch=false IS PatchCore (same scores and maps, with or
    without PatchCore's eq. 7 image re-weighting); so is NCL with zero epochs through ToCoAD's
    own union-layer, trainable F. (The ncl case used to pass dnp_width, which now is an inert
    option there: stages=ncl builds no D.)"""
    weights = random_weights_file(tmp_path)
    ctx = RunContext(seed=0, weights=weights, workdir=str(tmp_path))
    train, test = batches(normal_images(8, seed=4)), batches(normal_images(4, seed=5).flip(-1))
    shared = dict(backbone="resnet18", image_size=SIZE, crop_size=None, batch_size=8, pretrain_embed_dim=64,
                  target_embed_dim=64, coreset_ratio=0.25, reweight=reweight, reweight_b=3 if reweight else 9)
    torch.manual_seed(0)
    pc = PatchCore(PatchCoreConfig(**shared), ctx)
    pc.fit(train)
    torch.manual_seed(0)
    tc = ToCoAD(ToCoADConfig(**shared, stages=stages, reweight_per_patch=False, **extra), ctx)
    tc.fit(train)
    if stages == "ncl":
        assert tc.trainer is not None and tc.trainer.D is None
        assert tc.trainer.F.layer_indices == (2, 3, 4)  # union of bank and contrastive layers, picked
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


# --- issue 13: paper-exact recipes ----------------------------------------------------------
def _tiny_trainer(**kw) -> ToCoADTrainer:
    torch.manual_seed(0)
    cfg = small_config(batch_size=4, steps_per_epoch=1, proj_dim=32, **kw)
    return ToCoADTrainer(cfg, weights="random", seed=0)


def test_freeze_epochs_train_heads_then_extractor():
    """Seed 000's schedule: no crash on a frozen stage-II step (L_neg has no trainable path
    then); F is unchanged after a frozen epoch while C's projectors and predictors train; the
    first unfrozen epoch moves F."""
    trainer = _tiny_trainer(freeze_epochs=1, ncl_lr=0.05)
    images = normal_images(4, seed=11)
    f0 = {k: v.clone() for k, v in trainer.F.model.state_dict().items()}
    c0 = {k: v.clone() for k, v in trainer.C.named_parameters()}
    trainer.fit_ncl(images, epochs=1)  # one frozen epoch
    assert all(torch.equal(f0[k], v) for k, v in trainer.F.model.state_dict().items()), "F moved while frozen"
    moved_c = {k.split(".")[0] for k, v in trainer.C.named_parameters() if not torch.equal(c0[k], v)}
    assert moved_c == {"projectors", "predictors"}
    assert math.isfinite(trainer.history["ncl_neg"][-1])  # L_neg still logged
    trainer.fit_ncl(images, epochs=2)  # a new stage II: epoch 0 frozen again, epoch 1 fine-tunes F
    assert trainer.history["ncl_extractor_trained"] == [0.0, 1.0]
    moved_f = [k for k, v in trainer.F.model.named_parameters() if not torch.equal(f0[k], v)]
    assert any(k.startswith("layer3") for k in moved_f) and any(k.startswith("layer1") for k in moved_f)


def test_neg_loss_ce_changes_L_neg_only():
    """Table 6: neg_loss=ce turns L_neg into cross-entropy; stage I's L_dis stays the focal loss."""
    import torch.nn.functional as F

    from adbench.components.losses import focal_loss

    x = normal_images(4, seed=12)
    focal, ce = _tiny_trainer(neg_loss="focal"), _tiny_trainer(neg_loss="ce")
    for t in (focal, ce):
        t.D.eval()
    dnp_batch = focal.anomalies(x)
    assert all(torch.equal(a, b) for a, b in zip(dnp_batch, ce.anomalies(x)))  # one seed, same anomalies
    assert torch.equal(focal.dnp_loss(*dnp_batch), ce.dnp_loss(*dnp_batch))  # same F, D, anomalies: same L_dis
    syn, masks = ce.anomalies(x, "tocoad/ncl")  # the synthetic batch both L_neg calls see
    l_focal, l_ce = focal.neg_loss(syn, masks), ce.neg_loss(syn, masks)
    assert not torch.isclose(l_focal, l_ce)
    with torch.no_grad():
        logits = ce.discriminate(ce.F(syn), syn.shape[-2:])
    assert torch.allclose(l_ce, F.cross_entropy(logits, masks.long()), atol=1e-6)
    assert torch.allclose(l_focal, focal_loss(logits, masks, gamma=2.0), atol=1e-6)


def test_inverse_discriminator_shape_and_parameters():
    """D = inverse WideResNet50 (Sec. 4.1) from F's channels and strides: 2 logits at input size;
    25,844,354 parameters for WRN50 layers 1-3 (the number the docstrings state); the light
    decoder keeps its 1.1 M. Works for any strides (resnet18 maps at a size no stride divides)."""
    from adbench.methods._tocoad_inverse_resnet import InverseResNet
    from adbench.methods._tocoad_networks import build_discriminator

    def count(m):
        return sum(p.numel() for p in m.parameters())

    wrn = InverseResNet([256, 512, 1024], [4, 8, 16], [3, 4, 6])
    assert count(wrn) == 25_844_354
    assert [len(s) for s in wrn.stages] == [3, 4, 6]
    assert count(build_discriminator("light", [256, 512, 1024], [4, 8, 16], width=256)) == 1_121_154
    d = build_discriminator("inverse", [64, 128, 256], [4, 8, 16], blocks=(1, 1, 2)).eval()
    feats = [torch.randn(2, 64, 15, 15), torch.randn(2, 128, 8, 8), torch.randn(2, 256, 4, 4)]  # a 60-px input
    assert d(feats, (60, 60)).shape == (2, 2, 60, 60)
    trainer = ToCoADTrainer(small_config(dnp_decoder="inverse", dnp_width=256, dnp_blocks=(1, 1, 1)), weights="random")
    assert isinstance(trainer.D, InverseResNet) and trainer.segment(normal_images(2, seed=13)).shape == (2, SIZE, SIZE)


def test_L_sym_is_equation_5_averaged_over_layers():
    """Eq. 5 as written (2 / (M (M-1)) sum_i sum_{j!=i} L_cossim, eq. 4's 1/2 factors), per head,
    then the mean over the two layer heads; M = 2 gives D(p1, SG z2) + D(p2, SG z1); the
    stop-gradient keeps the projector branch out of the gradient."""
    from adbench.methods._tocoad_networks import SiameseHeads, negative_cosine

    torch.manual_seed(0)
    heads = SiameseHeads([8, 16], dim=16).eval()

    def views(m):
        return [[torch.randn(4, 8, 3, 3), torch.randn(4, 16, 2, 2)] for _ in range(m)]

    for m in (2, 3):
        v = views(m)
        z = [heads.project(f) for f in v]
        p = [[pred(zh) for pred, zh in zip(heads.predictors, zi)] for zi in z]
        per_layer = []
        for h in range(2):
            def cossim(i, j):  # eq. 4
                return 0.5 * negative_cosine(p[i][h], z[j][h]) + 0.5 * negative_cosine(p[j][h], z[i][h])
            per_layer.append(2 / (m * (m - 1)) * sum(cossim(i, j) for i in range(m) for j in range(m) if j != i))
        want = (per_layer[0] + per_layer[1]) / 2
        assert torch.allclose(heads.loss(v), want, atol=1e-6)
        if m == 2:
            direct = [negative_cosine(p[0][h], z[1][h]) + negative_cosine(p[1][h], z[0][h]) for h in range(2)]
            assert torch.allclose(heads.loss(v), (direct[0] + direct[1]) / 2, atol=1e-6)
    # stop-gradient: the loss's gradient equals that of the same sum with z detached
    v = views(2)
    params = list(heads.projectors.parameters())
    got = torch.autograd.grad(heads.loss(v), params)
    z = [heads.project(f) for f in v]
    p = [[pred(zh) for pred, zh in zip(heads.predictors, zi)] for zi in z]
    ref = sum(negative_cosine(p[0][h], z[1][h].detach()) + negative_cosine(p[1][h], z[0][h].detach()) for h in range(2)) / 2
    for a, b in zip(got, torch.autograd.grad(ref, params)):
        assert torch.allclose(a, b, atol=1e-6)


def test_simsiam_views_rates_seeding_and_operations():
    """SimSiam's recipe: jitter p 0.8, grayscale p 0.2, blur p 0.5 (sigma in [0.1, 2], kernel
    10 % of the side), flip p 0.5, crop area in [0.2, 1]; views follow the explicit generator
    only; each operation equals torchvision's on the output."""
    import torchvision.transforms.functional as TF

    from adbench.methods._tocoad_views import SimSiamViews, ViewParams, blur_kernel_size

    aug = SimSiamViews((SIZE, SIZE))
    params = aug.sample(3000, SIZE, SIZE, torch.Generator().manual_seed(0))
    rate = {name: np.mean([fn(p) for p in params]) for name, fn in (
        ("jitter", lambda p: p.jitter is not None), ("gray", lambda p: p.grayscale),
        ("blur", lambda p: p.blur_sigma is not None), ("flip", lambda p: p.flip))}
    for name, want in (("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("flip", 0.5)):
        assert abs(rate[name] - want) < 0.03, (name, rate[name])
    sigmas = [p.blur_sigma for p in params if p.blur_sigma is not None]
    assert 0.1 <= min(sigmas) and max(sigmas) <= 2.0
    areas = [p.crop[2] * p.crop[3] / SIZE**2 for p in params]
    assert 0.18 <= min(areas) and max(areas) <= 1.0
    assert (blur_kernel_size(224), blur_kernel_size(SIZE), aug.kernel) == (23, 7, 7)

    x = normal_images(4, seed=14)
    a = aug(x, torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # global state must not matter
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape

    whole = (0, 0, SIZE, SIZE)
    img = x[0]
    flip = ViewParams(whole, None, (0, 1, 2, 3), False, None, True)
    assert torch.equal(aug.apply_one(img, flip), img.flip(-1))
    blur = ViewParams(whole, None, (0, 1, 2, 3), False, 1.5, False)
    assert torch.allclose(aug.apply_one(img, blur), TF.gaussian_blur(img, [7, 7], [1.5, 1.5]), atol=1e-6)
    gray = aug.apply_one(img, ViewParams(whole, None, (0, 1, 2, 3), True, None, False))
    assert torch.allclose(gray, TF.rgb_to_grayscale(img, 3), atol=1e-6)
    crop = aug.apply_one(img, ViewParams((5, 7, 30, 40), None, (0, 1, 2, 3), False, None, False))
    assert torch.allclose(crop, TF.resized_crop(img, 5, 7, 30, 40, [SIZE, SIZE], antialias=True), atol=1e-6)
    factors, order = (1.3, 0.7, 1.2, 0.07), (3, 0, 2, 1)
    jitter = aug.apply_one(img, ViewParams(whole, factors, order, False, None, False))
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    want = img
    for i in order:
        want = ops[i](want, factors[i])
    assert torch.allclose(jitter, want, atol=1e-5)
    plain = aug.apply_one(img, ViewParams(whole, None, (0, 1, 2, 3), False, None, False))
    assert torch.allclose(plain, img, atol=1e-6)


def test_cutout_generator_erases_a_box():
    """generator=cutout (seed 000): the mask is one axis-aligned box, filled grey; every pixel
    outside it is the input's; the trainer builds it from the config."""
    from adbench.methods._tocoad_training import AnomalyGenerator

    g = AnomalyGenerator("cutout", rotate_degrees=0.0, rotate90=False)
    x = normal_images(6, seed=15)
    out, masks = g(x, np.random.default_rng(0))
    for img, o, m in zip(x, out, masks):
        rows, cols = m.any(dim=1).nonzero(), m.any(dim=0).nonzero()
        box = torch.zeros_like(m)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(m, box) and 0 < m.float().mean() < 0.5
        assert torch.equal(o[:, ~m], img[:, ~m])
        assert torch.all(o[:, m] == 0.5)
    trainer = ToCoADTrainer(small_config(generator="cutout", cutout_fill="random"), weights="random")
    assert (trainer.G.kind, trainer.G.cutout_fill) == ("cutout", "random")


@pytest.mark.parametrize("lam", [0.1, 0.2, 0.5, 0.8, 0.9])
@pytest.mark.parametrize("neg_loss", ["focal", "ce"])
def test_table6_rows_are_reachable(lam, neg_loss):
    cfg = resolve_config(ToCoADConfig, ToCoAD.PROFILES, "paper", {"lam": str(lam), "neg_loss": neg_loss})
    assert (cfg.lam, cfg.neg_loss, cfg.stages) == (lam, neg_loss, "both")


def test_convnext_profile_keeps_the_resnet_strides():
    """timm ConvNeXt's feature index i has stride 2**(i+2): the profile's indices give the
    strides of the paper's WRN50 layers (bank 8, 16; D 4, 8, 16; contrastive 16, 32)."""
    import timm

    cfg = resolve_config(ToCoADConfig, ToCoAD.PROFILES, "convnext")
    with torch.device("meta"):  # the architecture only: no weights, no memory
        f = timm.create_model(cfg.backbone, pretrained=False, features_only=True)
    f.layer_indices, f.strides = (0, 1, 2, 3), f.feature_info.reduction()  # what Backbone reads
    assert f.strides == [4, 8, 16, 32]
    stride = dict(zip(f.layer_indices, f.strides))
    assert [stride[i] for i in cfg.layers] == [8, 16]
    assert [stride[i] for i in cfg.dnp_layers] == [4, 8, 16]
    assert [stride[i] for i in cfg.contrastive_layers] == [16, 32]


@pytest.mark.parametrize("overrides,option", [
    ({"stages": "ncl", "lam": "0.3"}, "lam"),
    ({"stages": "ncl", "neg_loss": "ce"}, "neg_loss"),
    ({"stages": "ncl", "dnp_epochs": "5"}, "dnp_epochs"),
    ({"stages": "none", "freeze_epochs": "2"}, "freeze_epochs"),
    ({"generator": "cutpaste", "anomaly_source": "/textures"}, "anomaly_source"),
    ({"patch_transform": "pepper"}, "patch_transform"),
    ({"generator": "patch", "cutout_fill": "mean"}, "cutout_fill"),
    ({"byol_ema": "0.99"}, "byol_ema"),
    ({"reweight": "true"}, "reweight"),
    ({"num_neighbors": "3"}, "num_neighbors"),
    ({"reweight_per_patch": "false", "reweight_b": "4"}, "reweight_b"),
    ({"dnp_width": "64"}, "dnp_width"),
    ({"dnp_decoder": "light", "dnp_blocks": "1,1,1"}, "dnp_blocks"),
    ({"dnp_epochs": "50", "dnp_gamma": "0.5"}, "dnp_gamma"),
    ({"contrastive_layers": "4", "contrastive_concat": "true"}, "contrastive_concat"),
])
def test_inert_options_are_errors(overrides, option):
    """No silent options: a non-default value of an option that does nothing in this
    configuration is a one-line ConfigError naming it, raised while the config resolves."""
    from adbench.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        resolve_config(ToCoADConfig, ToCoAD.PROFILES, "paper", overrides)
    message = str(info.value)
    assert message.startswith(f"--set {option}=") and "\n" not in message and "no effect" in message
    # the same configuration without the inert option is fine
    resolve_config(ToCoADConfig, ToCoAD.PROFILES, "paper", {k: v for k, v in overrides.items() if k != option})


def test_profiles_pass_their_own_inert_check():
    for profile in ToCoAD.PROFILES:
        resolve_config(ToCoADConfig, ToCoAD.PROFILES, profile)
