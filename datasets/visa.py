"""VisA, the Visual Anomaly set (Zou et al., ECCV 2022), read from its raw release layout.

The raw release keeps images where they were shot and lets a split file decide everything::

    <root>/split_csv/1cls.csv                 columns object,split,label,image,mask
    <root>/<object>/Data/Images/{Normal,Anomaly}/*.JPG
    <root>/<object>/Data/Masks/Anomaly/*.png  label maps (0 = background, k > 0 = defect k)

``split`` is ``train`` or ``test``, ``label`` ``normal`` or ``anomaly``; ``image`` and ``mask``
are paths relative to the root (``mask`` empty for normal images). The 1-class split is the
one the VisA paper and later benchmarks report. Masks are label maps, binarised ``> 0`` by
``adbench.data.load_mask``. The split file names no defect type, so anomalous images are
reported under the single type ``anomaly``.

Categories are the ``object`` values of the CSV whose folder exists (a partial download works).
Mask files under ``<object>/Data/Masks`` that no CSV row uses are orphans.

Kind and alignment (VisA paper, Sec. 3: "complex structure", "multiple instances", "single
instance" groups): all twelve are objects. The PCBs are photographed in a fixed pose, and
candle / macaroni1 / macaroni2 show four instances in fixed slots: aligned. Capsules (many
instances at random places), cashew, chewinggum, fryum and pipe_fryum (single instances whose
pose varies) are not.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from adbench.data import Sample
from adbench.dataset import CategoryIndex, CategoryInfo, DatasetAdapter, is_hidden, walk_files
from adbench.errors import DataError
from adbench.registry import register_dataset

ALIGNED = ("candle", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4")
UNALIGNED = ("capsules", "cashew", "chewinggum", "fryum", "pipe_fryum")
SPLIT_FILE = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")


@register_dataset("visa")
class VisA(DatasetAdapter):
    """VisA raw release; train/test from ``split_csv/1cls.csv``."""

    KNOWN_CATEGORIES = {
        **{c: CategoryInfo(c, "object", True) for c in ALIGNED},
        **{c: CategoryInfo(c, "object", False) for c in UNALIGNED},
    }

    def __init__(self, root: Optional[str | Path] = None):
        super().__init__(root)
        self._rows: Optional[list[dict[str, str]]] = None

    # --- the split file --------------------------------------------------------------------
    def rows(self) -> list[dict[str, str]]:
        """Rows of ``split_csv/1cls.csv``; a missing file or column is a DataError."""
        if self._rows is not None:
            return self._rows
        path = self.root / SPLIT_FILE
        if not path.is_file():
            raise DataError(f"{path}: VisA split file not found (expected the raw VisA release layout)")
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(header)})")
            self._rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
        return self._rows

    def categories(self) -> list[str]:
        names = {row["object"] for row in self.rows() if row["object"] and not is_hidden(row["object"])}
        return sorted(n for n in names if (self.root / n).is_dir())

    # --- one category ----------------------------------------------------------------------
    def index(self, category: str) -> CategoryIndex:
        if category not in self.categories():
            self.select([category])  # raises with a close-match hint
        split_file = self.root / SPLIT_FILE
        info = self.category_info(category)
        train: list[Sample] = []
        test: list[Sample] = []
        problems: list[str] = []
        used_masks: set[Path] = set()
        for line, row in enumerate(self.rows(), start=2):
            if row["object"] != category:
                continue
            where = f"{split_file}:{line}"
            split, label = row["split"].lower(), row["label"].lower()
            if split not in ("train", "test"):
                problems.append(f"{where}: split {row['split']!r} is neither train nor test")
                continue
            if label not in ("normal", "anomaly"):
                problems.append(f"{where}: label {row['label']!r} is neither normal nor anomaly")
                continue
            if split == "train" and label == "anomaly":
                problems.append(f"{where}: anomalous image {row['image']} in the train split")
                continue
            if not row["image"]:
                problems.append(f"{where}: empty image path")
                continue
            mask = self.root / row["mask"] if row["mask"] and label == "anomaly" else None
            if mask is not None:
                used_masks.add(mask)
            sample = Sample(
                path=self.root / row["image"],
                label=int(label == "anomaly"),
                category=category,
                split=split,
                defect_type="anomaly" if label == "anomaly" else "good",
                mask_path=mask,
            )
            (train if split == "train" else test).append(sample)
        if problems:
            head = problems[0] if len(problems) == 1 else f"{len(problems)} problems in {split_file}"
            raise DataError(head, problems=problems)
        orphans = [m for m in self._mask_files(category) if m not in used_masks]
        return CategoryIndex(info=info, train=train, test=test, orphan_masks=orphans)

    def _mask_files(self, category: str) -> list[Path]:
        return walk_files(self.root / category / "Data" / "Masks")  # hidden files skipped
