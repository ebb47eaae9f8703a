"""Issue 14, item 7: hidden files are not data.

``._001.png`` (the AppleDouble companion macOS writes beside every file on a foreign disk or in
a zip) used to be indexed as an image (and fail to decode); ``test/.ipynb_checkpoints`` became
a defect class. Every adapter lists folders through ``adbench.dataset`` (``list_images`` /
``list_folders`` / ``walk_files``), which skips names starting with a dot and ``__MACOSX``.
"""
from __future__ import annotations

import json
import shutil

import adbench_testkit
from adbench.dataset import is_hidden, list_folders, list_images, validate_index
from adbench.registry import DATASETS
from reliability_kit import APPLEDOUBLE, add_hidden_junk


def test_run_ignores_hidden_files_end_to_end(junk_dataset_run):
    """The run on a category full of junk: exit 0, nothing of the junk indexed."""
    result, _, results = junk_dataset_run
    assert result.exit_code == 0, (result.output, result.exception)
    assert "error" not in result.stderr and "Traceback" not in result.output
    (path,) = list(results.rglob("*.json"))
    record = json.loads(path.read_text())
    assert record["status"] == "ok"
    assert record["n_train_images"] == 6  # not ._000.png nor .DS_Store
    assert record["counts"]["n_images"] == 8  # 4 good + 4 square; no checkpoint, no ._ file
    assert sorted(record["per_defect"]) == ["square"]  # .ipynb_checkpoints / __MACOSX: no class


def test_helpers():
    for name in ("._001.png", ".ipynb_checkpoints", ".DS_Store", "__MACOSX", ".git"):
        assert is_hidden(name), name
    for name in ("001.png", "good", "_mask", "MACOSX", "a.b.png"):
        assert not is_hidden(name), name


def _mvtec_root(tmp_path, normal="good", mask_suffix="_mask"):
    """Two categories with junk inside, plus hidden folders at the root that look like categories."""
    root = adbench_testkit.make_kit_data(tmp_path / "root", categories=("obj_b", "tex_a"))
    for cat in ("obj_b", "tex_a"):
        if normal != "good":
            for split in ("train", "test"):
                (root / cat / split / "good").rename(root / cat / split / normal)
        if mask_suffix != "_mask":
            for mask in (root / cat / "ground_truth" / "square").iterdir():
                mask.rename(mask.with_name(mask.name.replace("_mask", mask_suffix)))
        add_hidden_junk(root / cat, normal)
    for hidden in (".Trash-1000", "__MACOSX", ".ipynb_checkpoints"):
        shutil.copytree(root / "obj_b", root / hidden)  # looks like a category: must not be one
    return root


def _assert_clean(adapter, expected_categories=("obj_b", "tex_a"), normal="good"):
    assert adapter.categories() == list(expected_categories)
    for category in expected_categories:
        index = adapter.index(category)
        files = [s.path for s in index.train + index.test] + [s.mask_path for s in index.test if s.mask_path]
        assert files and not any(is_hidden(part) for f in files for part in f.parts[-3:]), files
        assert {s.defect_type for s in index.test} == {normal, "square"}
        assert index.orphan_masks == []
        validate_index(index, category=category)  # every file decodes: no AppleDouble read


def test_mvtec_miad_folder(tmp_path):
    root = _mvtec_root(tmp_path)
    for name in ("mvtec", "miad", "folder"):
        _assert_clean(DATASETS.get(name)(root))
    # flat folder layout: the root is the category
    flat = DATASETS.get("folder")(root / "obj_b")
    _assert_clean(flat, ("obj_b",))


def test_btad(tmp_path):
    _assert_clean(DATASETS.get("btad")(_mvtec_root(tmp_path, normal="ok", mask_suffix="")), normal="ok")


def test_synthetic_walker(tmp_path):
    """The synthetic set is read by the MVTec walker; a copy of it holding junk stays clean."""
    from adbench.datasets import synthetic

    root = tmp_path / "set"
    adbench_testkit.make_kit_data(tmp_path / "kit", categories=("chip",))
    shutil.copytree(tmp_path / "kit" / "chip", root / "chip")
    add_hidden_junk(root / "chip")
    (root / synthetic.MARKER).write_text("{}")
    adapter = DATASETS.get("synthetic")(root)
    index = adapter.index("chip")
    assert len(index.train) == 6 and len(index.test) == 6 and index.orphan_masks == []
    validate_index(index, category="chip")


def test_visa(tmp_path):
    root = tmp_path / "visa"
    kit = adbench_testkit.make_kit_data(tmp_path / "kit", categories=("candle",))
    images = root / "candle" / "Data" / "Images"
    masks = root / "candle" / "Data" / "Masks" / "Anomaly"
    rows = ["object,split,label,image,mask"]
    for split, sub in (("train", "train/good"), ("test", "test/good")):
        for p in list_images(kit / "candle" / sub):
            dst = images / "Normal" / f"{split}_{p.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dst)
            rows.append(f"candle,{split},normal,{dst.relative_to(root)},")
    for p in list_images(kit / "candle" / "test" / "square"):
        dst = images / "Anomaly" / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
        mask = masks / p.name
        mask.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(kit / "candle" / "ground_truth" / "square" / f"{p.stem}_mask.png", mask)
        rows.append(f"candle,test,anomaly,{dst.relative_to(root)},{mask.relative_to(root)}")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    (masks / "._000.png").write_bytes(APPLEDOUBLE)
    (masks.parent / ".ipynb_checkpoints").mkdir()
    shutil.copy(masks / "000.png", masks.parent / ".ipynb_checkpoints" / "000.png")
    (root / "__MACOSX" / "candle").mkdir(parents=True)
    index = DATASETS.get("visa")(root).index("candle")
    assert index.orphan_masks == []
    validate_index(index, category="candle")
    assert list_folders(root) == [root / "candle", root / "split_csv"]
