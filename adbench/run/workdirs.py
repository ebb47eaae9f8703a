"""Scratch folders of jobs: named after the process that owns them, so leftovers can be found.

A job keeps spill files, caches and checkpoint scratch in a private folder under the system
temp folder (or ``--workdir``: GPU nodes often have a small /tmp), removed when the job ends. A job killed with ``kill -9`` (or by the out-of-memory
killer) cannot remove its own; the next run does: a folder ``adbench-job-<host>-<pid>-*`` whose
process no longer exists on this host is removed. Folders of live processes and of other hosts
(a temp folder shared between machines) are never touched.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Optional

PREFIX = "adbench-job-"


def _host_tag() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def make_workdir(base: Optional[str] = None) -> str:
    """A new scratch folder for this process: ``<base>/adbench-job-<host>-<pid>-<random>``."""
    return tempfile.mkdtemp(prefix=f"{PREFIX}{_host_tag()}-{os.getpid()}-", dir=base)


def owner_pid(folder: Path) -> Optional[int]:
    """The pid in a folder name made by ``make_workdir`` on this host (None otherwise)."""
    rest = folder.name[len(PREFIX):] if folder.name.startswith(PREFIX) else ""
    host = _host_tag() + "-"
    if not rest.startswith(host):
        return None
    pid = rest[len(host):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def remove_orphaned_workdirs(base: Optional[str] = None) -> int:
    """Remove this host's job folders whose process is gone; returns how many were removed."""
    from adbench.files import pid_alive

    root = Path(base or tempfile.gettempdir())
    removed = 0
    try:
        entries = list(root.iterdir())
    except OSError:
        return 0
    for folder in entries:
        pid = owner_pid(folder)
        if pid is None or pid_alive(pid) or not folder.is_dir():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += not folder.exists()
    return removed
