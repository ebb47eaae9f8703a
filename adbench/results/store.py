"""Result store: one JSON record per (job, category), written atomically.

Layout: ``<results>/<dataset>/<method>/<category>__<protocol>__s<seed>__<confighash>[__<weights>].json``
(see ``Job.record_name``). A record is written to a temporary file in the same folder,
fsync'ed, then ``os.replace``'d over the final name, and the folder is fsync'ed: a reader (or a
resumed run) sees either no record or a complete one, never a torn file, whatever moment the
process is killed at. Tables and plots read records only, never the run that made them.

Reading is checked (``adbench.results.checks``): a record that is not valid JSON (empty,
truncated) or fails a check is skipped with one warning naming the file and the reason, in every
command; the valid records still count. A resumed run treats such a record as missing and moves
it aside as ``<name>.invalid`` (never deletes it), then runs the job again.

A failed attempt never replaces an ok record (``--rerun`` of a finished job that then fails or
is killed): it is written beside it as ``<record stem>.failed.json``, which readers ignore
while the ok record exists. Folders whose names start with a dot (``.claims``,
``.checkpoints``) hold no records.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from adbench.errors import ResultsWriteError
from adbench.files import TMP_SUFFIX, pid_alive, safe_name, write_atomic, writer_pid_of_tmp
from adbench.jobs import Job
from adbench.results.checks import problem_of

FAILED_SUFFIX = ".failed.json"
INVALID_SUFFIX = ".invalid"
#: free space below which a run does not start (a record is a few kB, predictions a few MB)
MIN_FREE_BYTES = 16 * 2**20

_warned: set[tuple[str, str]] = set()


def warn(path: Path | str, reason: str) -> None:
    """One ``warning:`` line on stderr per (file, reason) and process."""
    key = (str(path), reason)
    if key in _warned:
        return
    _warned.add(key)
    print(f"warning: {path}: {reason}", file=sys.stderr)


def reset_warnings() -> None:
    """Forget which warnings were shown (each command warns about each bad file once)."""
    _warned.clear()


class Store:
    def __init__(self, root: str | Path, warn: Callable[[Path | str, str], None] = warn):
        self.root = Path(root)
        self.warn = warn

    # --- paths ----------------------------------------------------------------------------
    def path_for(self, job: Job, category: str) -> Path:
        return self.root / safe_name(job.dataset) / safe_name(job.method) / job.record_name(category)

    def record_paths(self, job: Job) -> list[Path]:
        return [self.path_for(job, c) for c in job.categories]

    # --- resume ---------------------------------------------------------------------------
    def is_done(self, job: Job) -> bool:
        """True when every record of the job exists, is valid and has status ``ok`` (failed
        ones rerun). An invalid record is moved aside as ``<name>.invalid`` and counts as
        missing, so the job runs again."""
        done = True
        for path in self.record_paths(job):
            record = self.read(path, quarantine=True)
            if record is None or record.get("status") != "ok":
                done = False
        return done

    def read(self, path: Path, *, quarantine: bool = False) -> Optional[dict[str, Any]]:
        """The record at ``path`` if it exists and passes the checks; otherwise None, with a
        warning for a file that exists but is unusable (moved aside when ``quarantine``)."""
        record, problem = read_checked(path)
        if problem is None:
            return record
        if quarantine:
            moved = _move_aside(path)
            self.warn(path, f"{problem}; moved aside as {moved.name}, the job runs again")
        else:
            self.warn(path, f"{problem}; skipped")
        return None

    # --- writing --------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Before any job: the results folder can be created and written, and has free space.
        One ResultsWriteError (exit 2) otherwise, instead of a traceback after the first job."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise ResultsWriteError(f"--results {root}: is a file, not a folder")
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".adbench-write-probe-{os.getpid()}{TMP_SUFFIX}"
            with open(probe, "wb") as fh:
                fh.write(b"probe")
                fh.flush()
                os.fsync(fh.fileno())
            probe.unlink()
        except OSError as exc:
            raise ResultsWriteError(f"--results {root}: cannot write there ({exc.strerror or exc})") from None
        try:
            st = os.statvfs(root)
            free = st.f_bavail * st.f_frsize
        except (OSError, AttributeError):
            return
        if free < MIN_FREE_BYTES:
            raise ResultsWriteError(f"--results {root}: only {free / 2**20:.1f} MiB free on its disk "
                                    f"(at least {MIN_FREE_BYTES // 2**20} MiB needed)")

    def path_of(self, record: dict[str, Any]) -> Path:
        return self.root / safe_name(record["dataset"]) / safe_name(record["method"]) / record["record_name"]

    def write(self, record: dict[str, Any]) -> Path:
        """Write ``record`` atomically and return where it went: its own name, or
        ``<stem>.failed.json`` when it is a failure and an ok record of the job already exists
        (a failed attempt never replaces a finished result). An OSError (disk full, read-only
        folder) is a ResultsWriteError naming the file; nothing written before is touched."""
        path = self.path_of(record)
        if record.get("status") != "ok":
            existing, problem = read_checked(path)
            if problem is None and existing is not None and existing.get("status") == "ok":
                path = failed_sibling(path)
        try:
            write_json_atomic(path, record)
        except OSError as exc:
            raise ResultsWriteError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path

    def clean_stale_tmp(self) -> int:
        """Remove temporary files left by a writer that was killed mid-write."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for tmp in self.root.rglob(f"*{TMP_SUFFIX}"):
            pid = writer_pid_of_tmp(tmp)
            if pid is not None and pid != os.getpid() and pid_alive(pid):
                continue
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
        return removed

    # --- reading --------------------------------------------------------------------------
    def record_files(self) -> Iterator[Path]:
        """Every ``*.json`` under the root outside dot-folders (``.claims``, ``.checkpoints``)."""
        if not self.root.is_dir():
            return
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.endswith(".json") and not name.startswith("."):
                    yield Path(folder) / name

    def records(self, dataset: Optional[str] = None) -> Iterator[dict[str, Any]]:
        """Every valid record (invalid ones: one warning each, skipped). A ``.failed.json``
        attempt counts only while no ok record of the same job exists."""
        for path in self.record_files():
            if path.name.endswith(FAILED_SUFFIX):
                ok_path = path.with_name(path.name[: -len(FAILED_SUFFIX)] + ".json")
                ok, problem = read_checked(ok_path)
                if problem is None and ok is not None and ok.get("status") == "ok":
                    continue
            record = self.read(path)
            if record is None:
                continue
            if dataset is not None and record.get("dataset") != dataset:
                continue
            record["_path"] = str(path)
            yield record


def read_checked(path: Path) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(record, None) for a usable record; (None, None) when there is no file; (None, reason)
    when the file exists but cannot be used."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    if not raw.strip():
        return None, "empty file (a truncated record?)"
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except ValueError as exc:
        return None, f"not valid JSON (truncated?): {str(exc).splitlines()[0][:80]}"
    problem = problem_of(data)
    return (None, problem) if problem else (data, None)


def read_record(path: Path) -> Optional[dict[str, Any]]:
    """The record at ``path`` when it passes the checks, else None (no warning)."""
    return read_checked(path)[0]


def failed_sibling(path: Path) -> Path:
    """``<stem>.failed.json`` beside the record ``<stem>.json``."""
    return path.with_name(path.name[: -len(".json")] + FAILED_SUFFIX)


def _move_aside(path: Path) -> Path:
    """Rename an unusable record to ``<name>.invalid`` (``.invalid.1``... if taken); never delete."""
    target = path.with_name(path.name + INVALID_SUFFIX)
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{INVALID_SUFFIX}.{n}")
    try:
        os.replace(path, target)
    except OSError:
        return path
    return target


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False)
    write_atomic(path, lambda fh: fh.write((text + "\n").encode("utf-8")))


def json_safe(value: Any) -> Any:
    """NaN/inf become null (JSON has no NaN); tuples become lists; numpy scalars floats."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:  # numpy scalars and 0-d arrays
        import numpy as np

        if isinstance(value, np.generic):
            return json_safe(value.item())
        if isinstance(value, np.ndarray):
            return json_safe(value.tolist())
    except ImportError:
        pass
    if isinstance(value, Path):
        return str(value)
    return str(value)
