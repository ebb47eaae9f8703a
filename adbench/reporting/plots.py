"""Figures from stored records (and saved predictions): ``adbench plot heatmap|bars|cost|gallery``.

Every figure is written as PNG and PDF (matplotlib's Agg backend, no display needed) and
reads records only, like the tables:

* ``heatmap``: method (setting) x category of any metric, annotated with the values.
* ``bars``: mean of a metric per method over the categories it has, with the bootstrap 95 %
  interval of the image AUROC when every record of the method has saved predictions (the
  interval of a mean over categories: categories resampled jointly with their images is out of
  scope, so the bar's interval is the mean of the per-category interval ends, a conservative
  width), else the min-max over categories as a range and a note in the title.
* ``cost``: fit seconds (or test throughput) against a metric, one point per record, log x.
* ``gallery``: rows of test images (input, ground truth contour, anomaly map overlay) like the
  seed papers' figures, from saved predictions: chosen sample paths, or the worst-scored
  (anomalous images with the lowest scores, normal images with the highest).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd


def shown(text: Any) -> str:
    """Text safe to draw and print: a file name that is not valid UTF-8 (on Linux a name is
    bytes; Python keeps a bad byte such as 0xff as a lone surrogate, ``\\udcff``) is shown
    with the byte escaped, ``\\xff``, instead of crashing the font renderer and PDF writer."""
    text = str(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes
        return text.encode("utf-8", "backslashreplace").decode("ascii")
    return raw.decode("utf-8", "backslashreplace")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> list[Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("") if out.suffix in (".png", ".pdf") else out
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    # no creation date in the files: the same records give the same bytes (PNG has none to
    # begin with; matplotlib stamps PDFs with CreationDate unless told not to)
    stamps = {".png": {"Software": None}, ".pdf": {"CreationDate": None, "Producer": None}}
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata=stamps[p.suffix])
    _plt().close(fig)
    return paths


def _label(r: dict[str, Any]) -> str:
    label = str(r.get("method"))
    if (r.get("protocol") or "single") != "single":
        label += f" ({r['protocol']})"
    return label + f" [{r.get('profile')}]"


def metric_frame(records: Iterable[dict[str, Any]], metric: str, dataset: Optional[str] = None) -> pd.DataFrame:
    rows = [{"setting": shown(_label(r)), "method": shown(r.get("method")), "dataset": shown(r.get("dataset")),
             "category": shown(r.get("category")), "value": (r.get("metrics") or {}).get(metric), "record": r}
            for r in records if r.get("status") == "ok" and (dataset is None or r.get("dataset") == dataset)]
    frame = pd.DataFrame(rows, columns=["setting", "method", "dataset", "category", "value", "record"])
    return frame.dropna(subset=["value"])


def heatmap(records, metric: str, out, dataset: Optional[str] = None) -> list[Path]:
    import seaborn as sns

    plt = _plt()
    frame = metric_frame(records, metric, dataset)
    if frame.empty:
        raise ValueError(f"no records with a value of {metric}")
    pivot = frame.pivot_table(index="setting", columns="category", values="value", aggfunc="mean")
    pivot["mean"] = pivot.mean(axis=1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * pivot.shape[1], 1.2 + 0.45 * pivot.shape[0]))
    sns.heatmap(pivot, annot=True, fmt=".3f", cmap="viridis", vmin=max(0.5, float(np.nanmin(pivot.values)) - 0.02),
                vmax=1.0, cbar_kws={"label": metric}, ax=ax, annot_kws={"size": 8})
    ax.set_xlabel("category (mean: over the categories the row has)")
    ax.set_ylabel("")
    ax.set_title(shown(f"{dataset or ','.join(sorted(frame['dataset'].unique()))}: {metric}"))
    return _save(fig, out)


def bars(records, metric: str, out, dataset: Optional[str] = None, n_boot: int = 500) -> list[Path]:
    from adbench.reporting import bootstrap
    from adbench.results import predictions

    plt = _plt()
    frame = metric_frame(records, metric, dataset)
    if frame.empty:
        raise ValueError(f"no records with a value of {metric}")
    rows = []
    for setting, group in frame.groupby("setting", sort=True):
        lows, highs = [], []
        if metric in ("image_auroc", "pixel_auroc"):
            for r in group["record"]:
                arrays = predictions.load(r)
                if arrays is None:
                    break
                if metric == "image_auroc":
                    ci = bootstrap.image_auroc_ci(arrays["scores"], arrays["labels"], n_boot=n_boot)
                elif "maps" in arrays and "masks" in arrays:
                    ci = bootstrap.pixel_auroc_ci(arrays["maps"], arrays["masks"], n_boot=n_boot)
                else:
                    break
                lows.append(ci.low)
                highs.append(ci.high)
        mean = float(group["value"].mean())
        if len(lows) == len(group):
            lo, hi, kind = float(np.mean(lows)), float(np.mean(highs)), "95% bootstrap CI"
        else:
            lo, hi, kind = float(group["value"].min()), float(group["value"].max()), "min-max over categories"
        rows.append((setting, mean, lo, hi, kind, len(group)))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 3.6))
    x = np.arange(len(rows))
    means = np.array([r[1] for r in rows])
    err = np.array([[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]])
    colors = ["tab:blue" if r[4].startswith("95") else "tab:gray" for r in rows]
    ax.bar(x, means, color=colors, yerr=np.clip(err, 0, None), capsize=4)
    for xi, r in zip(x, rows):
        ax.text(xi, r[1] + 0.005, f"{r[1]:.3f}\n(n={r[5]})", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [r[0] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(max(0.0, min(r[2] for r in rows) - 0.1), 1.05)
    ax.set_ylabel(f"mean {metric}")
    kinds = sorted({r[4] for r in rows})
    ax.set_title(shown(f"{dataset or ''} mean {metric}; error bars: {' / '.join(kinds)} (blue: CI, gray: range)"),
                 fontsize=9)
    return _save(fig, out)


def cost(records, metric: str, out, x: str = "fit_seconds", dataset: Optional[str] = None) -> list[Path]:
    import seaborn as sns

    plt = _plt()
    frame = metric_frame(records, metric, dataset)
    frame["x"] = [r.get(x) for r in frame["record"]]
    frame = frame.dropna(subset=["x"])
    if frame.empty:
        raise ValueError(f"no records with both {x} and {metric}")
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    sns.scatterplot(data=frame, x="x", y="value", hue="setting", style="category", s=70, ax=ax)
    for _, row in frame.iterrows():
        ax.annotate(str(row["method"]), (row["x"], row["value"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel({"fit_seconds": "fit seconds (log)", "test_throughput": "test images / s of predict (log)"}
                  .get(x, x))
    ax.set_ylabel(metric)
    hosts = sorted({f"{(r.get('host') or {}).get('cpu_model')} x{(r.get('host') or {}).get('cpu_count')}"
                    for r in frame["record"]})
    ax.set_title(shown(f"cost vs {metric} ({'; '.join(hosts)})"), fontsize=9)
    ax.legend(fontsize=6, loc="best")
    return _save(fig, out)


def _load_rgb(path: str, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.open(path).convert("RGB")
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0


def geometry_image(path: str, geometry: Optional[str], shape: tuple[int, int]) -> np.ndarray:
    """The input as the method saw it (resize, optional centre crop), at the map's size."""
    import re

    resize, crop = shape[0], None
    if geometry:
        m = re.match(r"resize(\d+)(?:-crop(\d+))?", geometry)
        if m:
            resize, crop = int(m.group(1)), int(m.group(2)) if m.group(2) else None
    img = _load_rgb(path, resize)
    if crop:
        o = (resize - crop) // 2
        img = img[o:o + crop, o:o + crop]
    if img.shape[:2] != tuple(shape):
        from PIL import Image

        img = np.asarray(Image.fromarray((img * 255).astype(np.uint8)).resize(shape[::-1]), np.float32) / 255
    return img


def pick_samples(arrays: dict[str, np.ndarray], n: int, paths: Optional[Sequence[str]] = None) -> list[int]:
    """Indices of chosen paths (matched by suffix), else the worst-scored: lowest-scored
    anomalous and highest-scored normal images, alternating."""
    all_paths = [str(p) for p in arrays["paths"]]
    if paths:
        out = []
        for want in paths:
            # as the shell passed it, or as figures show it (a byte that is not UTF-8: \\xff)
            hits = [i for i, p in enumerate(all_paths) if p.endswith(want) or shown(p).endswith(want)]
            if not hits:
                raise ValueError(f"sample {shown(want)!r} is not among the saved predictions")
            out.append(hits[0])
        return out
    scores, labels = arrays["scores"], arrays["labels"].astype(bool)
    bad = [i for i in np.argsort(scores) if labels[i]]
    good = [i for i in np.argsort(-scores) if not labels[i]]
    out = []
    while len(out) < n and (bad or good):
        if bad:
            out.append(int(bad.pop(0)))
        if good and len(out) < n:
            out.append(int(good.pop(0)))
    return out


def gallery(record: dict[str, Any], out, n: int = 4, paths: Optional[Sequence[str]] = None) -> list[Path]:
    from adbench.results import predictions

    plt = _plt()
    arrays = predictions.load(record)
    if arrays is None or "maps" not in arrays:
        raise ValueError(f"{shown(record.get('record_name'))}: no saved anomaly maps (run with --save-predictions)")
    idx = pick_samples(arrays, n, paths)
    maps = arrays["maps"].astype(np.float32)
    masks = arrays.get("masks")
    lo, hi = np.quantile(maps, [0.01, 0.999])
    fig, axes = plt.subplots(len(idx), 3, figsize=(7.5, 2.5 * len(idx)), squeeze=False)
    for row, i in enumerate(idx):
        img = geometry_image(str(arrays["paths"][i]), record.get("geometry"), maps.shape[1:])
        label = "anomalous" if arrays["labels"][i] else "normal"
        name = shown("/".join(str(arrays["paths"][i]).split("/")[-2:]))
        axes[row, 0].imshow(img)
        axes[row, 0].set_title(f"{name} ({label})", fontsize=7)
        axes[row, 1].imshow(img)
        if masks is not None and masks[i].any():
            axes[row, 1].contour(masks[i], levels=[0.5], colors="red", linewidths=1)
        axes[row, 1].set_title("ground truth", fontsize=7)
        axes[row, 2].imshow(img)
        axes[row, 2].imshow(np.clip((maps[i] - lo) / (hi - lo + 1e-12), 0, 1), cmap="jet", alpha=0.5)
        axes[row, 2].set_title(f"prediction, score {arrays['scores'][i]:.3g}", fontsize=7)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle(shown(f"{record.get('method')} / {record.get('dataset')} / {record.get('category')} "
                       f"({record.get('profile')}, {record.get('geometry')}); map colour range shared across rows"),
                 fontsize=8)
    return _save(fig, out)
