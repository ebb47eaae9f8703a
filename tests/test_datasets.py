"""Dataset adapters on tiny fake copies of each set's exact on-disk layout, plus the real data.

VisA, BTAD and MIAD are not available offline, so each test writes a few-pixel replica of the
release layout (VisA's split CSV, BTAD's ok/ko and .bmp files, MIAD's scenarios) into tmp_path
and checks what the adapter indexes: splits, labels, defect types, masks matched by stem,
texture/object info, orphan masks. Bad input must come back as one DataError listing every
problem, each naming its file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adbench.data import Preprocess, make_loader
from adbench.dataset import validate_index
from adbench.errors import DataError
from adbench.registry import DATASETS

SIZE = (24, 16)  # width, height


def write_image(path: Path, mode: str = "RGB", size=SIZE, value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w)).astype(np.uint16))
        assert img.mode == "I;16"
    elif mode == "P":
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3)).astype(np.uint8)).convert("P")
    else:
        arr = np.full((h, w, 4), value, np.uint8)
        arr[..., :3] = rng.integers(0, 255, (h, w, 3))
        img = Image.fromarray(arr, mode="RGBA").convert(mode)
    img.save(path)
    return path


def write_mask(path: Path, size=SIZE, value: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = np.zeros((h, w), np.uint8)
    arr[2:6, 3:9] = value
    Image.fromarray(arr, mode="L").save(path)
    return path


def mvtec_category(root: Path, name: str, *, normal="good", defects=("broken",), ext=".png",
                   mask_ext=".png", mask_suffix="_mask", n_train=3) -> Path:
    cat = root / name
    for i in range(n_train):
        write_image(cat / "train" / normal / f"{i:03d}{ext}")
    write_image(cat / "test" / normal / f"000{ext}")
    for defect in defects:
        for i in range(2):
            write_image(cat / "test" / defect / f"{i:03d}{ext}")
            write_mask(cat / "ground_truth" / defect / f"{i:03d}{mask_suffix}{mask_ext}")
    return cat


def adapter(name: str, root):
    return DATASETS.get(name)(root)


# ---------------------------------------------------------------------------------------------
def test_all_adapters_registered_without_import_errors():
    names = DATASETS.names()
    for name in ("mvtec", "visa", "btad", "miad", "folder", "synthetic"):
        assert name in names
    mine = [m for m in DATASETS.import_errors if m.rsplit(".", 1)[-1] in names or "datasets" in m]
    assert not mine, DATASETS.import_errors
    assert "_mvtec_layout" not in names


def test_mvtec_layout_info_and_masks(tmp_path):
    mvtec_category(tmp_path, "bottle", defects=("broken_large", "contamination"))
    mvtec_category(tmp_path, "carpet")
    mvtec_category(tmp_path, "screw")
    (tmp_path / "not_a_category").mkdir()
    ds = adapter("mvtec", tmp_path)
    assert ds.categories() == ["bottle", "carpet", "screw"]
    index = ds.index("bottle")
    validate_index(index)
    assert len(index.train) == 3 and len(index.test) == 5
    assert {s.defect_type for s in index.test} == {"good", "broken_large", "contamination"}
    for s in index.test:
        assert (s.label == 1) == (s.defect_type != "good")
        assert (s.mask_path is not None) == (s.label == 1)
        if s.mask_path:
            assert s.mask_path.name == f"{s.path.stem}_mask.png"
            assert s.mask_path.parent.name == s.defect_type
    assert ds.category_info("bottle").kind == "object" and ds.category_info("bottle").aligned
    assert ds.category_info("carpet").kind == "texture"
    assert not ds.category_info("screw").aligned
    assert len(ds.KNOWN_CATEGORIES) == 15
    assert sum(i.kind == "texture" for i in ds.KNOWN_CATEGORIES.values()) == 5


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_any_image_mode_loads_as_rgb(tmp_path, mode):
    cat = mvtec_category(tmp_path, "tile", n_train=1)
    write_image(cat / "train" / "good" / "odd.png", mode=mode)
    index = adapter("mvtec", tmp_path).index("tile")
    validate_index(index)
    batch = next(iter(make_loader(index.train, Preprocess(32), batch_size=8, train=False)))
    assert batch.images.shape == (2, 3, 32, 32)
    assert 0 <= float(batch.images.min()) and float(batch.images.max()) <= 1


def test_extensions_in_any_letter_case(tmp_path):
    cat = tmp_path / "wood"
    for i, ext in enumerate([".png", ".PNG", ".jpg", ".JPEG", ".bmp", ".tif", ".TIFF"]):
        write_image(cat / "train" / "good" / f"{i}{ext}")
    (cat / "train" / "good" / "notes.txt").write_text("not an image")
    write_image(cat / "test" / "hole" / "a.JPG")
    write_mask(cat / "ground_truth" / "hole" / "a_mask.png")
    index = adapter("mvtec", tmp_path).index("wood")
    validate_index(index)
    assert len(index.train) == 7
    assert index.test[0].mask_path.name == "a_mask.png"


def test_visa_split_csv_and_label_map_masks(tmp_path):
    rows = ["object,split,label,image,mask"]
    for cat in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{cat}/Data/Images/Normal/{i:04d}.JPG"
            write_image(tmp_path / rel)
            rows.append(f"{cat},{'train' if i < 2 else 'test'},normal,{rel},")
        for i in range(2):
            rel = f"{cat}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{cat}/Data/Masks/Anomaly/{i:03d}.png"
            write_image(tmp_path / rel)
            write_mask(tmp_path / mrel, value=3)  # label map: defect id 3
            rows.append(f"{cat},test,anomaly,{rel},{mrel}")
    rows.append("capsules,train,normal,capsules/Data/Images/Normal/0000.JPG,")  # not downloaded
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    ds = adapter("visa", tmp_path)
    assert ds.categories() == ["candle", "pcb1"]
    index = ds.index("candle")
    validate_index(index)
    assert len(index.train) == 2 and len(index.test) == 3
    assert all(s.category == "candle" for s in index.train + index.test)
    assert ds.category_info("pcb1").aligned and not ds.category_info("capsules").aligned
    batch = next(iter(make_loader(index.test, Preprocess(16), batch_size=8, train=False)))
    assert batch.labels.tolist() == [0, 1, 1]
    assert batch.masks[1:].any() and not batch.masks[0].any()  # label 3 binarised to True
    # an orphan mask (no CSV row uses it) and a bad label are reported
    write_mask(tmp_path / "candle" / "Data" / "Masks" / "Anomaly" / "999.png")
    with pytest.raises(DataError, match="999.png: mask has no matching test image"):
        validate_index(adapter("visa", tmp_path).index("candle"))
    (tmp_path / "split_csv" / "1cls.csv").write_text("\n".join(rows + ["candle,test,weird,x.JPG,"]) + "\n")
    with pytest.raises(DataError, match=r"1cls.csv:\d+: label 'weird'"):
        adapter("visa", tmp_path).index("candle")


def test_visa_missing_split_file(tmp_path):
    with pytest.raises(DataError, match="1cls.csv: VisA split file not found"):
        adapter("visa", tmp_path).categories()


def test_btad_ok_ko_bmp_and_mixed_mask_extensions(tmp_path):
    mvtec_category(tmp_path, "01", normal="ok", defects=("ko",), ext=".bmp", mask_ext=".png", mask_suffix="")
    mvtec_category(tmp_path, "02", normal="ok", defects=("ko",), ext=".png", mask_ext=".png", mask_suffix="")
    mvtec_category(tmp_path, "03", normal="ok", defects=("ko",), ext=".bmp", mask_ext=".bmp", mask_suffix="")
    ds = adapter("btad", tmp_path)
    assert ds.categories() == ["01", "02", "03"]
    for cat, mask_ext in (("01", ".png"), ("02", ".png"), ("03", ".bmp")):
        index = ds.index(cat)
        validate_index(index)
        assert len(index.train) == 3
        assert [s.label for s in index.test] == [1, 1, 0]
        anomalous = [s for s in index.test if s.label]
        assert all(s.mask_path.suffix == mask_ext and s.mask_path.stem == s.path.stem for s in anomalous)
        assert {s.defect_type for s in index.test} == {"ok", "ko"}


def test_miad_scenarios_and_mask_names(tmp_path):
    mvtec_category(tmp_path, "metal_welding", defects=("weld_beading", "weld_pit"))
    cat = mvtec_category(tmp_path, "nut_and_bolt", defects=("bolt_miss",))
    # a mask named exactly like its image is accepted too
    (cat / "ground_truth" / "bolt_miss" / "001_mask.png").rename(cat / "ground_truth" / "bolt_miss" / "001.png")
    ds = adapter("miad", tmp_path)
    assert ds.categories() == ["metal_welding", "nut_and_bolt"]
    assert ds.category_info("metal_welding").kind == "texture"
    assert ds.category_info("nut_and_bolt").kind == "object"
    assert set(ds.KNOWN_CATEGORIES) == {
        "electrical_insulator", "metal_welding", "photovoltaic_module", "wind_turbine",
        "catenary_dropper", "nut_and_bolt", "witness_mark",
    }
    index = ds.index("nut_and_bolt")
    validate_index(index)
    assert sorted(s.mask_path.name for s in index.test if s.label) == ["000_mask.png", "001.png"]
    validate_index(ds.index("metal_welding"))


def test_folder_flat_and_nested(tmp_path):
    flat = mvtec_category(tmp_path / "data", "magnetic_like", defects=("crack", "blowhole"))
    ds = adapter("folder", flat)
    assert ds.categories() == ["magnetic_like"]
    index = ds.index("magnetic_like")
    validate_index(index)
    assert index.info.kind == "object" and not index.info.aligned
    assert len(index.test) == 5
    with pytest.raises(DataError, match="did you mean 'magnetic_like'"):
        ds.index("magnetic_lik")
    mvtec_category(tmp_path / "data", "other")
    nested = DATASETS.get("folder")(tmp_path / "data", kind="texture")
    assert nested.categories() == ["magnetic_like", "other"]
    assert nested.index("other").info.kind == "texture"


# --- bad input ----------------------------------------------------------------------------------
def test_missing_root_is_a_data_error(tmp_path):
    for name in ("mvtec", "visa", "btad", "miad", "folder"):
        with pytest.raises(DataError, match="folder not found"):
            adapter(name, tmp_path / "nope")
        with pytest.raises(DataError, match="--data-root is required"):
            adapter(name, None)


def test_every_problem_listed_with_its_file(tmp_path):
    cat = mvtec_category(tmp_path, "bottle", defects=("broken", "crack"))
    # corrupt image
    (cat / "test" / "broken" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    # mask of a different size
    write_mask(cat / "ground_truth" / "broken" / "001_mask.png", size=(10, 10))
    # anomalous image without its mask
    (cat / "ground_truth" / "crack" / "000_mask.png").unlink()
    # orphan mask: no test image of that stem
    write_mask(cat / "ground_truth" / "crack" / "777_mask.png")
    index = adapter("mvtec", tmp_path).index("bottle")
    with pytest.raises(DataError) as info:
        validate_index(index)
    problems = info.value.problems
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert "broken/000.png: cannot decode image" in text
    assert "broken/001_mask.png: mask is 10x10 but its image 001.png is 24x16" in text
    assert "crack/000.png: anomalous test image has no mask" in text
    assert "crack/777_mask.png: mask has no matching test image" in text


def test_empty_train_folder(tmp_path):
    cat = mvtec_category(tmp_path, "bottle", n_train=0)
    (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
    with pytest.raises(DataError, match="bottle: empty train split"):
        validate_index(adapter("mvtec", tmp_path).index("bottle"))


def test_unknown_category_has_close_match_hint(tmp_path):
    mvtec_category(tmp_path, "bottle")
    ds = adapter("mvtec", tmp_path)
    with pytest.raises(DataError, match="'botle' \\(did you mean 'bottle'\\?\\)"):
        ds.select(["botle"])
    with pytest.raises(DataError, match="did you mean 'bottle'"):
        ds.index("botle")


# --- real data -------------------------------------------------------------------------------
def test_real_mvtec_bottle(shared_data):
    ds = adapter("mvtec", shared_data / "mvtec_ad")
    assert ds.categories() == ["bottle"]
    index = ds.index("bottle")
    validate_index(index)
    assert len(index.train) == 209 and len(index.train) + len(index.test) == 292
    assert sum(s.mask_path is not None for s in index.test) == 63
    assert not index.orphan_masks


def test_real_magnetic_tile_flat_folder(shared_data):
    ds = adapter("folder", shared_data / "magnetic_tile")
    assert ds.categories() == ["magnetic_tile"]
    index = ds.index("magnetic_tile")
    validate_index(index)
    assert len(index.train) == 802 and len(index.test) == 538
    assert sum(s.label for s in index.test) == 388 == sum(s.mask_path is not None for s in index.test)
    assert not index.orphan_masks
