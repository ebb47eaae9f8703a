"""Data helpers of the reliability tests (a module of its own: test files import it by name)."""
from __future__ import annotations

from pathlib import Path

#: what macOS writes as ``._<name>`` beside a file on a foreign disk or in a zip (AppleDouble)
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)
#: a test image whose file name is not valid UTF-8 (byte 0xff), as Python spells it on Linux
UNDECODABLE = b"\xff00.png"


def add_hidden_junk(category: Path, normal: str = "good") -> None:
    """What a dataset copied from a Mac or opened in Jupyter carries: AppleDouble companions,
    checkpoint folders, ``__MACOSX``. Indexed, each would be a decode error, a defect class
    without masks, or an orphan mask."""
    import shutil

    for folder, name in ((f"train/{normal}", "._000.png"), (f"test/{normal}", "._000.png"),
                         ("test/square", "._001.png"), ("ground_truth/square", "._001_mask.png")):
        (category / folder / name).write_bytes(APPLEDOUBLE)
    (category / "train" / normal / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    checkpoints = category / "test" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    shutil.copy(_first_image(category / "test" / normal), checkpoints / "001-checkpoint.png")
    (category / "ground_truth" / ".ipynb_checkpoints").mkdir()
    shutil.copy(_first_image(category / "ground_truth" / "square"),
                category / "ground_truth" / ".ipynb_checkpoints" / "001_mask-checkpoint.png")
    macosx = category / "test" / "__MACOSX" / "square"
    macosx.mkdir(parents=True)
    (macosx / "._002.png").write_bytes(APPLEDOUBLE)


def _first_image(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.suffix == ".png" and not p.name.startswith("."))[0]
