"""Dataset adapter contract and index validation.

An adapter turns a folder on disk into an index of ``Sample``s per category, reading data in
place. It knows its own layout (MVTec folders, VisA's split CSV, BTAD's ok/ko...) and declares,
per category, whether it is a texture or an object and whether objects are aligned (MVTec means
by type; CutPaste's per-location GDE needs alignment).

Before any training the runner calls ``validate_index`` on every selected category: each file
opens, each anomalous test image has a mask of the same size, each mask has an image, the
train split is not empty. All problems are reported at once, one line each, naming the file.
A test split without anomalous images is *not* an error: its metrics are undefined and say so.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Optional

from PIL import Image

from adbench.data import Sample, is_image_file
from adbench.errors import DataError


@dataclass(frozen=True)
class CategoryInfo:
    """kind: ``texture`` or ``object``; aligned: objects photographed in a fixed pose."""

    name: str
    kind: Literal["texture", "object"] = "object"
    aligned: bool = False


@dataclass
class CategoryIndex:
    info: CategoryInfo
    train: list[Sample]
    test: list[Sample]
    #: masks found on disk that belong to no test image (reported by validation)
    orphan_masks: list[Path] = field(default_factory=list)


class DatasetAdapter(abc.ABC):
    """Base class of dataset adapters. Subclasses register with ``@register_dataset("name")``.

    ``root`` is the ``--data-root`` folder (None lets an adapter use its default, e.g. the
    synthetic set's cache). ``categories()`` lists what is on disk; ``index(category)`` builds
    that category's samples without opening any image (validation does that).
    """

    name: ClassVar[str] = ""
    #: whether the adapter works without --data-root (the synthetic set)
    needs_root: ClassVar[bool] = True
    #: known categories with their info; adapters of open layouts (folder) leave it empty
    KNOWN_CATEGORIES: ClassVar[dict[str, CategoryInfo]] = {}

    def __init__(self, root: Optional[str | Path] = None):
        if root is None and self.needs_root:
            raise DataError(f"--data-root is required for dataset {self.name!r}")
        self.root = Path(root).expanduser() if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise DataError(f"--data-root {self.root}: folder not found")

    @abc.abstractmethod
    def categories(self) -> list[str]:
        """Categories found on disk, sorted."""

    @abc.abstractmethod
    def index(self, category: str) -> CategoryIndex:
        """Samples of one category (train: normal only; test: normal + anomalous)."""

    def category_info(self, category: str) -> CategoryInfo:
        return self.KNOWN_CATEGORIES.get(category, CategoryInfo(category))

    def select(self, requested: Optional[list[str]]) -> list[str]:
        """Resolve ``--category`` (None = all found). Unknown names are a DataError."""
        found = self.categories()
        if not found:
            raise DataError(f"--data-root {self.root}: no {self.name} categories found")
        if not requested:
            return found
        missing = [c for c in requested if c not in found]
        if missing:
            import difflib

            hints = []
            for name in missing:
                close = difflib.get_close_matches(name, found, n=1)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise DataError(
                f"--category {', '.join(hints)} not found in {self.root or self.name}; "
                f"available: {', '.join(found)}"
            )
        return list(requested)


#: folder names that are never data, whatever their content: macOS zip leftovers
IGNORED_NAMES = frozenset({"__MACOSX"})


def is_hidden(name: str) -> bool:
    """Names dataset indexing never reads: dot files and folders (``._001.png``, the AppleDouble
    companion macOS writes beside every file on a foreign disk or in a zip; ``.ipynb_checkpoints``,
    ``.DS_Store``, ``.git``) and ``__MACOSX``."""
    return name.startswith(".") or name in IGNORED_NAMES


def visible_entries(folder: Path) -> list[Path]:
    """Entries of ``folder`` that are not hidden (``is_hidden``), sorted; [] if not a folder.

    The one place adapters list a folder: every file and sub-folder an index is built from
    comes through here (or ``list_images`` / ``list_folders`` / ``walk_files``)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not is_hidden(p.name))


def list_folders(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted."""
    return [p for p in visible_entries(folder) if p.is_dir()]


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder (any supported extension, any letter case), sorted; hidden
    files (``._001.png``) are not images."""
    return [p for p in visible_entries(folder) if p.is_file() and is_image_file(p)]


def walk_files(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder``, sorted, not entering hidden folders."""
    out: list[Path] = []
    for entry in visible_entries(folder):
        if entry.is_dir():
            out.extend(walk_files(entry))
        elif entry.is_file() and is_image_file(entry):
            out.append(entry)
    return sorted(out)


def validate_index(index: CategoryIndex, *, category: str = "") -> None:
    """Open every file once; raise one DataError listing every problem found."""
    problems: list[str] = []
    where = category or index.info.name
    if not index.train:
        problems.append(f"{where}: empty train split (no normal training images found)")
    if not index.test:
        problems.append(f"{where}: empty test split (no test images found)")
    for sample in index.train + index.test:
        size = _check_image(sample.path, problems)
        if sample.mask_path is None:
            if sample.label == 1:
                problems.append(f"{sample.path}: anomalous test image has no mask")
            continue
        mask_size = _check_image(sample.mask_path, problems, what="mask")
        if size is not None and mask_size is not None and size != mask_size:
            problems.append(
                f"{sample.mask_path}: mask is {mask_size[0]}x{mask_size[1]} but its image "
                f"{sample.path.name} is {size[0]}x{size[1]}"
            )
    for orphan in index.orphan_masks:
        problems.append(f"{orphan}: mask has no matching test image")
    if problems:
        head = problems[0] if len(problems) == 1 else f"{len(problems)} problems in {where}"
        raise DataError(head, problems=problems)


def _check_image(path: Path, problems: list[str], what: str = "image") -> Optional[tuple[int, int]]:
    if not path.is_file():
        problems.append(f"{path}: {what} file not found")
        return None
    try:
        with Image.open(path) as img:
            img.load()  # decode fully: a truncated file opens but fails here
            return img.size
    except Exception as exc:  # PIL raises many types for corrupt files
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        problems.append(f"{path}: cannot decode {what} ({text[:160]})")
        return None
