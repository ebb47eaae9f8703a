"""SimSiam's two-view augmentation, drawn from an explicit generator (reproducible per job).

SimSiam (Chen & He, CVPR 2021, Sec. 4 / appendix, the MoCo v2 recipe) makes each view with, in
this order:

1. RandomResizedCrop to the input size, area scale U(0.2, 1), aspect ratio log-uniform in
   (3/4, 4/3) (torchvision's sampling: up to 10 tries, then the whole image, ratio clamped);
2. ColorJitter brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1, applied with p = 0.8,
   the four adjustments in a random order (torchvision's ColorJitter);
3. RandomGrayscale, p = 0.2 (three equal channels);
4. GaussianBlur, sigma U(0.1, 2.0), p = 0.5; kernel side 10 % of the image side, made odd (23 px
   at 224, as MoCo v2's / SimSiam's torchvision code uses);
5. RandomHorizontalFlip, p = 0.5.

(Normalisation is F's own, inside ``Backbone``.) ToCoAD (seed 002, Sec. 3.2 and 4.1) names
"random crop, color jitter, grayscale" and says it builds the views "the same approach as
[SimSiam]"; this is SimSiam's whole set.

Every random number comes from the ``torch.Generator`` passed in (never torch's global state),
so a job's views depend on its seed only. ``sample`` draws the per-image parameters and
``apply`` applies them, batched (each operation written as torchvision defines it; a test
checks them against torchvision's functionals, which are 5-20x slower on a CPU); tests also
check the rates on the parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class ViewParams:
    """One view of one image: crop box (top, left, height, width), jitter (None = not applied:
    brightness, contrast, saturation, hue factors and the order of the four), grayscale, blur
    sigma (None = no blur), flip."""

    crop: tuple[int, int, int, int]
    jitter: Optional[tuple[float, float, float, float]]
    jitter_order: tuple[int, ...]
    grayscale: bool
    blur_sigma: Optional[float]
    flip: bool


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g))


def blur_kernel_size(side: int, fraction: float = 0.1) -> int:
    """10 % of the image side, odd (torchvision's blur needs an odd kernel): 224 -> 23, 64 -> 7."""
    k = max(3, int(fraction * side))
    return k if k % 2 else k + 1


class SimSiamViews:
    """``views(images, generator)``: one augmented view per image of a float [B, 3, H, W] batch
    in [0, 1], at ``size``; call it twice for SimSiam's two views."""

    def __init__(self, size: tuple[int, int], scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                 jitter=(0.4, 0.4, 0.4, 0.1), p_jitter: float = 0.8, p_gray: float = 0.2,
                 p_blur: float = 0.5, sigma=(0.1, 2.0), p_flip: float = 0.5):
        self.size = (int(size[0]), int(size[1]))
        self.scale, self.ratio, self.jitter = tuple(scale), tuple(ratio), tuple(jitter)
        self.p_jitter, self.p_gray, self.p_blur, self.p_flip = p_jitter, p_gray, p_blur, p_flip
        self.sigma = tuple(sigma)
        self.kernel = blur_kernel_size(min(self.size))

    # --- parameters ----------------------------------------------------------------------------
    def _crop(self, h: int, w: int, g: torch.Generator) -> tuple[int, int, int, int]:
        area = h * w
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * _uniform(g, *self.scale)
            aspect = math.exp(_uniform(g, log_lo, log_hi))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (), generator=g))
                left = int(torch.randint(0, w - cw + 1, (), generator=g))
                return top, left, ch, cw
        in_ratio = w / h  # fallback: the whole image, aspect clamped to the range
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def sample(self, n: int, h: int, w: int, generator: torch.Generator) -> list[ViewParams]:
        out = []
        b, c, s, hue = self.jitter
        for _ in range(n):
            crop = self._crop(h, w, generator)
            jitter = None
            order = tuple(int(i) for i in torch.randperm(4, generator=generator))
            if float(torch.rand((), generator=generator)) < self.p_jitter:
                jitter = (_uniform(generator, 1 - b, 1 + b), _uniform(generator, 1 - c, 1 + c),
                          _uniform(generator, 1 - s, 1 + s), _uniform(generator, -hue, hue))
            gray = float(torch.rand((), generator=generator)) < self.p_gray
            sigma = None
            if float(torch.rand((), generator=generator)) < self.p_blur:
                sigma = _uniform(generator, *self.sigma)
            flip = float(torch.rand((), generator=generator)) < self.p_flip
            out.append(ViewParams(crop, jitter, order, gray, sigma, flip))
        return out

    # --- application (batched: one tensor op per operation and per group of images) --------------
    def apply(self, images: torch.Tensor, params: list[ViewParams]) -> torch.Tensor:
        """Apply per-image ``params`` to float [B, 3, H, W] images in [0, 1]. The operations are
        torchvision's definitions (ColorJitter's blends with the ITU-R 601 grey, HSV hue
        rotation; Gaussian kernel exp(-x^2 / 2 sigma^2) over the kernel, reflect padding)."""
        import torch.nn.functional as F
        from kornia.enhance import adjust_hue
        from kornia.filters import gaussian_blur2d

        crops = []
        for img, p in zip(images, params):
            top, left, h, w = p.crop
            patch = img[None, :, top : top + h, left : left + w]
            crops.append(F.interpolate(patch, size=self.size, mode="bilinear", align_corners=False, antialias=True)[0])
        x = torch.stack(crops).clamp(0.0, 1.0)

        def rows(pred) -> torch.Tensor:
            return torch.tensor([i for i, p in enumerate(params) if pred(p)], dtype=torch.long, device=x.device)

        def factor(idx, k: int) -> torch.Tensor:
            return torch.tensor([params[int(i)].jitter[k] for i in idx], dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)

        for position in range(4):  # ColorJitter: the four adjustments in each image's own order
            for op in range(4):
                idx = rows(lambda p: p.jitter is not None and p.jitter_order[position] == op)
                if len(idx) == 0:
                    continue
                sub, f = x[idx], factor(idx, op)
                if op == 0:  # brightness: blend with black
                    sub = f * sub
                elif op == 1:  # contrast: blend with the image's mean grey
                    sub = f * sub + (1 - f) * _grey(sub).mean(dim=(-3, -2, -1), keepdim=True)
                elif op == 2:  # saturation: blend with the grey image
                    sub = f * sub + (1 - f) * _grey(sub)
                else:  # hue: rotate by f turns (kornia takes radians)
                    sub = adjust_hue(sub, f.view(-1) * 2 * math.pi)
                x[idx] = sub.clamp(0.0, 1.0)
        idx = rows(lambda p: p.grayscale)
        if len(idx):
            x[idx] = _grey(x[idx]).expand(-1, 3, -1, -1)
        idx = rows(lambda p: p.blur_sigma is not None)
        if len(idx):
            sigma = torch.tensor([[params[int(i)].blur_sigma] * 2 for i in idx], dtype=x.dtype, device=x.device)
            x[idx] = gaussian_blur2d(x[idx], (self.kernel, self.kernel), sigma, border_type="reflect")
        idx = rows(lambda p: p.flip)
        if len(idx):
            x[idx] = x[idx].flip(-1)
        return x.clamp(0.0, 1.0)

    def apply_one(self, image: torch.Tensor, p: ViewParams) -> torch.Tensor:
        return self.apply(image[None].float(), [p])[0]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        params = self.sample(images.shape[0], images.shape[-2], images.shape[-1], generator)
        return self.apply(images.float(), params)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale: 0.2989 R + 0.587 G + 0.114 B, [B, 1, H, W]."""
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
