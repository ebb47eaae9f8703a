"""Any folder of normal and defective images in the MVTec convention.

Two layouts, told apart by whether the root itself holds ``train/``:

* a dataset root with one sub-folder per category (``<root>/<cat>/train/good`` ...);
* the flat layout where the root *is* the category (``../shared/data/magnetic_tile``): the
  category is then named after the folder (``magnetic_tile``).

Inside a category: ``train/good`` (normal training images), ``test/good`` and
``test/<label>`` (normal / defective test images), optionally
``ground_truth/<label>/<stem>_mask.png``. Whether a folder holds a texture or an object, and
whether objects are aligned, cannot be read from disk: every category is an unaligned object
unless the adapter is constructed with ``kind=`` / ``aligned=``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from adbench.dataset import CategoryInfo
from adbench.errors import DataError
from adbench.registry import register_dataset

from ._mvtec_layout import MVTecStyleAdapter, category_folders


@register_dataset("folder")
class ImageFolder(MVTecStyleAdapter):
    """MVTec-style folder(s) of any origin; flat (root = category) or one folder per category."""

    NORMAL = "good"
    MASK_SUFFIXES = ("_mask",)

    def __init__(
        self,
        root: Optional[str | Path] = None,
        *,
        kind: Literal["texture", "object"] = "object",
        aligned: bool = False,
    ):
        super().__init__(root)
        if kind not in ("texture", "object"):
            raise DataError(f"folder dataset: kind must be 'texture' or 'object', not {kind!r}")
        self.kind = kind
        self.aligned = aligned

    @property
    def flat(self) -> bool:
        """The root itself is a category (it holds ``train/``)."""
        return (self.root / "train").is_dir()

    def categories(self) -> list[str]:
        if self.flat:
            return [self.root.name]
        return category_folders(self.root)

    def category_root(self, category: str) -> Path:
        if self.flat:
            if category != self.root.name:
                self.select([category])
            return self.root
        return super().category_root(category)

    def category_info(self, category: str) -> CategoryInfo:
        return CategoryInfo(category, self.kind, self.aligned and self.kind == "object")
