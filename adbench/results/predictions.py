"""Saved predictions: a job's test outputs next to its record, so metrics, confidence intervals
and figures can be recomputed without retraining.

``adbench run --save-predictions`` makes the worker keep, per category, the image scores
(float64), the anomaly maps (float16: half the disk of float32, and ~3 significant digits is
more than any pixel ranking metric of a [B, H, W] map needs; float32 for a category whose maps
exceed float16's range, e.g. per-location Mahalanobis distances of 1e7), each map's maximum at full
precision (float16 rounding ties the maxima of saturated maps, e.g. DRAEM's probabilities near
1, which moved map-max image AUROC by 0.006 when recomputed from float16), the ground-truth
masks (bit-packed), the labels, defect types and sample paths. The parent writes them as ``<record stem>.npz`` beside
the record (atomically, like the record) and the record's ``predictions`` field names the file.

``adbench evaluate --results DIR`` recomputes every metric from these files with the same
``StreamingEvaluator`` the worker uses and compares with the recorded values: image metrics
match exactly (same float64 scores), pixel metrics up to the float16 rounding of the maps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

#: key of the in-memory arrays a worker attaches to a record (never written into the JSON)
ATTACHED = "_predictions"
#: maps whose magnitude exceeds this are saved as float32 (float16's largest value is 65504)
FLOAT16_SAFE_MAX = 60000.0


class Collector:
    """Accumulates one category's test outputs batch by batch (in the worker)."""

    def __init__(self) -> None:
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.maps: list[np.ndarray] = []
        self.map_max: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.paths: list[str] = []
        self.defect_types: list[str] = []
        self.maps_dtype = np.float16

    def update(self, scores, labels, maps, masks, paths, defect_types) -> None:
        self.scores.append(np.asarray(scores, dtype=np.float64).reshape(-1))
        self.labels.append(np.asarray(labels, dtype=np.int8).reshape(-1))
        if maps is not None:
            full = np.asarray(maps)
            self.map_max.append(full.reshape(full.shape[0], -1).max(axis=1).astype(np.float64))
            if self.maps_dtype == np.float16 and full.size and np.abs(full).max() > FLOAT16_SAFE_MAX:
                # values float16 cannot hold (it overflows to inf above 65504): float32 for this
                # category, earlier batches upcast exactly
                self.maps_dtype = np.float32
                self.maps = [m.astype(np.float32) for m in self.maps]
            self.maps.append(full.astype(self.maps_dtype))
        if masks is not None:
            self.masks.append(np.asarray(masks, dtype=bool))
        self.paths.extend(str(p) for p in paths)
        self.defect_types.extend(str(d) for d in defect_types)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "scores": np.concatenate(self.scores) if self.scores else np.zeros(0),
            "labels": np.concatenate(self.labels) if self.labels else np.zeros(0, np.int8),
            "paths": np.asarray(self.paths, dtype=str),
            "defect_types": np.asarray(self.defect_types, dtype=str),
        }
        if self.maps:
            out["maps"] = np.concatenate(self.maps)
            out["map_max"] = np.concatenate(self.map_max)
        if self.masks:
            masks = np.concatenate(self.masks)
            out["masks_packed"] = np.packbits(masks.reshape(-1))
            out["masks_shape"] = np.asarray(masks.shape, dtype=np.int64)
        return out


def _file_of(record: dict[str, Any]) -> Optional[Path]:
    """The saved-predictions file a record names, only if it lies in the record's own folder
    (a name like ``../../etc/passwd`` is refused with a warning, never opened)."""
    from adbench.results.checks import predictions_problem
    from adbench.results.store import warn

    if "_path" not in record:
        return None
    name = record.get("predictions") or path_for(record["_path"]).name
    problem = predictions_problem(name)
    if problem:
        warn(record["_path"], f"{problem}; its predictions are ignored")
        return None
    return Path(record["_path"]).parent / name


def has_predictions(record: dict[str, Any]) -> bool:
    path = _file_of(record)
    return path is not None and path.is_file()


def path_for(record_path: str | Path) -> Path:
    record_path = Path(record_path)
    return record_path.with_suffix(".npz")


def save(record_path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` beside the record, atomically, as the store writes records."""
    from adbench.files import write_atomic

    path = path_for(record_path)
    write_atomic(path, lambda fh: np.savez_compressed(fh, **arrays))
    return path


def load(record: dict[str, Any]) -> Optional[dict[str, np.ndarray]]:
    """The saved arrays of a record read from a store (``None`` when it has none)."""
    # the record names its file; a record rewritten by a later run of the same job (same name,
    # same config hash and seed) may not, and then the file beside it with its stem is used:
    # ``adbench evaluate`` checks that such predictions still reproduce the recorded metrics
    from adbench.results.store import warn

    path = _file_of(record)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
        if "masks_packed" in out:
            shape = tuple(int(s) for s in out.pop("masks_shape"))
            out["masks"] = np.unpackbits(out.pop("masks_packed"), count=int(np.prod(shape))).reshape(shape).astype(bool)
        problem = _arrays_problem(out)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: warn, carry on
        problem = f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''})"
    if problem:
        warn(path, f"saved predictions {problem}; ignored")
        return None
    return out


def _arrays_problem(arrays: dict[str, np.ndarray]) -> Optional[str]:
    """Shapes that agree with each other (a file another tool wrote, or a damaged one, may not)."""
    if "scores" not in arrays or "labels" not in arrays:
        return "lack scores or labels"
    n = len(arrays["scores"])
    for key in ("labels", "paths", "defect_types", "maps", "map_max", "masks"):
        if key in arrays and len(arrays[key]) != n:
            return f"have {len(arrays[key])} {key} for {n} scores"
    return None


def recompute(arrays: dict[str, np.ndarray], fpr_limit: float = 0.3, batch: int = 32) -> dict[str, Any]:
    """Metrics of saved predictions, through the worker's evaluator (fed in the same batches)."""
    from adbench.evaluation.streaming import StreamingEvaluator

    evaluator = StreamingEvaluator(fpr_limit=fpr_limit)
    n = len(arrays["scores"])
    maps, masks, map_max = arrays.get("maps"), arrays.get("masks"), arrays.get("map_max")
    for i in range(0, n, batch):
        sl = slice(i, i + batch)
        evaluator.update(scores=arrays["scores"][sl], labels=arrays["labels"][sl].astype(np.int64),
                         defect_types=list(arrays["defect_types"][sl]),
                         maps=None if maps is None else maps[sl].astype(np.float32),
                         masks=None if masks is None else masks[sl],
                         map_max=None if map_max is None else map_max[sl])
    return evaluator.compute().to_dict()


def compare(record: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Rows (metric, recorded, recomputed, abs diff) for every metric with a recorded value."""
    values = (recompute(arrays).get("values") or {})
    rows = []
    for metric, recorded in sorted((record.get("metrics") or {}).items()):
        again = values.get(metric)
        if recorded is None and (again is None or not np.isfinite(again)):
            continue
        diff = None if recorded is None or again is None else abs(float(again) - float(recorded))
        rows.append({"metric": metric, "recorded": recorded, "recomputed": again, "abs_diff": diff})
    return rows
