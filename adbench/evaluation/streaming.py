"""Streaming evaluation: batches in, metrics out, without ever holding all anomaly maps.

A test pass of MVTec AD at 256x256 is ~1e8 pixels; VisA at full size is far more. Holding
every map to sort it (the exact forms in ``adbench.evaluation.metrics``) would make memory grow with the
test set, so the runner feeds batches to ``StreamingEvaluator`` instead:

* Image-level scores are few (one per image): they are kept exactly, and image metrics are the
  exact scikit-learn ones. When maps are given, the per-image map maximum is kept too, for the
  ``*_mapmax`` image metrics.
* Pixels go into a histogram with a fixed number of equal-width bins. Each bin stores the number
  of normal pixels, the number of anomalous pixels, and the PRO weight of its anomalous pixels
  (1 / size of the pixel's ground-truth region, see ``metrics.region_weights``). Pixel AUROC,
  AP, F1-max and AUPRO are then the exact formulas with each bin treated as one tied threshold.
  Memory is O(bins), whatever the number of images and pixels.
* No score range is known in advance (PatchCore distances are unbounded, maps can be negative or
  constant), so the range is taken from the data: the first spread of values sets it, and a
  value outside it doubles the bin width, merging neighbouring bins pairwise, until everything
  fits. Ordering is never broken (bin index is monotone in the score), only resolution is lost,
  and the result carries a rigorous bound on that loss (``binning``): within a bin the true ROC
  (or PRO) curve lies in the box spanned by the bin's end points, so the trapezoid is off by at
  most half the box area.

* Pixels are binned by ``asinh(score)``, not the score: a monotone transform leaves every
  metric (they depend on the ranking only) unchanged, is the identity near 0 (probability maps
  keep their resolution) and logarithmic for large values, so heavy-tailed maps (per-location
  Mahalanobis distances up to 1e7 beside typical values near 10, measured on CutPaste's patch
  model) do not squeeze the normal pixels into a few bins. Without it that map's pixel AUROC
  streamed to 0.906 against the exact 0.942.

With the default 2**18 bins the bound is far below 1e-3 for real maps even after the range grew
by a factor of 100. What it cannot resolve is a distribution whose pixels sit in a sliver of the
transformed range; then the bound says so.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from adbench.evaluation.curves import ap_from_groups, f1_max_from_groups, pro_area, roc_auc_from_groups
from adbench.evaluation.metrics import (
    as_labels, as_masks, average_precision, check_finite, check_fpr_limit, f1_max, image_auroc, pixel_undefined_reason,
    region_weights, undefined_reason,
)

IMAGE_KEYS = ("image_auroc", "image_f1_max", "image_ap")
#: ``pixel_auroc_anomalous``: pixel AUROC over the anomalous test images only (their defect
#: pixels against their normal pixels), the protocol of ToCoAD's Sec. 4.1.2, whose published
#: pixel numbers are compared with it; every other pixel metric counts every test image
PIXEL_KEYS = ("pixel_auroc", "aupro", "pixel_f1_max", "pixel_ap", "pixel_auroc_anomalous")
_IMAGE_FUNCS = {"image_auroc": image_auroc, "image_f1_max": f1_max, "image_ap": average_precision}
# Pixels binned per call at most (bounds the float temporaries of one update, not the state).
_CHUNK_PIXELS = 1 << 22


@dataclass
class MetricsResult:
    """What ``StreamingEvaluator.compute`` returns; ``to_dict`` is JSON-ready.

    values: defined metrics only. undefined: metric -> reason in words. per_defect: defect type
    -> {"image_auroc": float | None, "n": int[, "image_auroc_mapmax": ...]} (normal test images
    vs that defect type). counts: sizes of what was evaluated. binning: the histogram's state and
    the error bounds of the streamed pixel metrics (see the module docstring).
    """

    values: dict[str, float] = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)
    per_defect: dict[str, dict] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    binning: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class _AdaptiveHistogram:
    """Equal-width bins over [lo, lo + n_bins * width); the range grows by doubling the width.

    ``width == 0`` means every value seen so far equals ``lo`` (all counts sit in bin 0); the
    first different value sets a real range. Three channels per bin: normal pixel count,
    anomalous pixel count, PRO weight of the anomalous pixels.
    """

    def __init__(self, n_bins: int):
        if n_bins < 2 or n_bins % 2:
            raise ValueError(f"n_bins must be an even number >= 2, got {n_bins}")
        self.n_bins = int(n_bins)
        self.lo: Optional[float] = None
        self.width = 0.0
        self.normal = np.zeros(self.n_bins, dtype=np.int64)
        self.anomalous = np.zeros(self.n_bins, dtype=np.int64)
        self.overlap = np.zeros(self.n_bins, dtype=np.float64)
        # normal pixels of anomalous images only (ToCoAD's pixel protocol, Sec. 4.1.2)
        self.normal_in_anomalous = np.zeros(self.n_bins, dtype=np.int64)

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.normal, self.anomalous, self.overlap

    @property
    def channels(self) -> tuple[np.ndarray, ...]:
        """Every per-bin array (what re-binning must move together)."""
        return self.normal, self.anomalous, self.overlap, self.normal_in_anomalous

    def add(self, values: np.ndarray, anomalous: np.ndarray, weights: np.ndarray,
            in_anomalous_image: Optional[np.ndarray] = None) -> None:
        """values: 1-D scores; anomalous: 1-D bool; weights: PRO weights of values[anomalous];
        in_anomalous_image: 1-D bool, whether each pixel's image is labelled anomalous."""
        if values.size == 0:
            return
        self._cover(float(values.min()), float(values.max()))
        idx = self._index(values)
        pos_idx = idx[anomalous]
        pos = np.bincount(pos_idx, minlength=self.n_bins)
        self.anomalous += pos
        self.normal += np.bincount(idx, minlength=self.n_bins) - pos
        if pos_idx.size:
            self.overlap += np.bincount(pos_idx, weights=weights, minlength=self.n_bins)
        if in_anomalous_image is not None and in_anomalous_image.any():
            self.normal_in_anomalous += np.bincount(idx[in_anomalous_image & ~anomalous], minlength=self.n_bins)

    def _index(self, values: np.ndarray) -> np.ndarray:
        if self.width == 0.0:
            return np.zeros(values.size, dtype=np.intp)
        # values >= lo, so truncation is floor (a rounding to -0.x still lands in bin 0).
        # The arithmetic is monotone in the value, so the bin order never contradicts the score
        # order, whatever the floating-point rounding at bin edges.
        idx = ((values - self.lo) / self.width).astype(np.intp)
        np.clip(idx, 0, self.n_bins - 1, out=idx)
        return idx

    def _cover(self, vmin: float, vmax: float) -> None:
        if self.lo is None:
            self.lo = vmin
        if self.width == 0.0:
            if vmin == vmax == self.lo:
                return
            lo, hi = min(self.lo, vmin), max(self.lo, vmax)
            # hi lands inside the last bin rather than on the range's open upper edge.
            width = (hi - lo) / (self.n_bins - 1)
            if not (np.isfinite(width) and width > 0 and np.isfinite(lo + self.n_bins * width)):
                raise ValueError(f"cannot bin anomaly map values spanning [{lo}, {hi}]")
            single = self.lo
            counts = [a[0] for a in self.channels]
            for a in self.channels:
                a[:] = 0
            self.lo, self.width = lo, width
            k = int(self._index(np.array([single]))[0])
            for a, c in zip(self.channels, counts):
                a[k] = c
            return
        while vmin < self.lo:
            self._double(downward=True)
        while vmax >= self.lo + self.n_bins * self.width:
            self._double(downward=False)

    def _double(self, downward: bool) -> None:
        """Merge bins pairwise and extend the range by its own length below or above."""
        half = self.n_bins // 2
        new_lo = self.lo - self.n_bins * self.width if downward else self.lo
        new_width = 2 * self.width
        if not np.isfinite(new_lo + self.n_bins * new_width):
            raise ValueError("anomaly map values span too large a range to bin")
        for a in self.channels:
            merged = a.reshape(half, 2).sum(axis=1)
            a[:] = 0
            if downward:
                a[half:] = merged
            else:
                a[:half] = merged
        self.lo, self.width = new_lo, new_width


class StreamingEvaluator:
    """Accumulates one test pass batch by batch; ``compute`` gives a ``MetricsResult``.

    Memory: O(n_bins) for pixels plus O(n_images) for the image scores, independent of image
    size and pixel count. Every metric is undefined (with a reason) rather than an error when
    the test set cannot define it; malformed input (NaN/inf, shape or label mismatch, maps in
    some batches but not others) raises ValueError before any state changes.
    """

    def __init__(self, fpr_limit: float = 0.3, n_bins: int = 1 << 18):
        check_fpr_limit(fpr_limit)
        self.fpr_limit = float(fpr_limit)
        self._hist = _AdaptiveHistogram(n_bins)
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._map_max: list[np.ndarray] = []
        self._defect_types: list[str] = []
        self._has_maps: Optional[bool] = None
        self._has_masks: Optional[bool] = None
        self._n_pixels = 0
        self._n_regions = 0

    # ------------------------------------------------------------------------- update
    def update(self, scores, labels, defect_types: Optional[Sequence[str]] = None,
               maps=None, masks=None, map_max=None) -> None:
        """One batch. ``map_max`` (optional, [B]): the per-image map maxima to use for the
        ``*_mapmax`` metrics instead of the maxima of ``maps``, for maps stored at reduced
        precision (saved float16 predictions keep the float32 maxima separately)."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        n = s.size
        check_finite(s, "image scores")
        y = as_labels(labels, n)
        types = ["unknown"] * n if defect_types is None else [str(t) for t in defect_types]
        if len(types) != n:
            raise ValueError(f"defect_types has {len(types)} entries but there are {n} scores")
        has_maps = maps is not None
        has_masks = has_maps and masks is not None
        if self._has_maps is not None and has_maps != self._has_maps:
            raise ValueError("anomaly maps were given for some batches but not for others")
        if has_maps and self._has_masks is not None and has_masks != self._has_masks:
            raise ValueError("ground-truth masks were given for some batches but not for others")
        m = g = None
        if has_maps:
            m = np.asarray(maps)
            if m.ndim != 3 or m.shape[0] != n:
                raise ValueError(f"maps must be [B, H, W] with B = {n} scores, got shape {m.shape}")
            if m.dtype not in (np.float32, np.float64):
                m = m.astype(np.float32)
            check_finite(m, "anomaly maps")
            if has_masks:
                g = as_masks(masks, m.shape)

        # Validated: from here on nothing raises (except the histogram's range guard).
        self._has_maps = has_maps
        if has_maps:
            self._has_masks = has_masks
            if map_max is not None:
                self._map_max.append(np.asarray(map_max, dtype=np.float64).reshape(n))
            else:
                self._map_max.append(m.reshape(n, -1).max(axis=1).astype(np.float64) if m.size else
                                     np.zeros(n))
            self._n_pixels += m.size
            if has_masks:
                self._add_pixels(m, g, y)
        self._scores.append(s)
        self._labels.append(y)
        self._defect_types.extend(types)

    def _add_pixels(self, maps: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> None:
        if maps.size == 0:
            return
        per_chunk = max(1, _CHUNK_PIXELS // max(1, maps[0].size))
        for start in range(0, maps.shape[0], per_chunk):
            m, g = maps[start:start + per_chunk], masks[start:start + per_chunk]
            in_anomalous = np.repeat(labels[start:start + per_chunk].astype(bool), m[0].size)
            weights = np.zeros(0)
            if g.any():
                parts = []
                for mask in g:
                    w, k = region_weights(mask)
                    self._n_regions += k
                    parts.append(w[mask])
                weights = np.concatenate(parts)
            # bins over asinh(score): a monotone transform, so every metric (a function of the
            # pixel ranking) is unchanged, while heavy tails (Mahalanobis distances of 1e7 next
            # to typical values of 10) no longer squeeze the normal pixels into a few bins
            self._hist.add(np.arcsinh(m.reshape(-1).astype(np.float64)), g.reshape(-1), weights, in_anomalous)

    # ------------------------------------------------------------------------- compute
    def compute(self) -> MetricsResult:
        """Metrics over everything seen so far (the evaluator stays usable afterwards)."""
        result = MetricsResult()
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=bool)
        map_max = np.concatenate(self._map_max) if self._has_maps else None
        self._image_metrics(result, scores, labels, map_max)
        self._per_defect(result, scores, labels, map_max)
        self._pixel_metrics(result)
        normal, anomalous, _ = self._hist.arrays
        n_anom_px = int(anomalous.sum())
        result.counts = {
            "n_images": int(labels.size),
            "n_anomalous": int(labels.sum()),
            "n_normal": int(labels.size - labels.sum()),
            "n_pixels": int(self._n_pixels),
            "n_anomalous_pixels": n_anom_px,
            "n_regions": int(self._n_regions),
        }
        return result

    def _image_metrics(self, result, scores, labels, map_max) -> None:
        reason = undefined_reason(labels)
        sources = {"": scores}
        if map_max is not None:
            sources["_mapmax"] = map_max
        for suffix, values in sources.items():
            for key, func in _IMAGE_FUNCS.items():
                if reason:
                    result.undefined[key + suffix] = reason
                else:
                    result.values[key + suffix] = func(values, labels)

    def _per_defect(self, result, scores, labels, map_max) -> None:
        types = np.asarray(self._defect_types, dtype=object)
        normal = ~labels
        for defect in sorted(set(types[labels])):
            this = labels & (types == defect)
            entry = {"n": int(this.sum())}
            sel = normal | this
            for suffix, values in (("", scores), ("_mapmax", map_max)):
                if values is None:
                    continue
                entry["image_auroc" + suffix] = (image_auroc(values[sel], labels[sel])
                                                 if normal.any() else None)
            result.per_defect[str(defect)] = entry

    def _pixel_metrics(self, result) -> None:
        hist = self._hist
        normal, anomalous, overlap = hist.arrays
        if not self._has_maps:
            reason = "method produces no anomaly maps" if self._has_maps is False else "test set is empty"
        elif not self._has_masks:
            reason = "no ground-truth masks were given"
        else:
            reason = pixel_undefined_reason(int(anomalous.sum()), int(normal.sum()))
        result.binning = {"n_bins": hist.n_bins, "lo": hist.lo, "bin_width": hist.width}
        if reason:
            result.undefined.update({k: reason for k in PIXEL_KEYS})
            return
        # Descending score order: the highest bin is the first threshold.
        neg, pos, pro = normal[::-1], anomalous[::-1], overlap[::-1]
        n_neg, n_pos = float(neg.sum()), float(pos.sum())
        result.values["pixel_auroc"] = roc_auc_from_groups(pos, neg)
        result.values["pixel_ap"] = ap_from_groups(pos, neg)
        result.values["pixel_f1_max"] = f1_max_from_groups(pos, neg)
        fpr = np.concatenate(([0.0], np.cumsum(neg) / n_neg))
        pro_curve = np.concatenate(([0.0], np.cumsum(pro) / self._n_regions))
        result.values["aupro"] = pro_area(fpr, pro_curve, self.fpr_limit)
        neg_anom = hist.normal_in_anomalous[::-1]
        if neg_anom.sum() > 0:  # ToCoAD's protocol: the anomalous test images' pixels only
            result.values["pixel_auroc_anomalous"] = roc_auc_from_groups(pos, neg_anom)
        else:
            result.undefined["pixel_auroc_anomalous"] = "no normal pixel in the anomalous test images"
        # Error bounds: half the box of every bin (tied pairs for AUROC; for AUPRO, the bins
        # that start below the FPR limit).
        result.binning["pixel_auroc_max_error"] = float(0.5 * np.sum(neg / n_neg * (pos / n_pos)))
        d_fpr, d_pro = np.diff(fpr), np.diff(pro_curve)
        below = fpr[:-1] < self.fpr_limit
        result.binning["aupro_max_error"] = float(
            0.5 * np.sum(d_fpr[below] * d_pro[below]) / self.fpr_limit)
