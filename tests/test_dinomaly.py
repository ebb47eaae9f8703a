"""Dinomaly (issue 26): StableAdamW and the warm-up cosine schedule against independent
references, the hard-mining gradient, linear attention, detection with a fully random encoder
and a unified run over the synthetic categories from the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from adbench_testkit import stripes_with_blobs
from adbench.cli import main
from adbench.config import resolve_config
from adbench.detector import RunContext
from adbench.errors import ConfigError
from adbench.methods._dinomaly_networks import LinearAttention, Reconstructor
from adbench.methods._dinomaly_scoring import (evaluation_map, gaussian_kernel, hard_mining_cosine_loss,
                                               hard_mining_fraction, top_fraction_mean)
from adbench.registry import METHODS
from adbench.run.worker import seed_everything
from adbench.training.stable_adamw import StableAdamW
from adbench.training.warm_cosine import WarmCosineLR, warm_cosine_value
from test_anomalydino import auroc, batches, randomise


def make_dinomaly(profile="quick", checkpoints=None, **overrides):
    cls = METHODS.get("dinomaly")
    config = resolve_config(cls.Config, cls.PROFILES, profile, overrides, method="dinomaly")
    kwargs = {"checkpoints": checkpoints} if checkpoints is not None else {}
    return cls(config, RunContext(seed=0, weights="random", profile=profile, **kwargs))


# --- the optimiser and the schedule --------------------------------------------------------------
def test_stable_adamw_is_adamw_when_the_update_is_not_clipped_and_shrinks_it_when_it_is():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(50)), None
    b = torch.nn.Parameter(a.detach().clone())
    ours = StableAdamW([a], lr=1e-2, weight_decay=0.1, eps=1e-8, clip_threshold=1e9)
    ref = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.1, eps=1e-8)
    for _ in range(5):
        g = torch.randn(50)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step(), ref.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # first step: m/denom = g / (|g| + eps) ~ sign(g), RMS ~ 1; with clip_threshold 0.5 the step halves
    p, q = torch.nn.Parameter(torch.zeros(50)), torch.nn.Parameter(torch.zeros(50))
    half, full_step = StableAdamW([p], lr=0.1, weight_decay=0.0, clip_threshold=0.5), StableAdamW([q], lr=0.1, weight_decay=0.0)
    g = torch.randn(50)
    p.grad, q.grad = g.clone(), g.clone()
    half.step(), full_step.step()
    ratio = (g / (g.abs() + 1e-8)).norm() / 50 ** 0.5 / 0.5
    torch.testing.assert_close(p * float(ratio), q, rtol=1e-5, atol=1e-7)
    assert float(q.detach().abs().max()) == pytest.approx(0.1, rel=1e-5)


def test_warm_cosine_schedule_matches_numpy_and_starts_at_zero():
    total, warmup, base, final = 10000, 100, 2e-3, 2e-4
    expected = np.concatenate([np.linspace(0, base, warmup),
                               final + 0.5 * (base - final) * (1 + np.cos(np.pi * np.arange(total - warmup) / (total - warmup)))])
    ours = np.array([warm_cosine_value(i, base=base, final=final, total=total, warmup=warmup) for i in range(total)])
    assert np.array_equal(ours, expected)
    assert warm_cosine_value(total + 5, base=base, final=final, total=total, warmup=warmup) == final
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmCosineLR(opt, base=base, final=final, total=total, warmup=warmup)
    seen = []
    for _ in range(3):
        seen.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert seen == [0.0, expected[1], expected[2]]


# --- the loss and the map --------------------------------------------------------------------------
def test_hard_mining_scales_only_the_easy_points_gradient():
    torch.manual_seed(0)
    enc = [torch.randn(2, 8, 4, 4)]
    base = torch.randn(2, 8, 4, 4)
    grads = {}
    for factor in (1.0, 0.1):
        rebuilt = base.clone().requires_grad_(True)
        out = rebuilt * 1.0  # the hook sits on a non-leaf, as on the decoder's group
        loss = hard_mining_cosine_loss(enc, [out], p=0.5, factor=factor)
        loss.backward()
        grads[factor] = rebuilt.grad
    points = 1 - F.cosine_similarity(enc[0], base, dim=1)  # [2, 4, 4]
    threshold = torch.topk(points.flatten(), k=16).values[-1]
    easy = (points < threshold).unsqueeze(1).expand_as(base)
    assert easy.sum() == 16 * 8  # the 16 points below the 16th largest of 32
    torch.testing.assert_close(grads[0.1][easy], grads[1.0][easy] * 0.1)
    assert torch.equal(grads[0.1][~easy], grads[1.0][~easy])
    # the value is the global cosine distance per image, whatever p
    flat = 1 - F.cosine_similarity(enc[0].flatten(1), base.flatten(1), dim=1).mean()
    torch.testing.assert_close(hard_mining_cosine_loss(enc, [base], p=0.9, factor=0.1), flat)
    assert [hard_mining_fraction(i) for i in (0, 500, 1000, 5000)] == [0.0, 0.45, 0.9, 0.9]


def test_linear_attention_is_elu_kernel_attention():
    torch.manual_seed(0)
    attn = LinearAttention(12, heads=3).double()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 3, 4).permute(2, 0, 3, 1, 4)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    weights = q @ k.transpose(-2, -1)  # [B, h, N, N], non-negative
    naive = (weights / weights.sum(dim=-1, keepdim=True)) @ v
    expected = attn.proj(naive.transpose(1, 2).reshape(2, 7, 12))
    torch.testing.assert_close(attn(x), expected, rtol=1e-10, atol=1e-12)


def test_groups_pair_shallow_encoder_layers_with_the_last_decoder_blocks():
    torch.manual_seed(0)
    net = Reconstructor(8, 2, decoder_blocks=4, bottleneck_dropout=0.0, encoder_groups=((0, 1), (2, 3)),
                        decoder_groups=((0, 1), (2, 3))).eval()
    layers = [torch.randn(1, 1 + 4, 8) for _ in range(4)]
    seen = []
    for block in net.decoder:
        block.register_forward_hook(lambda m, i, o: seen.append(o))
    enc, dec = net(layers, prefix=1, grid=(2, 2))
    assert [e.shape for e in enc] == [torch.Size([1, 8, 2, 2])] * 2
    torch.testing.assert_close(enc[0], ((layers[0] + layers[1]) / 2)[:, 1:].permute(0, 2, 1).reshape(1, 8, 2, 2))
    torch.testing.assert_close(dec[0], ((seen[3] + seen[2]) / 2)[:, 1:].permute(0, 2, 1).reshape(1, 8, 2, 2))


def test_map_smoothing_and_score_follow_the_official_evaluation():
    kernel = gaussian_kernel(5, 4.0)[0, 0].double()
    x = torch.arange(5.0, dtype=torch.float64) - 2
    ref = torch.exp(-(x.view(-1, 1) ** 2 + x.view(1, -1) ** 2) / 32)
    torch.testing.assert_close(kernel, ref / ref.sum(), rtol=1e-6, atol=1e-8)
    raw = torch.zeros(1, 1, 8, 8)
    raw[0, 0, 4, 4] = 1.0
    out = evaluation_map(raw, map_size=16)
    assert out.shape == (1, 1, 16, 16) and out[0, 0, 0, 0] == 0  # zero padding, no spill to the corner
    maps = torch.arange(200.0).view(2, 1, 10, 10)
    assert top_fraction_mean(maps, 0.05).tolist() == [np.mean(range(95, 100)), np.mean(range(195, 200))]


# --- the method ------------------------------------------------------------------------------------
def test_detects_blobs_on_stripes_with_a_fully_random_encoder():
    seed_everything(0, torch.device("cpu"))
    det = make_dinomaly(image_size=112, crop_size=None, iterations=20, batch_size=8)
    randomise(det.encoder.model)  # LayerScale ~ N(1, 0.1): the blocks do something
    rng = np.random.default_rng(0)
    train, test, labels, masks = stripes_with_blobs(rng, 16, 20, size=112)
    det.fit(batches(torch.from_numpy(np.stack(train)), "stripes"))
    pred = det.predict(batches(torch.from_numpy(np.stack(test)), "stripes", size=32)[0])
    scores, maps = pred.numpy()
    assert maps.shape == (20, 112, 112) and np.isfinite(maps).all()
    image, pixel = auroc(scores, labels), auroc(maps, np.stack(masks))
    print(f"stripes, fully random ViT-S/14 reg4 at 112 px, 20 iterations: image AUROC {image:.3f}, pixel {pixel:.3f}")
    assert image >= 0.7 and pixel >= 0.7, (image, pixel)
    facts = det.record_extras()
    assert facts["iterations"] == facts["iterations_done"] == 20 and facts["adam_eps"] == 1e-8
    assert facts["protocol_defaults"].startswith("single") and "random_weights_note" in facts


def test_config_errors_and_protocol_defaults():
    for bad in ({"layers_per_group": 3}, {"decoder_blocks": 4}, {"hard_mining_p": 1.0}, {"iterations": 0},
                {"target_layers": (5, 2)}):
        with pytest.raises(ConfigError):
            make_dinomaly(**bad)
    cls = METHODS.get("dinomaly")
    config = resolve_config(cls.Config, cls.PROFILES, "quick", {"image_size": 56, "crop_size": None}, method="dinomaly")
    from adbench.dataset import CategoryInfo

    two = {"a": CategoryInfo(name="a"), "b": CategoryInfo(name="b")}
    unified = cls(config, RunContext(seed=0, weights="random", profile="quick", categories=two))
    single = cls(config, RunContext(seed=0, weights="random", profile="quick"))
    assert (unified.adam_eps, single.adam_eps) == (1e-10, 1e-8)
    paper = resolve_config(cls.Config, cls.PROFILES, "paper", {}, method="dinomaly")
    assert (paper.image_size, paper.crop_size, paper.batch_size, paper.iterations) == (448, 392, 16, None)


def test_unified_run_over_the_synthetic_categories(tmp_path):
    res = tmp_path / "res"
    out = CliRunner().invoke(main, ["run", "-q", "--method", "dinomaly", "--dataset", "synthetic", "--protocol", "unified",
                                    "--profile", "quick", "--weights", "random", "--results", str(res),
                                    "--set", "image_size=56", "--set", "crop_size=null", "--set", "iterations=3",
                                    "--set", "batch_size=4"])
    assert out.exit_code == 0, out.output
    records = [json.loads(p.read_text()) for p in res.rglob("*.json")]
    records = [r for r in records if r.get("method") == "dinomaly"]
    assert len(records) >= 3 and {r["protocol"] for r in records} == {"unified"}
    for r in records:
        extras = r["record_extras"]
        assert r["status"] == "ok" and extras["iterations_done"] == 3 and extras["adam_eps"] == 1e-10, r
        assert set(r["training_categories"]) == {x["category"] for x in records}
