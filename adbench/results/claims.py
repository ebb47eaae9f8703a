"""Per-job claims, so several runs over one results folder share the work instead of doing it twice.

A run claims a job right before it starts it, by creating ``<results>/.claims/<dataset>/<method>/
<record stem>.claim``; the claim is removed once the job's records are written. Another run that
meets a live claim skips the job ("running elsewhere"); two runs over the same grid thus split
it between them. There is no lock on the folder, only one small file per job in flight.

Why these choices:

* Atomic creation that also holds on NFS: the claim is written to a unique temporary file and
  ``os.link``-ed to its final name. ``link`` fails if the name exists, atomically, on local file
  systems and NFS alike (``O_EXCL`` was unreliable on old NFS clients). Because an NFS ``link``
  can report failure after succeeding (a lost reply), ownership is decided by reading the
  claim back and comparing its token, not by the return code.
* A lease: the claim says who holds it (pid, host, a random token) and until when. The run
  renews every claim it holds from a background thread (``renew_seconds``), so the lease of a
  live run never runs out, however long its job trains.
* Stale claims are taken over: a claim whose process is gone (same host: the pid no longer
  exists) or whose lease expired (another host: the run stopped renewing, e.g. it was killed
  with ``kill -9`` or its machine died) is renamed aside and claimed again. Clocks of different
  hosts may differ: keep ``lease_seconds`` (default 10 minutes) well above any clock skew.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from adbench.files import pid_alive

CLAIMS_DIR = ".claims"
LEASE_ENV = "ADBENCH_CLAIM_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 600.0


def _host() -> str:
    return socket.gethostname()


@dataclass
class Holder:
    """Who holds a claim (read from its file)."""

    pid: int
    host: str
    token: str
    claimed_at: float
    renewed_at: float
    lease_seconds: float
    job: str = ""

    @classmethod
    def from_file(cls, path: Path) -> Optional["Holder"]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(int(data["pid"]), str(data["host"]), str(data["token"]), float(data["claimed_at"]),
                       float(data["renewed_at"]), float(data["lease_seconds"]), str(data.get("job", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def is_stale(self, now: Optional[float] = None) -> bool:
        """Dead process on this host, or a lease that ran out (any host)."""
        now = time.time() if now is None else now
        if self.host == _host() and not pid_alive(self.pid):
            return True
        return now > self.renewed_at + self.lease_seconds

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.claimed_at))
        return f"pid {self.pid} on {self.host}, since {since}"


class ClaimBook:
    """The claims one run holds; renews them while the run lives, releases them at the end."""

    def __init__(self, results_root: str | Path, lease_seconds: Optional[float] = None,
                 renew_seconds: Optional[float] = None):
        self.root = Path(results_root) / CLAIMS_DIR
        env = os.environ.get(LEASE_ENV)
        self.lease_seconds = float(lease_seconds if lease_seconds is not None else (env or DEFAULT_LEASE_SECONDS))
        self.renew_seconds = float(renew_seconds if renew_seconds is not None else max(0.05, self.lease_seconds / 10))
        self.token = uuid.uuid4().hex
        self.pid = os.getpid()
        self.host = _host()
        self.held: dict[Path, float] = {}  # path -> claimed_at
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- paths ---------------------------------------------------------------------------------
    def path_for(self, dataset: str, method: str, stem: str) -> Path:
        return self.root / dataset / method / f"{stem}.claim"

    # --- acquire / release ---------------------------------------------------------------------
    def acquire(self, path: Path, job: str = "") -> Optional[Holder]:
        """Claim ``path``. Returns None when this run now holds it, else the live holder."""
        path.parent.mkdir(parents=True, exist_ok=True)
        claimed_at = time.time()
        for _attempt in range(5):
            self._link_new(path, claimed_at, job)
            holder = Holder.from_file(path)
            if holder is not None and holder.token == self.token:
                with self._lock:
                    self.held[path] = claimed_at
                self._ensure_renewing()
                return None
            if holder is None:  # a claim being written right now, or unreadable: look again
                if path.exists() and time.time() - _mtime(path) > self.lease_seconds:
                    self._displace(path, None)
                time.sleep(0.05)
                continue
            if not holder.is_stale():
                return holder
            self._displace(path, holder)
        holder = Holder.from_file(path)
        return holder if holder is not None else Holder(-1, "?", "?", claimed_at, claimed_at, self.lease_seconds, job)

    def release(self, path: Path) -> None:
        with self._lock:
            self.held.pop(path, None)
        holder = Holder.from_file(path)
        if holder is not None and holder.token == self.token:
            try:
                path.unlink()
            except OSError:
                pass

    def release_all(self) -> None:
        for path in list(self.held):
            self.release(path)
        self._stop.set()

    # --- internals -----------------------------------------------------------------------------
    def _content(self, claimed_at: float, job: str) -> bytes:
        return json.dumps({"pid": self.pid, "host": self.host, "token": self.token, "claimed_at": claimed_at,
                           "renewed_at": time.time(), "lease_seconds": self.lease_seconds, "job": job}).encode()

    def _write_tmp(self, path: Path, content: bytes) -> Path:
        tmp = path.with_name(f".{path.name}.{self.host}.{self.pid}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def _link_new(self, path: Path, claimed_at: float, job: str) -> None:
        tmp = self._write_tmp(path, self._content(claimed_at, job))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: exclusive create instead
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(tmp.read_bytes())
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass

    def _displace(self, path: Path, stale: Optional[Holder]) -> None:
        """Move a stale claim aside. If, between our look and the rename, its owner changed (a
        live run took it over first), put that fresh claim back."""
        aside = path.with_name(f".{path.name}.stale.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, aside)
        except OSError:
            return
        moved = Holder.from_file(aside)
        if stale is not None and moved is not None and moved.token != stale.token and not moved.is_stale():
            try:
                os.link(aside, path)
            except OSError:
                pass
        try:
            aside.unlink()
        except OSError:
            pass

    def _ensure_renewing(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="adbench-claims", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            self.renew()

    def renew(self) -> None:
        """Push the lease of every held claim forward (rewrite, only while it is still ours)."""
        with self._lock:
            held = dict(self.held)
        for path, claimed_at in held.items():
            holder = Holder.from_file(path)
            if holder is None or holder.token != self.token:
                continue
            try:
                tmp = self._write_tmp(path, self._content(claimed_at, holder.job))
                os.replace(tmp, path)
            except OSError:
                pass


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()
