"""Samples, batches and geometry: what a dataset adapter hands the harness and a detector sees.

Conventions (DESIGN.md):

* Images load as RGB whatever their mode: L, P, RGBA (alpha dropped), I;16 / I (rescaled from
  their bit depth to 8 bits, not clipped), CMYK...
* Masks load as ``mask > 0`` (VisA masks are label maps), and an anomalous image without mask
  file (only allowed by adapters that say so) gets an all-zero mask.
* Geometry: square resize (aspect not kept, the whole image stays in view; PIL bilinear, or
  bicubic where a method's recipe says so), then an optional centre crop. Images and masks go
  through exactly the same geometry; masks use nearest-neighbour so they stay binary. An
  anomalous image whose defect a crop cuts away keeps its image label; ``Batch.defect_cropped``
  flags it so the record can count such images.
* Images reach the detector as float tensors in [0, 1]; normalisation is the method's business.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from adbench.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    """Extensions match case-insensitively (VisA ships ``.JPG``)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Sample:
    """One image of a dataset index.

    label: 0 normal, 1 anomalous. mask_path: None for normal images (all-zero mask).
    defect_type: ``good`` for normal images, else the defect folder/class name.
    """

    path: Path
    label: int
    category: str
    split: str  # "train" or "test"
    defect_type: str = "good"
    mask_path: Optional[Path] = None


@dataclass
class Batch:
    """A collated batch. ``images`` are [B, 3, H, W] float in [0, 1] at the method's geometry.

    Training batches carry labels (all 0) but never masks; test batches carry masks [B, H, W]
    (bool) at the same geometry as the images.
    """

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    categories: list[str]
    defect_types: list[str]
    masks: Optional[torch.Tensor] = None
    defect_cropped: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        self.images = self.images.to(device)
        return self


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@dataclass(frozen=True)
class Preprocess:
    """Geometry shared by image and mask: square resize, then optional centre crop.

    ``resample``: PIL filter of the image resize, ``bilinear`` (default) or ``bicubic`` (both
    antialiased when shrinking, as PIL resizes); masks always use nearest-neighbour."""

    image_size: int = 256
    crop_size: Optional[int] = None
    resample: str = "bilinear"

    @property
    def output_size(self) -> int:
        return int(self.crop_size or self.image_size)

    def describe(self) -> str:
        """Short text for records and tables (``resize256`` / ``resize256-crop224``;
        ``-bicubic`` appended for a bicubic resize)."""
        text = f"resize{self.image_size}"
        text += f"-crop{self.crop_size}" if self.crop_size else ""
        return text + ("" if self.resample == "bilinear" else f"-{self.resample}")

    def image(self, img: Image.Image) -> torch.Tensor:
        """RGB PIL image -> [3, S, S] float tensor in [0, 1]."""
        return self.image_uint8(img).float() / 255.0

    def image_uint8(self, img: Image.Image) -> torch.Tensor:
        """RGB PIL image -> [3, S, S] uint8 tensor (what the decoded-image cache keeps;
        ``image`` is exactly this divided by 255)."""
        img = img.resize((self.image_size, self.image_size), _RESAMPLE[self.resample])
        tensor = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return self._crop(tensor).contiguous()

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        """Boolean [h, w] mask -> [S, S] bool tensor, nearest-neighbour so it stays binary."""
        img = Image.fromarray(mask.astype(np.uint8) * 255)
        img = img.resize((self.image_size, self.image_size), Image.NEAREST)
        tensor = torch.from_numpy(np.asarray(img) > 127)
        return self._crop(tensor)

    def _crop(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.crop_size or self.crop_size >= self.image_size:
            return tensor
        top = (self.image_size - self.crop_size) // 2
        return tensor[..., top : top + self.crop_size, top : top + self.crop_size]


# --------------------------------------------------------------------------------------------
# Image and mask reading
# --------------------------------------------------------------------------------------------
def load_rgb(path: Path | str) -> Image.Image:
    """Open any image as 8-bit RGB. Raises DataError naming the file if it cannot be decoded."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode image ({_short(exc)})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB without clipping high bit depths."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        else:
            arr = arr / top * 255.0
        arr = np.clip(arr + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def load_mask(path: Path | str) -> np.ndarray:
    """Open a mask as a boolean array (``> 0``: label maps count as defect everywhere != 0)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img)
    except FileNotFoundError:
        raise DataError(f"{path}: mask file not found") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode mask ({_short(exc)})") from None
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    return arr > 0


def image_size_of(path: Path | str) -> tuple[int, int]:
    """(width, height) without decoding pixel data."""
    with Image.open(path) as img:
        return img.size


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
