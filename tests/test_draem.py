"""DRAEM on generated data: training pairs, texture ops, learning, detection, registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from adbench.config import resolve_config
from adbench.detector import RunContext
from adbench.errors import DataError
from adbench.registry import METHODS

from adbench_testkit import as_batches, disk_category  # test_training_resume imports as_batches from here


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stripes(g: torch.Generator, size: int) -> torch.Tensor:
    yy, _ = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    phase = torch.rand(1, generator=g).item() * 6.28
    base = 0.5 + 0.3 * torch.sin(yy / 3.0 + phase)
    img = torch.stack([base, 0.8 * base, 0.6 * base + 0.2])
    return (img + 0.02 * torch.randn(3, size, size, generator=g)).clamp(0, 1)


def stripes_category(n_train: int, n_test: int, size: int = 64, seed: int = 0):
    """Normal: horizontal stripes with a random phase plus a little noise. Anomalous test
    images: a disk of random colour (radius 4-8 px) pasted at a random place."""
    return disk_category(_stripes, n_train, n_test, size=size, seed=seed, radius=(4, 4), margin=8)


def make(profile: str = "quick", **overrides):
    cls = METHODS.get("draem")
    cfg = resolve_config(cls.Config, cls.PROFILES, profile, overrides, method="draem")
    return cls(cfg, RunContext(seed=0))


def test_registered_with_paper_values():
    cls = METHODS.get("draem")
    paper = resolve_config(cls.Config, cls.PROFILES, "paper")
    assert (paper.image_size, paper.batch_size, paper.epochs, paper.lr) == (256, 8, 700, 1e-4)
    assert (paper.recon_width, paper.disc_width, paper.lr_milestones, paper.lr_gamma) == (128, 64, (0.8, 0.9), 0.2)
    assert paper.score_filter == 21 and paper.beta_max == 0.8 and paper.rotate_degrees == 45.0


def test_training_pair_is_consistent():
    det = make(rotate_prob=0.5)
    g = np.random.default_rng(0)
    images = (torch.rand(40, 3, 48, 48, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    normal, augmented, mask = det.sampler.batch(images, g)
    assert normal.shape == augmented.shape == (40, 3, 48, 48) and mask.shape == (40, 48, 48) and mask.dtype == torch.bool
    has = mask.flatten(1).any(1)
    assert 0.2 < has.float().mean() < 0.7  # about half anomaly-free (plus empty Perlin masks)
    differs = (augmented != normal).any(1)  # [N, H, W]
    assert not (differs & ~mask).any(), "pixels outside the mask must equal the normal image"
    for i in torch.nonzero(has).flatten():
        assert differs[i][mask[i]].float().mean() > 0.5, "the masked region must actually change"
    assert torch.equal(augmented[~has], normal[~has])
    # rotated normals differ from the stored image, unrotated ones equal it
    same_as_input = (normal * 255).round().to(torch.uint8).eq(images).flatten(1).all(1)
    assert 0 < int(same_as_input.sum()) < 40


def test_texture_augmentation_uses_three_distinct_library_ops():
    from adbench.methods.draem import TEXTURE_OPS, augment_texture

    tex = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    seen = set()
    for seed in range(20):
        out, names = augment_texture(tex, np.random.default_rng(seed))
        assert len(set(names)) == 3 and set(names) <= set(TEXTURE_OPS)
        assert out.shape == tex.shape and 0 <= out.min() and out.max() <= 1
        seen.update(names)
    assert seen == set(TEXTURE_OPS)


def test_anomaly_source_folder_and_record(tmp_path):
    from PIL import Image

    assert make().record_extras()["anomaly_source"] == "procedural"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "t.png")
    det = make(anomaly_source=str(tmp_path))
    assert det.record_extras()["anomaly_source"] == f"dtd:{tmp_path}"
    assert det.source.sample((16, 16), np.random.default_rng(0)).shape == (3, 16, 16)
    with pytest.raises(DataError):
        make(anomaly_source=str(tmp_path / "missing"))


def test_networks_shapes_and_paper_widths():
    from adbench.methods.draem import DiscriminativeSubNetwork, ReconstructiveSubNetwork

    x = torch.rand(2, 3, 64, 64)
    assert ReconstructiveSubNetwork(4)(x).shape == (2, 3, 64, 64)
    assert DiscriminativeSubNetwork(4)(torch.cat([x, x], 1)).shape == (2, 2, 64, 64)
    with torch.device("meta"):  # official widths 128 / 64: about 97 M parameters in total
        paper = [ReconstructiveSubNetwork(128), DiscriminativeSubNetwork(64)]
    assert 90e6 < sum(p.numel() for m in paper for p in m.parameters()) < 105e6


def test_learns_and_detects_on_generated_category():
    torch.manual_seed(0)
    train, test, labels, masks = stripes_category(48, 40, size=64)
    det = make(image_size=64, recon_width=8, disc_width=8, epochs=12, batch_size=8, score_filter=5)
    det.fit(as_batches(train))
    assert det.epochs_run == 12
    first, last = np.mean(det.loss_history[:2]), np.mean(det.loss_history[-2:])
    assert last < 0.8 * first, det.loss_history
    pred = det.predict(as_batches(test, 40)[0])
    scores, maps = pred.numpy()
    assert maps.shape == (40, 64, 64) and np.isfinite(scores).all()
    assert roc_auc_score(labels.numpy(), scores) >= 0.7
    assert det.record_extras()["final_train_loss"] == det.loss_history[-1]


def test_max_steps_caps_whole_epochs():
    from adbench.methods.draem import effective_epochs

    assert effective_epochs(700, None, 209, 8) == 700
    assert effective_epochs(40, 1000, 209, 8) == 37  # 27 steps per epoch
    assert effective_epochs(40, 1000, 802, 8) == 9
    assert effective_epochs(40, 1000, 20, 8) == 40
    assert effective_epochs(40, 10, 802, 8) == 1


# --- the official code's 10-op augmenter pool (augmenter_pool=official10) ---------------------
def _texture(size: int = 32, seed: int = 0, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ((low + (high - low) * torch.rand(3, size, size, generator=g)) * 255).round().to(torch.uint8)


def _op(name):
    from adbench.methods.draem import OFFICIAL_OPS

    return OFFICIAL_OPS[name][1]


def test_official_pool_pixel_ops_follow_their_definitions():
    t = _texture()
    assert torch.equal(_op("invert")(t, {}), 255 - t)
    for bits in range(1, 9):  # keep the `bits` highest bits (PIL posterize)
        out = _op("posterize")(t, {"bits": bits})
        assert torch.equal(out, t & (0xFF << (8 - bits) & 0xFF)) and len(out.unique()) <= 2**bits
    out = _op("solarize")(t, {"apply": True, "threshold": 90.4})
    assert torch.equal(out, torch.where(t >= 91, 255 - t, t))
    assert torch.equal(_op("solarize")(t, {"apply": False, "threshold": 90.4}), t)
    out = _op("gamma_contrast")(t, {"gamma": np.array([0.5, 1.0, 2.0])})  # one gamma per channel
    for c, gamma in enumerate((0.5, 1.0, 2.0)):
        expected = 255 * (t[c].float() / 255) ** gamma
        assert (out[c].float() - expected).abs().max() <= 1.0
    assert torch.equal(out[1], t[1])


def test_official_pool_pil_ops_follow_their_definitions():
    from PIL import ImageEnhance

    from adbench.methods.draem import _from_pil, _to_pil

    t = _texture()
    for factor in (0.0, 0.7, 2.0):  # PIL ImageEnhance.Sharpness, what pillike.EnhanceSharpness is
        pil = _from_pil(ImageEnhance.Sharpness(_to_pil(t)).enhance(factor))
        assert (_op("sharpness")(t, {"factor": factor}).int() - pil.int()).abs().max() <= 1
    assert torch.equal(_op("sharpness")(t, {"factor": 1.0}), t)
    for cutoff in (0, 5, 20):  # per channel: `cutoff` % of the darkest / lightest pixels clip to 0 / 255
        out = _op("autocontrast")(t, {"cutoff": cutoff})
        for c in range(3):
            assert out[c].min() == 0 and out[c].max() == 255
            assert cutoff / 100 - 0.01 <= float((out[c] == 0).float().mean()) <= cutoff / 100 + 0.02
            order = torch.argsort(t[c].flatten().float(), stable=True)  # monotone mapping
            assert torch.all(out[c].flatten()[order].diff().int() >= 0)
    low = _texture(128, low=0.4, high=0.55)  # equalize flattens a low-contrast histogram
    out = _op("equalize")(low, {})
    for c in range(3):
        x = out[c].flatten().float()
        quarters = [float(((x >= a) & (x < a + 64)).float().mean()) for a in (0, 64, 128, 192)]
        assert all(0.18 < q < 0.32 for q in quarters), quarters
        assert max(abs(float((x < v).float().mean()) - float(v) / 255) for v in x.unique()) < 0.05


def test_official_pool_geometric_and_colour_ops_follow_their_definitions():
    import kornia.color as KC

    from adbench.methods.draem import BRIGHTNESS_SPACES

    t = _texture()
    assert torch.equal(_op("rotate")(t, {"angle": 90.0}), torch.rot90(t, 1, dims=(1, 2)))
    corner = _op("rotate")(t, {"angle": 45.0})
    assert torch.equal(corner[:, 0, 0], torch.zeros(3, dtype=torch.uint8))  # black fill
    grey = _texture(32, seed=1, low=0.35, high=0.65)  # mild colours: no gamut clipping
    for space, (forward, _, channel, scale) in BRIGHTNESS_SPACES.items():
        to_space = getattr(KC, forward)
        before = to_space(grey.float() / 255)
        for mul, add, mul_first in ((1.15, 12.0, True), (0.85, -20.0, False)):
            out = _op("multiply_add_brightness")(grey, {"space": space, "mul": mul, "add": add, "mul_first": mul_first})
            after = to_space(out.float() / 255)
            b = before[channel] / scale
            expected = (b * mul + add / 255) if mul_first else (b + add / 255) * mul
            assert (after[channel] / scale - expected).abs().mean() < 0.01, space
            others = [c for c in range(3) if c != channel and not (space in ("HSV", "HLS") and c == 0)]
            for c in others:  # chroma / saturation stay (hue is undefined for greys: skipped)
                assert (after[c] - before[c]).abs().mean() < 0.03 * max(1.0, float(before[c].abs().max())), space
    colourful = torch.stack([_texture(32, 2, 0.6, 0.9)[0], _texture(32, 3, 0.1, 0.3)[1], _texture(32, 4, 0.3, 0.5)[2]])
    h, s, v = KC.rgb_to_hsv(colourful.float() / 255)
    out = _op("add_hue_saturation")(colourful, {"hue": 40, "saturation": -30})
    h2, s2, v2 = KC.rgb_to_hsv(out.float() / 255)
    turn = torch.remainder(h2 - h - 2 * np.pi * 40 / 255 + np.pi, 2 * np.pi) - np.pi  # circular difference
    assert turn.abs().mean() < 0.03
    assert (s2 - (s - 30 / 255)).abs().mean() < 0.01 and (v2 - v).abs().mean() < 0.01


def test_official_pool_parameters_are_drawn_from_the_official_ranges():
    from adbench.methods.draem import BRIGHTNESS_SPACES, OFFICIAL_OPS

    assert list(OFFICIAL_OPS) == ["gamma_contrast", "multiply_add_brightness", "sharpness", "add_hue_saturation",
                                  "solarize", "posterize", "invert", "autocontrast", "equalize", "rotate"]
    rng = np.random.default_rng(0)
    draws = {name: [sample(rng) for _ in range(400)] for name, (sample, _) in OFFICIAL_OPS.items()}
    gammas = np.array([d["gamma"] for d in draws["gamma_contrast"]])
    assert gammas.shape == (400, 3) and 0.5 <= gammas.min() and gammas.max() <= 2.0
    assert np.mean(gammas[:, 0] != gammas[:, 1]) == 1.0  # per channel
    bright = draws["multiply_add_brightness"]
    assert all(0.8 <= d["mul"] <= 1.2 and -30 <= d["add"] <= 30 for d in bright)
    assert {d["space"] for d in bright} == set(BRIGHTNESS_SPACES)
    assert 0.4 < np.mean([d["mul_first"] for d in bright]) < 0.6
    assert all(0 <= d["factor"] <= 2 for d in draws["sharpness"])
    hue = [d["hue"] for d in draws["add_hue_saturation"]]
    sat = [d["saturation"] for d in draws["add_hue_saturation"]]
    assert min(hue) == min(sat) == -50 and max(hue) == max(sat) == 50 and hue != sat
    assert 0.4 < np.mean([d["apply"] for d in draws["solarize"]]) < 0.6
    assert all(32 <= d["threshold"] <= 128 for d in draws["solarize"])
    assert {d["bits"] for d in draws["posterize"]} == set(range(1, 9))
    assert {d["cutoff"] for d in draws["autocontrast"]} == set(range(21))
    assert all(-45 <= d["angle"] <= 45 for d in draws["rotate"])


def test_official_pool_draws_three_distinct_ops_seeded():
    from adbench.methods.draem import OFFICIAL_OPS, augment_texture

    tex = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    seen, orders = set(), set()
    for seed in range(120):
        out, names = augment_texture(tex, np.random.default_rng(seed), 3, "official10")
        again, names_again = augment_texture(tex, np.random.default_rng(seed), 3, "official10")
        assert names == names_again and torch.equal(out, again)  # the rng decides everything
        assert len(set(names)) == 3 and set(names) <= set(OFFICIAL_OPS)
        assert out.shape == tex.shape and 0 <= out.min() and out.max() <= 1
        seen.update(names)
        orders.add(tuple(names))
    assert seen == set(OFFICIAL_OPS)
    assert any(tuple(sorted(o)) != o for o in orders)  # applied in the drawn (random) order


def test_paper7_pool_is_unchanged():
    """Outputs pinned before the official10 pool was added: the paper profile's texture ops and
    their random draws are bit for bit what they were (the pin depends on this file and
    torchvision's ops only; the Perlin / texture components are not part of it)."""
    import hashlib

    from adbench.methods.draem import augment_texture

    tex = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(3))
    h = hashlib.sha256()
    for seed in range(12):
        out, names = augment_texture(tex, np.random.default_rng(seed))
        h.update((out * 255).round().to(torch.uint8).numpy().tobytes())
        h.update(",".join(names).encode())
    assert h.hexdigest() == "a6db33af431f5264992633483813fe6e8764dfbd9943d0ad14024450e7f629a0"


def test_augmenter_pool_changes_only_the_texture():
    """Same seed, either pool: the normal image (what the reconstruction must reproduce) is the
    same, pixels outside the mask equal it, and only the pasted texture differs."""
    det7, det10 = make(rotate_prob=0.5), make(rotate_prob=0.5, augmenter_pool="official10")
    images = (torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    textures_differ = 0
    for i, image in enumerate(images):
        n7, a7, m7 = det7.sampler(image, np.random.default_rng(i))
        n10, a10, m10 = det10.sampler(image, np.random.default_rng(i))
        assert torch.equal(n7, n10)
        for normal, augmented, mask in ((n7, a7, m7), (n10, a10, m10)):
            assert torch.equal(augmented[:, ~mask], normal[:, ~mask])
        textures_differ += int(m10.any() and not torch.equal(a7, a10))
    assert textures_differ >= 3


# --- no silent options -------------------------------------------------------------------------
def _resolve(**overrides):
    cls = METHODS.get("draem")
    return resolve_config(cls.Config, cls.PROFILES, "paper", overrides, method="draem")


def test_inert_options_are_errors_naming_the_option():
    from adbench.errors import ConfigError

    for ok in (dict(anomaly_prob=0), dict(rotate_prob=0), dict(lr_milestones=""), dict(lr_gamma=1),
               dict(texture_ops=0), dict(texture_ops=10, augmenter_pool="official10"), dict(anomaly_source=None)):
        _resolve(**ok)  # switching a feature off, or a default that follows it, is fine
    cases = [
        (dict(anomaly_prob=0, texture_ops=2), "--set texture_ops=2 has no effect: anomaly_prob=0"),
        (dict(anomaly_prob=0, beta_max=0.5), "--set beta_max=0.5 has no effect"),
        (dict(anomaly_prob=0, anomaly_source="/tmp"), "--set anomaly_source=/tmp has no effect"),
        (dict(texture_ops=0, augmenter_pool="official10"),
         "--set augmenter_pool=official10 has no effect: texture_ops=0"),
        (dict(rotate_prob=0, rotate_degrees=90), "--set rotate_degrees=90.0 has no effect: rotate_prob=0"),
        (dict(lr_milestones="", lr_gamma=0.5), "--set lr_gamma=0.5 has no effect"),
        (dict(lr_gamma=1, lr_milestones="0.5"), "--set lr_milestones=0.5 has no effect: lr_gamma=1"),
        (dict(texture_ops=8), "--set texture_ops=8: must be 0..7, the size of augmenter_pool=paper7"),
        (dict(texture_ops=11, augmenter_pool="official10"), "must be 0..10"),
        (dict(rotate_prob=1.5), "--set rotate_prob=1.5: must be a probability"),
        (dict(lr_milestones="0.8,1.2"), "--set lr_milestones=0.8,1.2: fractions of the epochs"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as info:
            _resolve(**overrides)
        assert len(info.value.problems) == 1 and message in info.value.problems[0], (overrides, info.value.problems)
    with pytest.raises(ConfigError) as info:  # several at once: one line each
        _resolve(anomaly_prob=0, texture_ops=2, beta_max=0.5, rotate_prob=0, rotate_degrees=10)
    named = [p.split("=")[0] for p in info.value.problems]
    assert named == ["--set beta_max", "--set texture_ops", "--set rotate_degrees"]
    for profile in METHODS.get("draem").PROFILES:  # no profile sets an inert option
        resolve_config(METHODS.get("draem").Config, METHODS.get("draem").PROFILES, profile)
