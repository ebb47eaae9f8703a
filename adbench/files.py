"""File-system primitives every layer may use: atomic writes, safe path components, and
whether a process is alive.

They sit at the bottom of the layers (``docs/ARCHITECTURE.md``) so that, e.g., training
checkpoints write atomically without importing the results store, and the three places that
ask "is the process that left this file still running" (stale temporary records, claims,
synthetic-set generation, job work folders) ask it one way.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

#: suffix of the temporary sibling an atomic write goes through (``.<name>.<pid>.tmp``)
TMP_SUFFIX = ".tmp"


def write_atomic(path: Path | str, write: Callable[[BinaryIO], Any]) -> None:
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


def writer_pid_of_tmp(path: Path) -> int | None:
    """The pid in a ``write_atomic`` temporary name ``.<name>.<pid>.tmp`` (None if it has none)."""
    stem = path.name[: -len(TMP_SUFFIX)]
    try:
        return int(stem.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return None


def safe_name(name: str) -> str:
    """``name`` as one path component: anything but letters, digits, ``-_.`` becomes ``_``
    (a dataset or method name never makes a path leave its folder)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine. A process of another user
    (PermissionError) counts as alive; a pid the OS cannot even represent (overflow, a negative
    or absurd value) is treated as alive too, so nothing of a live run is ever removed on a
    misread number: callers that need more (a lease, a lock) check that as well."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, OSError):
        return True
    return True


def size_text(n_bytes: float) -> str:
    """``1.50 GiB``, or ``12.3 MiB`` below one GiB (where GiB would print 0.00)."""
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.2f} GiB"
    return f"{n_bytes / 2**20:.1f} MiB"


def writable_folder(folder: Path | str, min_free_bytes: int = 0) -> tuple[Path | None, str | None]:
    """(the folder made absolute and created, None) when a file can be written there and it has
    ``min_free_bytes`` free; (None, why not) otherwise: a path below a regular file, no write
    permission, a read-only file system, too little space."""
    import shutil

    path = Path(folder).expanduser().resolve()
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                return None, f"{parent} is a file, not a folder"
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".adbench-probe-{os.getpid()}{TMP_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return None, f"cannot write there ({exc.strerror or exc})"
    if free < min_free_bytes:
        return None, f"only {size_text(free)} free there, at least {size_text(min_free_bytes)} needed"
    return path, None
