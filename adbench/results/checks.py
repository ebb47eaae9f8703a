"""Checks a record must pass before any command believes it.

Records are the product of a benchmark: a table that shows a metric stored as a string, averages
a metric of 7.5, or crashes on a record without ``category`` is worse than no table. Every
reader (``table``, ``plot``, ``evaluate``, ``compare``, ``run``'s resume and final table, the
records a Ray worker sends back) goes through ``problem_of``: a record either passes or is
skipped with one warning naming the file and the reason; the other records still count.

What is checked (a record written by adbench always passes; hand edits, truncation, another
tool's JSON or a bug in a plugin may not):

* it is a JSON object with ``method``, ``dataset`` and ``category`` as non-empty strings,
  ``status`` ``ok`` or ``failed``; ``protocol``, ``config_hash``, ``record_name``, ``profile``
  strings, ``seed`` an integer and ``shots`` (k-shot protocol) a positive integer where present;
* ``metrics`` is an object; each value is ``null`` or a finite number (not a string, not a
  boolean) in [0, 1]: every metric adbench computes (AUROC, AUPRO, F1, AP) is a rate;
* ``per_defect`` is an object of objects whose metrics obey the same rule;
* ``training_categories`` is a list of strings; timings are ``null`` or non-negative numbers;
* ``predictions`` (the saved-predictions file) is ``null`` or a plain file name: a name that
  leaves the record's folder (``../../etc/passwd``, an absolute path) is refused.
"""
from __future__ import annotations

import math
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Optional

STATUSES = ("ok", "failed")
IDENTITY_KEYS = ("method", "dataset", "category")  # required: tables group by them
OPTIONAL_NAME_KEYS = ("protocol", "config_hash", "record_name", "profile")  # strings when present
TIMING_KEYS = ("fit_seconds", "test_seconds", "predict_seconds")
#: float sums of rates may land a few ulps outside [0, 1] (an AUROC of 1.0000000000000002)
RATE_SLACK = 1e-9


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_problem(name: str, value: Any) -> Optional[str]:
    """Why a metric value is unusable (None when it is fine)."""
    if value is None:
        return None
    if not _is_number(value):
        return f"metric {name} is {type(value).__name__} {value!r}, not a number"
    if not math.isfinite(value) or not -RATE_SLACK <= float(value) <= 1.0 + RATE_SLACK:
        return f"metric {name} = {value!r} is outside [0, 1]"
    return None


def predictions_problem(name: Any) -> Optional[str]:
    """A saved-predictions reference must be a bare file name inside the record's folder."""
    if name is None:
        return None
    if not isinstance(name, str) or not name:
        return f"predictions is {type(name).__name__} {name!r}, not a file name"
    for flavour in (PurePosixPath(name), PureWindowsPath(name)):
        if flavour.is_absolute() or len(flavour.parts) != 1 or flavour.name in ("..", "."):
            return f"predictions {name!r} leaves the record's folder (refused)"
    return None


def problem_of(record: Any) -> Optional[str]:
    """The first reason ``record`` cannot be used, or None when it passes every check."""
    if not isinstance(record, dict):
        return f"not a record (a JSON {type(record).__name__}, expected an object)"
    for key in IDENTITY_KEYS:
        if key not in record:
            return f"missing {key!r}"
        if not isinstance(record[key], str) or not record[key]:
            return f"{key!r} is {type(record[key]).__name__} {record[key]!r}, not a non-empty string"
    for key in OPTIONAL_NAME_KEYS:
        if record.get(key) is not None and not isinstance(record[key], str):
            return f"{key!r} is {type(record[key]).__name__} {record[key]!r}, not a string"
    seed = record.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        return f"'seed' is {type(seed).__name__} {seed!r}, not an integer"
    shots = record.get("shots")
    if shots is not None and (not isinstance(shots, int) or isinstance(shots, bool) or shots < 1):
        return f"'shots' is {shots!r}, not a positive number of training images"
    if record.get("status") not in STATUSES:
        return f"'status' is {record.get('status')!r}, not ok or failed"
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return f"'metrics' is {type(metrics).__name__}, not an object"
    for name, value in metrics.items():
        why = metric_problem(name, value)
        if why:
            return why
    per_defect = record.get("per_defect", {})
    if per_defect is not None:
        if not isinstance(per_defect, dict):
            return f"'per_defect' is {type(per_defect).__name__}, not an object"
        for defect, entry in per_defect.items():
            if not isinstance(entry, dict):
                return f"per_defect {defect!r} is {type(entry).__name__}, not an object"
            for name, value in entry.items():
                if name == "n":
                    continue
                why = metric_problem(f"{name} of {defect}", value)
                if why:
                    return why
    cats = record.get("training_categories")
    if cats is not None and (not isinstance(cats, list) or not all(isinstance(c, str) for c in cats)):
        return "'training_categories' is not a list of names"
    for key in TIMING_KEYS:
        value = record.get(key)
        if value is not None and (not _is_number(value) or not math.isfinite(value) or value < 0):
            return f"{key!r} = {value!r} is not a non-negative number"
    return predictions_problem(record.get("predictions"))
