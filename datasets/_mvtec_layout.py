"""Walking an MVTec-style category folder; shared by mvtec, btad, miad, folder and synthetic.

The layout (MVTec AD, and the many sets that copied it)::

    <category>/train/<normal>/*.png                 normal training images
    <category>/test/<normal>/*.png                  normal test images (no mask: all zero)
    <category>/test/<defect>/*.png                  anomalous test images, one folder per defect
    <category>/ground_truth/<defect>/<stem>_mask.png

Sets differ only in three names, which are parameters here: the normal folder (``good`` in
MVTec, ``ok`` in BTAD), how a mask file is named from its image stem (``<stem>_mask`` in MVTec,
``<stem>`` in BTAD) and which mask extensions exist (BTAD mixes ``.png`` and ``.bmp``). Every
supported image extension is accepted in any letter case for images and masks alike.

Hidden names (``._001.png``, ``.ipynb_checkpoints``, ``__MACOSX``; ``adbench.dataset.is_hidden``)
are skipped at every level: they are never images, defect classes or masks. Nothing is opened
here (``validate_index`` does that). What the walk can tell from names alone it records:
anomalous images without a mask keep ``mask_path=None`` (validation reports them) and mask
files that match no test image go to ``CategoryIndex.orphan_masks``.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Optional, Sequence

from adbench.data import Sample
from adbench.dataset import CategoryIndex, CategoryInfo, DatasetAdapter, list_folders, list_images
from adbench.errors import DataError


def walk_category(
    category_root: Path,
    info: CategoryInfo,
    *,
    normal: str = "good",
    mask_suffixes: Sequence[str] = ("_mask",),
    mask_folder: str = "ground_truth",
) -> CategoryIndex:
    """Index one category folder laid out like MVTec AD.

    ``mask_suffixes``: what follows the image stem in a mask's file stem, tried in order
    (``("_mask",)`` for MVTec, ``("",)`` for BTAD, ``("_mask", "")`` to accept both).
    """
    category = info.name
    train = [
        Sample(path=p, label=0, category=category, split="train")
        for p in list_images(category_root / "train" / normal)
    ]
    test: list[Sample] = []
    masks_root = category_root / mask_folder
    used_masks: set[Path] = set()
    test_root = category_root / "test"
    for defect_dir in list_folders(test_root):  # not .ipynb_checkpoints, __MACOSX
        defect = defect_dir.name
        is_normal = defect == normal
        masks = {} if is_normal else _masks_by_stem(masks_root / defect, mask_suffixes)
        for path in list_images(defect_dir):
            mask = None if is_normal else masks.get(path.stem)
            if mask is not None:
                used_masks.add(mask)
            test.append(
                Sample(
                    path=path,
                    label=0 if is_normal else 1,
                    category=category,
                    split="test",
                    defect_type=defect,
                    mask_path=mask,
                )
            )
    orphans = [m for m in _all_masks(masks_root) if m not in used_masks]
    return CategoryIndex(info=info, train=train, test=test, orphan_masks=orphans)


def _masks_by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Image stem -> mask path. The first suffix that fits wins; duplicates stay orphans."""
    found: dict[str, Path] = {}
    for mask in list_images(folder):
        stem = image_stem_of_mask(mask, suffixes)
        if stem is not None and stem not in found:
            found[stem] = mask
    return found


def image_stem_of_mask(mask: Path, suffixes: Sequence[str]) -> Optional[str]:
    """``000_mask.png`` -> ``000`` for suffix ``_mask``; None when no suffix fits."""
    for suffix in suffixes:
        if not suffix:
            return mask.stem
        if mask.stem.endswith(suffix) and len(mask.stem) > len(suffix):
            return mask.stem[: -len(suffix)]
    return None


def _all_masks(masks_root: Path) -> list[Path]:
    """Every mask file under ``ground_truth/<defect>/`` (masks of vanished defects included)."""
    out: list[Path] = []
    for folder in list_folders(masks_root):
        out.extend(list_images(folder))
    return out


def category_folders(root: Path) -> list[str]:
    """Sub-folders of ``root`` that look like categories (they hold ``train/`` or ``test/``)."""
    if root is None:
        return []
    return [d.name for d in list_folders(root) if (d / "train").is_dir() or (d / "test").is_dir()]


class MVTecStyleAdapter(DatasetAdapter):
    """Base of adapters whose root holds one MVTec-style folder per category.

    Subclasses set ``NORMAL`` / ``MASK_SUFFIXES`` and ``KNOWN_CATEGORIES``; ``categories()``
    returns the category folders found on disk (known ones with their texture/object info,
    unknown ones as unaligned objects), so a partial download works.
    """

    NORMAL: ClassVar[str] = "good"
    MASK_SUFFIXES: ClassVar[tuple[str, ...]] = ("_mask",)

    def categories(self) -> list[str]:
        return category_folders(self.root)

    def category_root(self, category: str) -> Path:
        root = self.root / category
        if not root.is_dir():
            self.select([category])  # raises the DataError with a close-match hint
            raise DataError(f"{root}: category folder not found")
        return root

    def index(self, category: str) -> CategoryIndex:
        return walk_category(
            self.category_root(category),
            self.category_info(category),
            normal=self.NORMAL,
            mask_suffixes=self.MASK_SUFFIXES,
        )
