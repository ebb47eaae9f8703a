"""Synthetic anomaly generators: masks match the changed pixels, parameters are the papers',
randomness comes only from the explicit generator."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.components import synth as S
from adbench.components.gde import GaussianDensity
from adbench.errors import DataError


def _image(seed: int = 0, size: int = 96) -> torch.Tensor:
    """A busy texture, so a pasted patch almost never equals what it covers."""
    return S.procedural_texture((size, size), np.random.default_rng(seed), kind="fractal")


OTHER = _image(1)

GENERATORS = {
    "cutout_grey": lambda x, g: S.cutout(x, g, fill="grey"),
    "cutout_mean": lambda x, g: S.cutout(x, g, fill="mean"),
    "cutout_random": lambda x, g: S.cutout(x, g, fill="random"),
    "cutpaste": lambda x, g: S.cutpaste(x, g),
    "cutpaste_pepper": lambda x, g: S.cutpaste(x, g, patch_transform="pepper"),
    "cutpaste_other_image": lambda x, g: S.cutpaste(x, g, source=OTHER),
    "cutpaste_scar": lambda x, g: S.cutpaste_scar(x, g),
    "scar_cutout": lambda x, g: S.scar_cutout(x, g),
    "confetti": lambda x, g: S.confetti(x, g),
    "cutmix": lambda x, g: S.cutmix(x, OTHER, g),
    "nsa": lambda x, g: S.nsa_patch(x, g, source=OTHER),
    "nsa_mixed": lambda x, g: S.nsa_patch(x, g, source=OTHER, mode="mixed"),
    "perlin_texture": lambda x, g: S.perlin_texture_anomaly(x, S.procedural_texture(x.shape[-2:], g), g),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_mask_is_the_changed_region(name):
    image = _image()
    for seed in range(3):
        out, mask = GENERATORS[name](image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == image.dtype
        assert mask.shape == image.shape[-2:] and mask.dtype == torch.bool
        assert mask.any(), f"{name}: empty mask"
        changed = (out != image).any(dim=0)
        assert not changed[~mask].any(), f"{name}: pixels outside the mask changed"
        assert changed[mask].float().mean() > 0.9, f"{name}: most pixels inside the mask should change"
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(image, _image()), "generators must not modify their input"


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_are_reproducible(name):
    image = _image()
    a, ma = GENERATORS[name](image, np.random.default_rng(7))
    b, mb = GENERATORS[name](image, np.random.default_rng(7))
    assert torch.equal(a, b) and torch.equal(ma, mb)
    c, mc = GENERATORS[name](image, torch.Generator().manual_seed(7))
    d, md = GENERATORS[name](image, torch.Generator().manual_seed(7))
    assert torch.equal(c, d) and torch.equal(mc, md)


def test_cutpaste_parameters_follow_the_paper():
    rng = np.random.default_rng(0)
    areas, aspects = [], []
    for _ in range(2000):
        h, w = S.patch_size((256, 256), rng)
        areas.append(h * w / 256**2)
        aspects.append(w / h)
    areas, aspects = np.array(areas), np.array(aspects)
    assert 0.017 < areas.min() and areas.max() < 0.16  # (0.02, 0.15) up to rounding
    assert 0.28 < aspects.min() < 0.4 and 2.8 < aspects.max() < 3.5
    assert 0.4 < (aspects < 1).mean() < 0.6  # both sides of (0.3, 1) U (1, 3.3)
    # the box lies fully inside the image wherever it is pasted
    image = _image(size=64)
    for seed in range(50):
        _, mask = S.cutpaste(image, np.random.default_rng(seed))
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) == mask.sum()


def test_scar_size_and_rotation():
    image = _image(size=128)
    sizes = []
    for seed in range(200):
        _, mask = S.cutpaste_scar(image, np.random.default_rng(seed), rotation=(0.0, 0.0))
        ys, xs = torch.nonzero(mask, as_tuple=True)
        sizes.append((int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)))
    lengths, widths = zip(*sizes)
    assert min(widths) >= 2 and max(widths) <= 16 and min(lengths) >= 10 and max(lengths) <= 25
    assert max(widths) >= 14 and min(widths) <= 3  # the range is used
    _, rotated = S.cutpaste_scar(image, np.random.default_rng(1), width=(4, 4), length=(25, 25), rotation=(45.0, 45.0))
    ys, xs = torch.nonzero(rotated, as_tuple=True)
    assert int(xs.max() - xs.min()) > 10, "a 45 degree scar spans both axes"


def test_colour_jitter_is_mild():
    patch = _image()[:, :20, :20]
    for seed in range(10):
        out = S.color_jitter(patch, np.random.default_rng(seed))
        assert (out - patch).abs().mean() < 0.15
    assert torch.equal(S.color_jitter(patch, np.random.default_rng(0), 0, 0, 0, 0), patch)


def test_perlin_mask_shapes_and_threshold():
    masks = [S.perlin_mask((64, 80), np.random.default_rng(s)) for s in range(20)]
    assert all(m.shape == (64, 80) and m.dtype == torch.bool for m in masks)
    assert 0.0 < np.mean([float(m.float().mean()) for m in masks]) < 0.5
    assert S.perlin_mask((64, 64), np.random.default_rng(0), nonempty=True).any()
    assert not S.perlin_mask((64, 64), np.random.default_rng(0), threshold=5.0).any()
    noise = S.perlin_noise((64, 64), (4, 4), np.random.default_rng(0))
    assert abs(float(noise[0, 0])) < 1e-6  # Perlin noise is 0 on lattice points
    assert noise.std() > 0.1


def test_perlin_blending_beta():
    image, texture = torch.zeros(3, 32, 32), torch.ones(3, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:16, 8:16] = True
    out, m = S.perlin_texture_anomaly(image, texture, np.random.default_rng(0), beta_range=(0.25, 0.25), mask=mask)
    assert torch.equal(m, mask)
    assert torch.allclose(out[:, mask], torch.full_like(out[:, mask], 0.75))
    assert torch.equal(out[:, ~mask], image[:, ~mask])


def test_texture_source(tmp_path):
    procedural = S.TextureSource(None)
    assert procedural.description == "procedural"
    from adbench.components.textures import KINDS

    for kind in KINDS:
        t = S.procedural_texture((40, 50), np.random.default_rng(0), kind=kind)
        assert t.shape == (3, 40, 50) and 0.0 <= float(t.min()) and float(t.max()) <= 1.0
        assert float(t.std()) > 0.02, kind
    from PIL import Image

    (tmp_path / "sub").mkdir()
    Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)).save(tmp_path / "sub" / "a.jpg")
    folder = S.TextureSource(tmp_path)
    assert folder.description == f"dtd:{tmp_path}"
    t = folder.sample((64, 48), np.random.default_rng(0))
    assert t.shape == (3, 64, 48)
    with pytest.raises(DataError):
        S.TextureSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        S.TextureSource(tmp_path / "empty")


@pytest.mark.parametrize("mode,classes", [("3way", 3), ("binary", 2), ("scar", 2), ("union", 2), ("rotation", 4),
                                          ("cutout", 2), ("scar_cutout", 2), ("confetti", 2)])
def test_cutpaste_sampler(mode, classes):
    images = torch.stack([_image(s, 48) for s in range(4)])
    sampler = S.CutPasteSampler(mode)
    out, labels = sampler(images, np.random.default_rng(0))
    assert sampler.num_classes == classes
    assert out.shape == (4 * classes, 3, 48, 48)
    assert labels.tolist() == sum(([k] * 4 for k in range(classes)), [])
    assert torch.equal(out[:4], images)
    assert not any(torch.equal(out[4 + i], images[i]) for i in range(4))


def test_cutout_fills_change_only_the_colour():
    """CutPaste table 4: grey (0.5), the image's mean colour, a random colour; same box per seed."""
    image = _image()
    for seed in range(5):
        boxes, colours = [], {}
        for fill in ("grey", "mean", "random"):
            out, mask = S.cutout(image, np.random.default_rng(seed), fill=fill)
            boxes.append(mask)
            inside = out[:, mask]
            assert torch.equal(inside, inside[:, :1].expand_as(inside)), "a cutout is one flat colour"
            colours[fill] = inside[:, 0]
        assert all(torch.equal(boxes[0], b) for b in boxes), "the fill must not change the box"
        torch.testing.assert_close(colours["grey"], torch.full((3,), 0.5))
        torch.testing.assert_close(colours["mean"], image.mean(dim=(1, 2)))
    randoms = set()
    for seed in range(4):
        out, mask = S.cutout(image, np.random.default_rng(seed), fill="random")
        randoms.add(tuple(out[:, mask][:, 0].tolist()))
    assert len(randoms) == 4, "a random colour per draw"
    with pytest.raises(ValueError):
        S.cutout(image, np.random.default_rng(0), fill="pink")


def test_scar_cutout_is_one_random_colour_in_a_scar_shape():
    """Table 1 "Scar" (ref. [16]): CutPaste-Scar's shape, filled with one random colour."""
    image = _image(size=128)
    for seed in range(5):
        out, mask = S.scar_cutout(image, np.random.default_rng(seed), rotation=(0.0, 0.0))
        ys, xs = torch.nonzero(mask, as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert 2 <= w <= 16 and 10 <= h <= 25 and h * w == int(mask.sum())
        inside = out[:, mask]
        assert float((inside - inside[:, :1]).abs().max()) < 1e-5


def test_confetti_adds_smooth_colour_blobs():
    """FCDD's confetti: a smoothed blob field added to the image (subtracted on a white image)."""
    grey = torch.full((3, 96, 96), 0.4)
    for seed in range(4):
        out, mask = S.confetti(grey, np.random.default_rng(seed))
        change = out - grey
        assert float(change.min()) >= 0.0 and float(change.max()) > 0.3  # added, visible blobs
        assert bool((change.amax(0)[mask] >= 1.0 / 255 - 1e-6).all())  # the mask is where it shows
        # smooth: neighbouring pixels differ far less than the blob amplitude (sigma-5 blur)
        assert float(change.diff(dim=-1).abs().max()) < 0.25 * float(change.max())
    colourful = [S.confetti(grey, np.random.default_rng(s))[0] for s in range(4)]
    assert any(float((c[0] - c[1]).abs().max()) > 0.05 for c in colourful), "coloured blobs differ per channel"
    white = torch.ones(3, 64, 64)
    out, mask = S.confetti(white, np.random.default_rng(0))
    assert mask.any() and float((out - white).max()) <= 0.0 and float((out - white).min()) < -0.1


def test_rotation_versions():
    image = _image(size=32)
    for k in range(4):
        assert torch.equal(S.rotate(image, k), torch.rot90(image, k, dims=(1, 2)))
    assert torch.equal(S.rotate(image, 4), image)
    with pytest.raises(ValueError):
        S.rotate(torch.zeros(3, 32, 40), 1)
    images = torch.stack([_image(s, 32) for s in range(3)])
    out, labels = S.CutPasteSampler("rotation")(images, np.random.default_rng(0))
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for k in range(4):
        assert torch.equal(out[3 * k : 3 * k + 3], torch.rot90(images, k, dims=(2, 3)))


def test_sampler_keeps_the_random_stream_of_existing_modes():
    """New modes must not change what 3way draws: all CutPastes first, then all scars."""
    images = torch.stack([_image(s, 48) for s in range(3)])
    out, _ = S.CutPasteSampler("3way")(images, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    patches = [S.cutpaste(x, rng)[0] for x in images]
    scars = [S.cutpaste_scar(x, rng)[0] for x in images]
    assert torch.equal(out, torch.cat([images, torch.stack(patches), torch.stack(scars)]))


def test_gde_l2_normalize():
    """DROC's GDE: unit-norm features, so scores ignore each vector's scale; default unchanged."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 12, generator=gen) + 3.0
    z = torch.randn(6, 12, generator=gen) + 3.0
    plain, l2 = GaussianDensity().fit(x), GaussianDensity(l2_normalize=True).fit(x)
    assert not torch.allclose(plain.score(z), l2.score(z))
    scale_x = torch.rand(40, 1, generator=gen) * 10 + 0.1
    scale_z = torch.rand(6, 1, generator=gen) * 10 + 0.1
    torch.testing.assert_close(GaussianDensity(l2_normalize=True).fit(x * scale_x).score(z * scale_z), l2.score(z),
                               rtol=1e-4, atol=1e-4)
    unit = GaussianDensity().fit(x / x.norm(dim=1, keepdim=True))
    torch.testing.assert_close(unit.score(z / z.norm(dim=1, keepdim=True)), l2.score(z), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain.score(2 * z), plain.score(z))  # the plain GDE is not scale invariant


def test_gde_matches_sklearn_ledoit_wolf():
    from sklearn.covariance import LedoitWolf

    gen = torch.Generator().manual_seed(0)
    for n, d in [(60, 16), (20, 48)]:  # full-rank and Woodbury (n < d) forms
        x = torch.randn(n, d, generator=gen) * torch.rand(d, generator=gen) * 3 + 1
        z = torch.randn(9, d, generator=gen)
        lw = LedoitWolf().fit(x.numpy())
        ref = np.sqrt(lw.mahalanobis(z.numpy()))
        gde = GaussianDensity().fit(x)
        assert abs(float(gde.shrinkage[0]) - lw.shrinkage_) < 1e-5
        np.testing.assert_allclose(gde.score(z).numpy(), ref, rtol=1e-4)
        # per-location fitting (in chunks) gives each location its own Gaussian
        many = GaussianDensity().fit(torch.stack([x, 2 * x, x + 5]), chunk_bytes=1)
        got = many.score(torch.stack([z, 2 * z, z + 5]))
        np.testing.assert_allclose(got.numpy(), np.stack([ref] * 3), rtol=1e-4)
