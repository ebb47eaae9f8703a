"""DRAEM: a discriminatively trained reconstruction embedding (Zavrtanik et al., ICCV 2021).

Method. Normal training images get synthetic anomalies: a Perlin-noise mask filled with a
texture from an "anomaly source" image set. A reconstructive sub-network (an encoder-decoder
without skips) learns to turn the corrupted image back into the normal one (loss: L2 + SSIM);
a discriminative sub-network (a U-Net) sees the input concatenated with its reconstruction and
segments the synthetic anomaly (focal loss). At test time the segmentation's anomaly channel is
the anomaly map, and the image score is the maximum of that map after a 21x21 mean filter.

Where each value comes from:

* MIAD benchmark appendix A.2.4 (../shared/seeds/004, which ran the official code): 256x256
  resize; texture augmentation with 3 ops drawn from {posterize, sharpness, solarize,
  equalize, brightness, colour, autocontrast}; rotation (-45, 45) degrees on normal images;
  700 epochs, batch 8; Adam 1e-4, x0.2 after 560 and 630 epochs (80 % and 90 %); L2 + SSIM on
  the reconstruction, focal loss on the segmentation.
* DRAEM paper and official code (github.com/vitjanz/draem), where MIAD is silent: network
  widths (reconstructive base 128, discriminative base 64; ``recon_width`` / ``disc_width``
  shrink them for the quick profile); weights initialised N(0, 0.02) (BatchNorm scales
  N(1, 0.02)); blending ``out = (1 - m) x + m ((1 - beta) t + beta x)`` with beta ~ U[0, 0.8)
  (beta weighs the *normal* image, so the texture's opacity is 1 - beta); half of the samples
  are left anomaly-free with an empty mask, and an empty Perlin mask also counts as normal;
  Perlin lattice 2**k, k in [0, 6), noise rotated (-90, 90), threshold 0.5 (all inside
  ``adbench.components.synth``, which implements exactly this recipe, so it is used as is);
  the normal image is rotated with probability 0.3 (``rotate_prob``; the official code rotates
  30 % of images by (-90, 90), MIAD narrows the range to (-45, 45)); loss weights 1 / 1 / 1;
  focal gamma 2; SSIM window 11; inputs in [0, 1], no normalisation; the 21x21 mean filter
  counts the zero padding (``avg_pool2d``'s default, as the official evaluation does).
* Texture ops, ``augmenter_pool=paper7`` (the ``paper`` profile: the appendix's list of 7).
  torchvision's ``transforms.v2.functional`` (not hand-written). Ranges follow the
  imgaug/pillike defaults the official code uses where the op maps directly: posterize 1-8
  bits, sharpness factor U(0, 2), solarize threshold U(32, 128) / 255; brightness factor
  U(0.8, 1.2) (the official MultiplyAndAddToBrightness multiplier; its additive part is not
  used); colour = saturation factor U(0, 2) (PIL ImageEnhance.Color, MIAD's "color change").
* Texture ops, ``augmenter_pool=official10`` (the ``miad`` profile): the 10 imgaug augmenters
  of the official code (VitjanZ/DRAEM ``data_loader.py`` at 2dbf673, imgaug 0.4.0, whose
  defaults fill the unstated parameters), 3 distinct ones drawn per sample
  (``np.random.choice(10, 3, replace=False)``) and applied in the drawn order: GammaContrast
  gamma U(0.5, 2) per channel; MultiplyAndAddToBrightness mul U(0.8, 1.2), add U(-30, 30) on
  the brightness channel of a colour space drawn from imgaug's six (YCrCb, HSV, HLS, Lab,
  Luv, YUV), multiply and add in random order; pillike.EnhanceSharpness factor U(0, 2);
  AddToHueAndSaturation integers U[-50, 50] drawn separately for hue (cyclic, v / 255 of the
  circle) and saturation (clipped); Solarize with probability 0.5, threshold U(32, 128),
  values >= threshold inverted; Posterize 1-8 bits; Invert; pillike.Autocontrast cutoff
  U{0..20} %; pillike.Equalize; Affine rotate U(-45, 45) degrees (bilinear, black corners).
  They run on torchvision (gamma, sharpness, solarize, posterize, invert, equalize, rotate),
  kornia colour conversions (brightness, hue / saturation) and PIL (autocontrast with a
  cutoff, which torchvision lacks; imgaug's pillike version is documented to give PIL's
  output). Every parameter is drawn from the sampler's explicit NumPy generator; no imgaug
  dependency. Known differences: colour conversions in float instead of OpenCV's 8-bit ones
  (differences of a grey level or so); the official code feeds OpenCV's BGR arrays to these
  RGB augmenters (hue turns the other way; the lightness of YCrCb, YUV, Lab and Luv weighs R
  and B swapped), ours get RGB: for the symmetric hue range the distribution is the same, for
  brightness the weighting of the channel that is scaled differs slightly.
* Rotation of normal images, how we read the appendix: the official code rotates 30 % of the
  training images by U(-90, 90) degrees before synthesis (``rot = Affine(rotate=(-90, 90))``,
  ``torch.rand(1) > 0.7``); the appendix says "additional image rotation in the range of
  (-45, 45) degrees ... on non-defective images". We take the appendix's range as a value it
  states (``rotate_degrees=45``) and the official probability it does not state
  (``rotate_prob=0.3``) in both ``paper`` and ``miad``. The appendix's (-45, 45) may instead
  describe the pool's own ``Affine(rotate=(-45, 45))`` op (which rotates the texture, not the
  image); that op is part of ``official10`` anyway. ``--set rotate_degrees=90`` gives the
  official code's normal-image rotation exactly.
* Profiles: ``miad`` = ``paper`` except ``augmenter_pool=official10`` (the appendix names the
  official code as what it ran, and that code's pool is the 10 ops above, while its text lists
  7); every other value (256 px, 3 ops, rotation, 700 epochs, batch 8, Adam 1e-4 x0.2 after
  560 and 630 epochs, L2 + SSIM + focal, official widths and initialisation) is the same.
* No silent options (``adbench.config.reject_inert``): with ``anomaly_prob=0`` the options
  ``anomaly_source``, ``beta_max``, ``texture_ops`` and ``augmenter_pool`` have no effect, with
  ``texture_ops=0`` ``augmenter_pool`` has none, with ``rotate_prob=0`` ``rotate_degrees`` has
  none, with no ``lr_milestones`` ``lr_gamma`` has none and with ``lr_gamma=1`` the milestones
  have none: a non-default value of such an option is a ConfigError. ``texture_ops`` larger
  than the pool, probabilities outside [0, 1] and milestones outside (0, 1) are errors too.
* Anomaly source (issue 24): the paper pastes Describable Textures Dataset (DTD) images, so
  the ``paper`` and ``miad`` profiles need a DTD copy, given like weights: ``--textures DIR``
  (or ``$ADBENCH_TEXTURES_DIR``), DTD's ``images/<class>/*.jpg`` layout. The runner checks it
  before any job (folder, layout, every image decodes) and stops a run without it with one
  exit-2 line naming the method and the profile; until issue 24 such a run silently pasted
  procedural textures instead, which changes the recipe. ``quick`` without ``--textures`` and
  an explicit ``--set anomaly_source=procedural`` draw procedural textures
  (``adbench.components.textures``; not DTD, numbers not comparable with the paper's) with a
  note once per run. ``anomaly_source`` takes only ``procedural``: a folder goes through
  ``--textures`` (``texture_source`` refuses one written into the config), which binds the set
  into the job's config (``TextureSet.spec``); the config hash keeps the set's fingerprint
  (sha256 of its sorted relative names and sizes) and image count, not its folder
  (``config_hash``), so the same copy elsewhere is the same job and another set another job.
  The job checks that its folder still holds that set; ``record_extras()`` states
  ``anomaly_source`` and ``texture_set`` (source, fingerprint, image count).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from adbench.components.losses import focal_loss, ssim_loss
from adbench.components.step_budget import effective_epochs
from adbench.components.synth import TextureSource, numpy_rng, perlin_texture_anomaly
from adbench.components.textures import location_free, requested_source
from adbench.config import MethodConfig
from adbench.data import Batch
from adbench.data.batch_stream import BatchStream, per_sample, to_device
from adbench.data.image_cache import as_float
from adbench.detector import Detector, Prediction
from adbench.errors import ConfigError
from adbench.precision import full
from adbench.registry import register_method


@dataclass
class DRAEMConfig(MethodConfig):
    image_size: int = 256
    batch_size: int = 8
    epochs: int = 700
    max_steps: Optional[int] = None  # cap on optimiser steps (quick budgets); None = all epochs
    lr: float = 1e-4
    lr_milestones: tuple[float, ...] = (0.8, 0.9)  # fractions of the epochs; lr x lr_gamma at each
    lr_gamma: float = 0.2
    recon_width: int = 128
    disc_width: int = 64
    # None: the run's texture set (--textures DIR, DTD in the paper; quick without one:
    # procedural); "procedural": procedural textures. The runner binds --textures in here.
    anomaly_source: Optional[str] = None
    anomaly_prob: float = 0.5  # share of training samples that get an anomaly
    beta_max: float = 0.8  # beta ~ U[0, beta_max): weight of the normal image inside the mask
    rotate_prob: float = 0.3
    rotate_degrees: float = 45.0
    texture_ops: int = 3
    # which ops the texture's texture_ops are drawn from: the MIAD appendix's list of 7, or the
    # official code's 10 imgaug augmenters (what the MIAD authors ran; module docstring)
    augmenter_pool: Literal["paper7", "official10"] = "paper7"
    focal_gamma: float = 2.0
    score_filter: int = 21  # mean-filter size before the image-score max

    def __post_init__(self):
        for name in ("anomaly_prob", "rotate_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--set {name}={getattr(self, name)}: must be a probability in [0, 1]")
        pool = len(AUGMENTER_POOLS[self.augmenter_pool])
        if not 0 <= self.texture_ops <= pool:
            raise ConfigError(f"--set texture_ops={self.texture_ops}: must be 0..{pool}, the size of "
                              f"augmenter_pool={self.augmenter_pool}")
        if any(not 0.0 < f < 1.0 for f in self.lr_milestones):
            raise ConfigError(f"--set lr_milestones={','.join(map(str, self.lr_milestones))}: fractions of "
                              "the epochs, each in (0, 1)")

    def config_hash(self) -> str:
        """The resolved values' hash with a bound texture set's fingerprint and image count in
        place of its folder (``adbench.components.textures.location_free``)."""
        return MethodConfig.config_hash(location_free(self))

    def inert_options(self) -> dict[str, str]:
        """Options this configuration does not read, with the reason (no silent options;
        ``resolve_config`` rejects one the user set: ``adbench.config.reject_inert``)."""
        inert: dict[str, str] = {}
        if self.anomaly_prob == 0:
            why = "anomaly_prob=0 (no synthetic anomalies are made)"
            inert.update(anomaly_source=why, beta_max=why, texture_ops=why, augmenter_pool=why)
        elif self.texture_ops == 0:
            inert["augmenter_pool"] = "texture_ops=0 (the texture is not augmented)"
        if self.rotate_prob == 0:
            inert["rotate_degrees"] = "rotate_prob=0 (no image is rotated)"
        if not self.lr_milestones:
            inert["lr_gamma"] = "lr_milestones is empty (the learning rate never changes)"
        elif self.lr_gamma == 1:
            inert["lr_milestones"] = "lr_gamma=1 (the learning rate never changes)"
        return inert



# --------------------------------------------------------------------------------------------
# Networks (DRAEM section 3.1; layer layout of the official code)
# --------------------------------------------------------------------------------------------
def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def double_conv(c_in: int, c_mid: int, c_out: Optional[int] = None) -> nn.Sequential:
    return nn.Sequential(*conv_bn_relu(c_in, c_mid), *conv_bn_relu(c_mid, c_out or c_mid))


def up_conv(c_in: int, c_out: int) -> nn.Sequential:
    """x2 bilinear up-sampling then conv + BN + ReLU (DRAEM up-samples; no transposed convs)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *conv_bn_relu(c_in, c_out))


class ReconstructiveSubNetwork(nn.Module):
    """Encoder-decoder without skip connections: 5 stages (widths w, 2w, 4w, 8w, 8w), 4 pools."""

    def __init__(self, width: int = 128, channels: int = 3):
        super().__init__()
        w = width
        self.encoder = nn.ModuleList([
            double_conv(channels, w), double_conv(w, 2 * w), double_conv(2 * w, 4 * w),
            double_conv(4 * w, 8 * w), double_conv(8 * w, 8 * w),
        ])
        self.decoder = nn.Sequential(
            up_conv(8 * w, 8 * w), double_conv(8 * w, 8 * w, 4 * w),
            up_conv(4 * w, 4 * w), double_conv(4 * w, 4 * w, 2 * w),
            up_conv(2 * w, 2 * w), double_conv(2 * w, 2 * w, w),
            up_conv(w, w), double_conv(w, w, w),
            nn.Conv2d(w, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
        return self.decoder(x)


class DiscriminativeSubNetwork(nn.Module):
    """U-Net on concat(reconstruction, input): 6 encoder stages (w .. 8w), skips at every level."""

    def __init__(self, width: int = 64, in_channels: int = 6, out_channels: int = 2):
        super().__init__()
        w = width
        enc = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        self.encoder = nn.ModuleList(
            [double_conv(in_channels, enc[0])] + [double_conv(enc[i - 1], enc[i]) for i in range(1, 6)]
        )
        dec = [8 * w, 4 * w, 2 * w, w, w]  # decoder widths, coarse to fine
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        c = enc[5]
        for level, c_out in zip(range(4, -1, -1), dec):
            self.up.append(up_conv(c, c_out))
            self.fuse.append(double_conv(c_out + enc[level], c_out))
            c = c_out
        self.head = nn.Conv2d(w, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, fuse, level in zip(self.up, self.fuse, range(4, -1, -1)):
            x = fuse(torch.cat([up(x), skips[level]], dim=1))
        return self.head(x)


def init_weights(module: nn.Module) -> None:
    """Official DRAEM initialisation: conv N(0, 0.02), BatchNorm scale N(1, 0.02), bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------
# Synthetic anomalies (DRAEM section 3.2 + MIAD's augmentation list)
# --------------------------------------------------------------------------------------------
def _texture_ops():
    import torchvision.transforms.v2.functional as TF

    return {
        "posterize": lambda t, r: TF.posterize(t, int(r.integers(1, 9))),
        "sharpness": lambda t, r: TF.adjust_sharpness(t, float(r.uniform(0.0, 2.0))),
        "solarize": lambda t, r: TF.solarize(t, float(r.uniform(32, 128))),
        "equalize": lambda t, r: TF.equalize(t),
        "brightness": lambda t, r: TF.adjust_brightness(t, float(r.uniform(0.8, 1.2))),
        "colour": lambda t, r: TF.adjust_saturation(t, float(r.uniform(0.0, 2.0))),
        "autocontrast": lambda t, r: TF.autocontrast(t),
    }


TEXTURE_OPS = ("posterize", "sharpness", "solarize", "equalize", "brightness", "colour", "autocontrast")


# The official code's pool (VitjanZ/DRAEM data_loader.py, imgaug 0.4.0 defaults filled in).
# Each op is (draw parameters from the rng, apply them to a uint8 [3, H, W] tensor), so tests
# can check an op against its definition with known parameters.
def _to_pil(t: torch.Tensor):
    from PIL import Image

    return Image.fromarray(t.permute(1, 2, 0).contiguous().numpy())


def _from_pil(img) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.float() / 255.0


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def _gamma_contrast(t: torch.Tensor, p: dict) -> torch.Tensor:
    """imgaug GammaContrast((0.5, 2.0), per_channel=True): 255 * (x / 255) ** gamma_c."""
    import torchvision.transforms.v2.functional as TF

    return torch.cat([TF.adjust_gamma(t[c : c + 1], float(g)) for c, g in enumerate(p["gamma"])])


# colour spaces MultiplyAndAddToBrightness picks from (imgaug's default list), as kornia pairs:
# (forward, inverse, brightness channel, channel range); the same channel imgaug edits (Y, V, L)
BRIGHTNESS_SPACES = {
    "YCrCb": ("rgb_to_ycbcr", "ycbcr_to_rgb", 0, 1.0),
    "HSV": ("rgb_to_hsv", "hsv_to_rgb", 2, 1.0),
    "HLS": ("rgb_to_hls", "hls_to_rgb", 1, 1.0),
    "Lab": ("rgb_to_lab", "lab_to_rgb", 0, 100.0),
    "Luv": ("rgb_to_luv", "luv_to_rgb", 0, 100.0),
    "YUV": ("rgb_to_yuv", "yuv_to_rgb", 0, 1.0),
}


def _multiply_add_brightness(t: torch.Tensor, p: dict) -> torch.Tensor:
    """imgaug MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)): in one of six colour
    spaces, the brightness channel b (as a fraction of its range) becomes b * mul and b + add/255,
    in random order, each clipped to the range; then back to RGB."""
    import kornia.color as KC

    forward, inverse, channel, scale = BRIGHTNESS_SPACES[p["space"]]
    x = getattr(KC, forward)(_float(t))
    b = x[channel] / scale
    steps = [lambda v: v * p["mul"], lambda v: v + p["add"] / 255.0]
    for step in steps if p["mul_first"] else steps[::-1]:
        b = step(b).clamp(0, 1)
    x = torch.cat([x[:channel], (b * scale)[None], x[channel + 1 :]])
    return _uint8(getattr(KC, inverse)(x))


def _sharpness(t: torch.Tensor, p: dict) -> torch.Tensor:
    """imgaug pillike.EnhanceSharpness(): PIL ImageEnhance.Sharpness, factor U(0, 2)."""
    import torchvision.transforms.v2.functional as TF

    return TF.adjust_sharpness(t, p["factor"])


def _add_hue_saturation(t: torch.Tensor, p: dict) -> torch.Tensor:
    """imgaug AddToHueAndSaturation((-50, 50), per_channel=True): integers v_h, v_s in
    [-50, 50] drawn independently; hue turns by v_h / 255 of the colour circle (cyclic),
    saturation gains v_s / 255 (clipped to [0, 1])."""
    import kornia.color as KC

    h, s_, v = KC.rgb_to_hsv(_float(t))
    h = torch.remainder(h + 2 * math.pi * p["hue"] / 255.0, 2 * math.pi)
    s_ = (s_ + p["saturation"] / 255.0).clamp(0, 1)
    return _uint8(KC.hsv_to_rgb(torch.stack([h, s_, v])))


def _solarize(t: torch.Tensor, p: dict) -> torch.Tensor:
    """imgaug Solarize(0.5, threshold=(32, 128)): with probability 0.5, every value >= a
    threshold U(32, 128) becomes 255 - value."""
    import torchvision.transforms.v2.functional as TF

    return TF.solarize(t, p["threshold"]) if p["apply"] else t


def _posterize(t: torch.Tensor, p: dict) -> torch.Tensor:
    """imgaug Posterize() = UniformColorQuantizationToNBits((1, 8)), PIL's posterize: keep the
    ``bits`` highest bits."""
    import torchvision.transforms.v2.functional as TF

    return TF.posterize(t, p["bits"])


def _invert(t: torch.Tensor, p: dict) -> torch.Tensor:
    """imgaug Invert() (p = 1): 255 - value."""
    import torchvision.transforms.v2.functional as TF

    return TF.invert(t)


def _autocontrast(t: torch.Tensor, p: dict) -> torch.Tensor:
    """imgaug pillike.Autocontrast() (identical outputs to PIL's): ImageOps.autocontrast with an
    integer cutoff in [0, 20] percent. torchvision's autocontrast has no cutoff, so PIL is used."""
    from PIL import ImageOps

    return _from_pil(ImageOps.autocontrast(_to_pil(t), cutoff=p["cutoff"]))


def _equalize(t: torch.Tensor, p: dict) -> torch.Tensor:
    """imgaug pillike.Equalize(): PIL's histogram equalisation per channel."""
    import torchvision.transforms.v2.functional as TF

    return TF.equalize(t)


def _rotate(t: torch.Tensor, p: dict) -> torch.Tensor:
    """imgaug Affine(rotate=(-45, 45)): rotation about the centre, bilinear, black corners."""
    import torchvision.transforms.v2.functional as TF

    return TF.rotate(t, p["angle"], interpolation=TF.InterpolationMode.BILINEAR, fill=[0.0])


OFFICIAL_OPS = {
    "gamma_contrast": (lambda r: {"gamma": r.uniform(0.5, 2.0, size=3)}, _gamma_contrast),
    "multiply_add_brightness": (
        lambda r: {"space": list(BRIGHTNESS_SPACES)[int(r.integers(len(BRIGHTNESS_SPACES)))],
                   "mul": float(r.uniform(0.8, 1.2)), "add": float(r.uniform(-30, 30)),
                   "mul_first": bool(r.random() < 0.5)},
        _multiply_add_brightness,
    ),
    "sharpness": (lambda r: {"factor": float(r.uniform(0.0, 2.0))}, _sharpness),
    "add_hue_saturation": (lambda r: {"hue": int(r.integers(-50, 51)), "saturation": int(r.integers(-50, 51))},
                           _add_hue_saturation),
    "solarize": (lambda r: {"apply": bool(r.random() < 0.5), "threshold": float(r.uniform(32, 128))}, _solarize),
    "posterize": (lambda r: {"bits": int(r.integers(1, 9))}, _posterize),
    "invert": (lambda r: {}, _invert),
    "autocontrast": (lambda r: {"cutoff": int(r.integers(0, 21))}, _autocontrast),
    "equalize": (lambda r: {}, _equalize),
    "rotate": (lambda r: {"angle": float(r.uniform(-45.0, 45.0))}, _rotate),
}
AUGMENTER_POOLS = {"paper7": TEXTURE_OPS, "official10": tuple(OFFICIAL_OPS)}


def augment_texture(texture: torch.Tensor, rng: np.random.Generator, n_ops: int = 3,
                    pool: str = "paper7") -> tuple[torch.Tensor, list[str]]:
    """Apply ``n_ops`` distinct ops of ``pool``, drawn by ``rng`` and applied in the drawn
    order, to a float [3, H, W] texture in [0, 1]. Every random choice comes from ``rng``."""
    names = [AUGMENTER_POOLS[pool][i] for i in rng.choice(len(AUGMENTER_POOLS[pool]), size=n_ops, replace=False)]
    t = (texture * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)  # equalize/posterize want uint8
    ops = _texture_ops() if pool == "paper7" else None
    for name in names:
        if ops is not None:
            t = ops[name](t, rng)
        else:
            sample, apply = OFFICIAL_OPS[name]
            t = apply(t, sample(rng))
    return t.float() / 255.0, names


class DRAEMAnomalySampler:
    """Turns a normal uint8 image into DRAEM's training triple (normal, augmented, mask).

    ``normal`` is the (possibly rotated) image the reconstruction must reproduce; ``augmented``
    equals it outside ``mask`` bit for bit and is the texture blend inside. Anomaly-free samples
    (probability 1 - anomaly_prob, or an empty Perlin mask) have augmented == normal and an
    all-false mask.
    """

    def __init__(self, source: TextureSource, anomaly_prob: float = 0.5, beta_max: float = 0.8,
                 rotate_prob: float = 0.3, rotate_degrees: float = 45.0, texture_ops: int = 3,
                 augmenter_pool: str = "paper7"):
        self.source = source
        self.augmenter_pool = augmenter_pool
        self.anomaly_prob = anomaly_prob
        self.beta_max = beta_max
        self.rotate_prob = rotate_prob
        self.rotate_degrees = rotate_degrees
        self.texture_ops = texture_ops

    def __call__(self, image: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torchvision.transforms.v2.functional as TF

        rng = numpy_rng(generator)
        if image.dtype == torch.uint8 and rng.random() < self.rotate_prob:
            angle = float(rng.uniform(-self.rotate_degrees, self.rotate_degrees))
            image = TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR, fill=[0.0])
        normal = as_float(image)
        h, w = normal.shape[-2:]
        if rng.random() >= self.anomaly_prob:
            return normal, normal.clone(), torch.zeros(h, w, dtype=torch.bool)
        texture, _ = augment_texture(self.source.sample((h, w), rng), rng, self.texture_ops, self.augmenter_pool)
        augmented, mask = perlin_texture_anomaly(normal, texture, rng, beta_range=(0.0, self.beta_max), nonempty=False)
        return normal, augmented, mask

    def batch(self, images: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        triples = [self(img, generator) for img in images]
        return tuple(torch.stack(parts) for parts in zip(*triples))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------
@register_method("draem")
class DRAEM(Detector):
    """Reconstructive + discriminative sub-networks trained on Perlin texture anomalies."""
    trains_networks = True  # k-shot sets smaller than a batch: drawn with replacement (Detector)

    VERSION = 3  # 2: resumable training, data order by (seed, epoch); 3: anomalies seeded per (seed, epoch, image)
    Config = DRAEMConfig
    PROFILES = {
        "paper": {},
        # MIAD appendix A.2.4 on the official code: the paper profile with the official code's
        # 10-op augmenter pool (module docstring: how the appendix's rotation is read)
        "miad": {"augmenter_pool": "official10"},
        # 2-core CPU budget (~10 min on bottle, ~20 on magnetic_tile): half resolution, networks
        # 1/16 (reconstructive) and 1/8 (discriminative) of the official widths, at most 500
        # optimiser steps in whole epochs (max_steps), a 10x learning rate (1e-4 is tuned for
        # 18k steps), mean filter scaled with the resolution (21 px at 256 -> 11 px at 128).
        "quick": {"image_size": 128, "recon_width": 8, "disc_width": 8, "epochs": 20, "max_steps": 500,
                  "lr": 1e-3, "score_filter": 11},
    }
    produces_maps = True
    protocols = ("single", "unified")
    precisions = ("fp32", "tf32", "bf16")  # networks run in context.autocast()

    @classmethod
    def texture_source(cls, config: DRAEMConfig) -> Optional[str]:
        """``dtd`` (the run's texture set) unless ``anomaly_source=procedural``; None without
        synthetic anomalies (``anomaly_prob=0``)."""
        return None if config.anomaly_prob == 0 else requested_source(config.anomaly_source)

    def __init__(self, config: DRAEMConfig, context=None):
        super().__init__(config, context)
        c = self.config
        self.reconstructive = ReconstructiveSubNetwork(c.recon_width).to(self.device)
        self.discriminative = DiscriminativeSubNetwork(c.disc_width).to(self.device)
        self.reconstructive.apply(init_weights)
        self.discriminative.apply(init_weights)
        self.source = TextureSource(c.anomaly_source)
        self.sampler = DRAEMAnomalySampler(self.source, c.anomaly_prob, c.beta_max, c.rotate_prob,
                                           c.rotate_degrees, c.texture_ops, c.augmenter_pool)
        self.loss_history: list[float] = []
        self.epochs_run = 0

    def training_loss(self, normal: torch.Tensor, augmented: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L2 + SSIM between reconstruction and the normal image, focal loss on the segmentation
        (the networks under ``--precision``, the losses in float32)."""
        with self.context.autocast():
            recon = self.reconstructive(augmented)
            logits = self.discriminative(torch.cat([recon, augmented], dim=1))
        recon, logits = full(recon), full(logits)
        return (F.mse_loss(recon, normal) + ssim_loss(recon, normal)
                + focal_loss(logits, mask, gamma=self.config.focal_gamma))

    def fit(self, train_loader: Iterable[Batch]) -> None:
        """Adam on L2 + SSIM + focal over synthetic anomalies, resumable (``adbench.training``).

        The training images are decoded once per job (``context.training_images``); each
        epoch's anomalies are drawn in the job's DataLoader workers (``adbench.data`` input pipeline), image
        ``i`` of epoch ``e`` from a generator seeded by (job seed, e, i), so neither the number
        of workers nor a resume changes a batch."""
        c = self.config
        modules = {"reconstructive": self.reconstructive, "discriminative": self.discriminative}
        checkpoints = self.context.checkpoints
        if checkpoints.finished("train"):  # trained in an earlier attempt: no data needed
            phase = checkpoints.phase("train", modules=modules)
        else:
            images = self.context.training_images(train_loader)  # uint8 [N, 3, H, W]
            epochs = effective_epochs(c.epochs, c.max_steps, len(images), c.batch_size)
            params = list(self.reconstructive.parameters()) + list(self.discriminative.parameters())
            optimizer = torch.optim.Adam(params, lr=c.lr)
            milestones = sorted({max(1, int(round(f * epochs))) for f in c.lr_milestones})
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=c.lr_gamma)
            self.reconstructive.train()
            self.discriminative.train()
            phase = checkpoints.phase("train", modules=modules, optimizers={"adam": optimizer},
                                      schedulers={"lr": scheduler})
            stream = BatchStream(phase.plan(epochs, len(images), c.batch_size),
                                 per_sample(images, self.sampler, self.context.seed, "draem/anomalies"),
                                 self.context.inputs)
            bar = tqdm(phase.epochs(epochs), total=epochs, initial=phase.epoch, desc="draem",
                       disable=not self.context.progress)
            for epoch in bar:
                for batch in stream.epoch(epoch):
                    normal, augmented, mask = to_device(batch, self.device)
                    loss = self.training_loss(normal, augmented, mask)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    phase.step_done(loss, len(normal))
                scheduler.step()
                bar.set_postfix(loss=f"{phase.epoch_done():.4f}")
            stream.close()
            phase.finish()
            checkpoints.training_done()
        self.epochs_run = len(phase.history)
        self.loss_history = list(phase.history)
        self.reconstructive.eval()
        self.discriminative.eval()

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[0, 1] images -> (reconstruction, anomaly probability map [B, H, W])."""
        self.reconstructive.eval()
        self.discriminative.eval()
        x = images.to(self.device).float()
        with self.context.autocast():
            recon = self.reconstructive(x)
            logits = self.discriminative(torch.cat([recon, x], dim=1))
        return full(recon), torch.softmax(full(logits), dim=1)[:, 1]

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        _, maps = self.segment(batch.images)
        k = self.config.score_filter
        smoothed = F.avg_pool2d(maps[:, None], k, stride=1, padding=k // 2) if k > 1 else maps[:, None]
        scores = smoothed.flatten(1).amax(dim=1)
        return Prediction(scores=scores.cpu(), maps=maps.cpu())

    def record_extras(self) -> dict:
        return {
            "anomaly_source": self.source.description,
            "texture_set": self.source.facts(),
            "epochs_run": self.epochs_run,
            "final_train_loss": self.loss_history[-1] if self.loss_history else None,
        }
