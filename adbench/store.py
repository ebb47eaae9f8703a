"""Result store: one JSON record per (job, category), written atomically.

Layout: ``<results>/<dataset>/<method>/<category>__<protocol>__s<seed>__<confighash>[__<weights>].json``
(see ``Job.record_name``). A record is written to a temporary file in the same folder,
fsync'ed, then ``os.replace``'d over the final name, and the folder is fsync'ed: a reader (or a
resumed run) sees either no record or a complete one, never a torn file, whatever moment the
process is killed at. Tables and plots read records only, never the run that made them.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional

from adbench.jobs import Job

TMP_SUFFIX = ".tmp"


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # --- paths ----------------------------------------------------------------------------
    def path_for(self, job: Job, category: str) -> Path:
        return self.root / _safe(job.dataset) / _safe(job.method) / job.record_name(category)

    def record_paths(self, job: Job) -> list[Path]:
        return [self.path_for(job, c) for c in job.categories]

    # --- resume ---------------------------------------------------------------------------
    def is_done(self, job: Job) -> bool:
        """True when every record of the job exists with status ``ok`` (failed ones rerun)."""
        for path in self.record_paths(job):
            record = read_record(path)
            if record is None or record.get("status") != "ok":
                return False
        return True

    # --- writing --------------------------------------------------------------------------
    def write(self, record: dict[str, Any]) -> Path:
        path = self.root / _safe(record["dataset"]) / _safe(record["method"]) / record["record_name"]
        write_json_atomic(path, record)
        return path

    def clean_stale_tmp(self) -> int:
        """Remove temporary files left by a writer that was killed mid-write."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for tmp in self.root.rglob(f"*{TMP_SUFFIX}"):
            pid = _pid_of_tmp(tmp)
            if pid is not None and pid != os.getpid() and _pid_alive(pid):
                continue
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
        return removed

    # --- reading --------------------------------------------------------------------------
    def records(self, dataset: Optional[str] = None) -> Iterator[dict[str, Any]]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*.json")):
            record = read_record(path)
            if record is None or "method" not in record or "metrics" not in record:
                continue
            if dataset is not None and record.get("dataset") != dataset:
                continue
            record["_path"] = str(path)
            yield record


def read_record(path: Path) -> Optional[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(_json_safe(data), indent=2, sort_keys=True, allow_nan=False)
    write_atomic(path, lambda fh: fh.write((text + "\n").encode("utf-8")))


def write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file through ``write(binary file handle)`` so that readers see the old file or
    the complete new one: a temporary sibling (``.<name>.<pid>.tmp``, which
    ``Store.clean_stale_tmp`` removes after a killed writer), fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}{TMP_SUFFIX}"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _json_safe(value: Any) -> Any:
    """NaN/inf become null (JSON has no NaN); tuples become lists; numpy scalars floats."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:  # numpy scalars and 0-d arrays
        import numpy as np

        if isinstance(value, np.generic):
            return _json_safe(value.item())
        if isinstance(value, np.ndarray):
            return _json_safe(value.tolist())
    except ImportError:
        pass
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _pid_of_tmp(path: Path) -> Optional[int]:
    # .<record name>.<pid>.tmp
    stem = path.name[: -len(TMP_SUFFIX)]
    try:
        return int(stem.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
