"""Galleries: what a method's misses look like, from saved predictions.

Per setting (its lowest seed with saved predictions) and category: the lowest-scored anomalous
and the highest-scored normal test images, the hardest cases for the threshold. Each row shows
the image as the method saw it (``plots.geometry_image``: resize and crop of the record's
geometry), the ground-truth mask, and the anomaly map over the image (inferno colour map,
perceptually uniform and readable under colour-vision deficiencies; the range is shared by
the rows of one gallery, 1st to 99.9th percentile of its maps), with the image score against
the F1-max threshold of that category (the threshold maximising image-level F1 on these
scores, as ``image_f1_max`` reports).

Thumbnails are files under ``assets/gallery/`` named by a hash of what they show, so the same
records write the same bytes; an image seen by several settings is stored once.
"""
from __future__ import annotations

import base64
import hashlib
import io
from typing import Any, Optional

import numpy as np

from adbench.reporting.plots import geometry_image

PER_KIND = 2  # lowest-scored anomalous and highest-scored normal images per gallery
THUMB = 128  # px, the longer side


def f1_max_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold (predict anomalous when score >= t) that maximises image F1."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels.astype(int), scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def pick(scores: np.ndarray, labels: np.ndarray, per_kind: int = PER_KIND) -> list[int]:
    anomalous = [int(i) for i in np.argsort(scores, kind="stable") if labels[i]][:per_kind]
    normal = [int(i) for i in np.argsort(-scores, kind="stable") if not labels[i]][:per_kind]
    return anomalous + normal


class Thumbnails:
    """Encodes each thumbnail once (an image several settings show is stored once) and returns
    its ``src``: a file under ``assets/gallery/``, or a data: URI for the single-file report."""

    def __init__(self, inline: bool = False):
        self.inline = inline
        self.files: dict[str, bytes] = {}

    def save(self, key: str, pixels: np.ndarray, fmt: str) -> str:
        from PIL import Image

        name = hashlib.sha256(key.encode()).hexdigest()[:20] + (".jpg" if fmt == "JPEG" else ".png")
        if name not in self.files:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 82} if fmt == "JPEG" else {"optimize": True}))
            self.files[name] = buffer.getvalue()
        if self.inline:
            mime = "image/jpeg" if fmt == "JPEG" else "image/png"
            return f"data:{mime};base64," + base64.b64encode(self.files[name]).decode("ascii")
        return f"assets/gallery/{name}"


def gallery(setting, category: str, cache, thumbs: Thumbnails) -> Optional[dict[str, Any]]:
    """One gallery, or None when no record of the setting has saved predictions with maps."""
    record, arrays = _first_with_maps(setting, category, cache)
    if arrays is None:
        return None
    scores, labels = np.asarray(arrays["scores"], np.float64), np.asarray(arrays["labels"]).astype(bool)
    threshold = f1_max_threshold(scores, labels) if labels.any() and (~labels).any() else None
    maps = arrays["maps"]
    chosen = pick(scores, labels)
    lo, hi = np.quantile(maps[chosen].astype(np.float32), [0.01, 0.999]) if chosen else (0.0, 1.0)
    rows = [_sample_row(record, arrays, i, threshold, (float(lo), float(hi)), thumbs) for i in chosen]
    return {"setting": setting.label, "slug": setting.slug, "category": category, "seed": record.get("seed"),
            "threshold": threshold, "rows": rows, "per_defect": _per_defect(record)}


def _first_with_maps(setting, category: str, cache):
    for record in setting.records_of(category):
        if record.get("status") != "ok":
            continue
        arrays = cache.get(record)
        if arrays is not None and "maps" in arrays:
            return record, arrays
    return None, None


def _sample_row(record, arrays, i: int, threshold, span, thumbs: Thumbnails) -> dict[str, Any]:
    from matplotlib import colormaps

    path = str(arrays["paths"][i])
    heat = np.asarray(arrays["maps"][i], np.float32)
    raw, found = _raw_image(path, record.get("geometry"), heat.shape)
    norm = np.clip((heat - span[0]) / (span[1] - span[0] + 1e-12), 0, 1)
    colour = colormaps["inferno"](norm)[..., :3]
    overlay = (0.45 * raw + 0.55 * colour) * 255
    mask = arrays["masks"][i] if "masks" in arrays else np.zeros(heat.shape, bool)
    # what the record is, not where this copy of the store lies: the same records give the same names
    key = f"{record.get('dataset')}/{record.get('method')}/{record.get('record_name')}|{i}"
    score, anomalous = float(arrays["scores"][i]), bool(arrays["labels"][i])
    return {
        "name": "/".join(path.replace("\\", "/").split("/")[-2:]), "anomalous": anomalous,
        "raw": thumbs.save(f"raw|{path}|{record.get('geometry')}|{heat.shape}", _thumb(raw * 255), "JPEG"),
        "raw_found": found,
        "mask": thumbs.save(f"mask|{path}|{heat.shape}|{int(np.asarray(mask).sum())}",
                            _thumb(np.asarray(mask, bool).astype(np.float32) * 255), "PNG"),
        "overlay": thumbs.save(f"overlay|{key}", _thumb(overlay), "JPEG"),
        "score": score, "verdict": _verdict(score, anomalous, threshold),
    }


def _raw_image(path: str, geometry: Optional[str], shape) -> tuple[np.ndarray, bool]:
    """The image as the method saw it, or mid grey when the file is gone (the row says so)."""
    try:
        return geometry_image(path, geometry, tuple(shape)), True
    except (OSError, ValueError):
        return np.full((*shape, 3), 0.5, np.float32), False


def _thumb(pixels: np.ndarray) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    scale = THUMB / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))),
                             Image.BILINEAR)
    elif max(image.size) < 64:  # tiny maps: enlarge so a reader sees them (nearest, no invented detail)
        factor = -(-64 // max(image.size))
        image = image.resize((image.size[0] * factor, image.size[1] * factor), Image.NEAREST)
    return np.asarray(image)


def _verdict(score: float, anomalous: bool, threshold: Optional[float]) -> str:
    if threshold is None:
        return "no F1-max threshold (one class only)"
    above = score >= threshold
    if anomalous:
        return "detected (at or above the threshold)" if above else "missed (below the threshold)"
    return "false alarm (at or above the threshold)" if above else "correctly normal (below the threshold)"


def _per_defect(record) -> list[dict[str, Any]]:
    out = []
    for defect, entry in sorted((record.get("per_defect") or {}).items()):
        auroc = (entry or {}).get("image_auroc")
        out.append({"defect": defect, "n": (entry or {}).get("n"),
                    "image_auroc": "n/a" if auroc is None else f"{auroc:.3f}"})
    return out
