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
* Claim files are untrusted input: anyone who can write the results folder can put anything
  there. A claim that does not parse, lacks a field or has one of the wrong type, holds a
  non-finite or out-of-range time (before 2000-01-01, or further in the future than
  ``CLOCK_SKEW_SECONDS``), or a lease that is not in (0, ``MAX_LEASE_SECONDS``] is *invalid*
  (``parse_claim`` says why): it is moved aside as ``<name>.invalid`` (``.invalid.1``... if
  taken; never deleted) with one ``warning:`` line, and the job is claimed as if it were free.
  An empty claim file is first given ``EMPTY_CLAIM_GRACE_SECONDS`` to fill (a file system
  without hard links makes the claim by exclusive create, then writes it). Nothing here
  raises on any file content.
"""
from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from adbench.errors import ConfigError
from adbench.files import pid_alive
from adbench.results.store import INVALID_SUFFIX, warn

CLAIMS_DIR = ".claims"
LEASE_ENV = "ADBENCH_CLAIM_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 600.0
#: The longest lease this code ever writes (``$ADBENCH_CLAIM_LEASE_SECONDS`` may not ask for
#: more). A lease only says how long a run that died without a trace (``kill -9`` on another
#: host) keeps blocking its job; a live run renews every ``lease / 10`` anyway, so a longer
#: lease buys nothing. A claim with a longer lease was not written by adbench: invalid.
MAX_LEASE_SECONDS = 3600.0
#: How far in the future a claim's ``claimed_at``/``renewed_at`` may be and still count. Runs on
#: other hosts stamp claims with their own clocks, which may run ahead of ours; 5 minutes
#: covers any host that is synchronised at all (NTP keeps them within a second) and stays
#: below the default lease, which the lease rule already needs well above the skew. A time
#: further ahead is a broken clock or a forged claim, and would block the job for that long.
CLOCK_SKEW_SECONDS = 300.0
#: Claim times before this (2000-01-01 00:00:00 UTC) are not real: a zeroed or forged field.
EARLIEST_TIME = 946684800.0
#: An empty claim file is one being written right now (exclusive create, then write) for this
#: long after it appeared, or after this reader first saw it; then it is invalid.
EMPTY_CLAIM_GRACE_SECONDS = 2.0
#: A claim is a few hundred bytes; a bigger file is not one (and is not read whole).
MAX_CLAIM_BYTES = 64 * 1024
_MAX_PID = 2**31 - 1  # largest pid_t
_MAX_TEXT = 1024  # longest host or token accepted, and job label written
_REREAD_SECONDS = 0.2  # how long content that is not a valid claim is read again before judging it


def _host() -> str:
    return socket.gethostname()


def lease_seconds_from_env() -> float:
    """``$ADBENCH_CLAIM_LEASE_SECONDS`` checked (a number of seconds in (0, MAX_LEASE_SECONDS]),
    or ``DEFAULT_LEASE_SECONDS`` when it is unset or empty. Raises ``ConfigError`` naming it."""
    raw = os.environ.get(LEASE_ENV, "").strip()
    if not raw:
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_LEASE_SECONDS):
        raise ConfigError(f"{LEASE_ENV}={raw[:40]!r}: expected a number of seconds greater than 0 and at most "
                          f"{MAX_LEASE_SECONDS:g} (default {DEFAULT_LEASE_SECONDS:g})")
    return value


def _show(value: Any) -> str:
    """A short, one-line, never-raising picture of an untrusted value for a warning."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:40] + ("..." if len(value) > 40 else ""))
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"


def _time_problem(name: str, value: Any, now: float) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} is not a number: {_show(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} is not finite: {_show(value)}"
    if value < EARLIEST_TIME:  # int and float compare exactly, however big the int
        return f"{name} is before 2000-01-01: {_show(value)}"
    if value > now + CLOCK_SKEW_SECONDS:
        return f"{name} is more than {CLOCK_SKEW_SECONDS:g} s (the clock-skew tolerance) in the future: {_show(value)}"
    return None


def _field_problem(data: dict, now: float) -> Optional[str]:
    for name in ("pid", "host", "token", "claimed_at", "renewed_at", "lease_seconds"):
        if name not in data:
            return f"no {name} field"
    pid = data["pid"]
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= _MAX_PID:
        return f"pid is not a process id: {_show(pid)}"
    for name, least in (("host", 0), ("token", 1)):  # a host may name itself "" (gethostname)
        text = data[name]
        if not isinstance(text, str) or not least <= len(text) <= _MAX_TEXT or not text.isprintable():
            return f"{name} is not a printable text of {least} to {_MAX_TEXT} characters: {_show(text)}"
    if not isinstance(data.get("job", ""), str):
        return f"job is not a text: {_show(data['job'])}"
    for name in ("claimed_at", "renewed_at"):
        problem = _time_problem(name, data[name], now)
        if problem:
            return problem
    lease = data["lease_seconds"]
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease <= MAX_LEASE_SECONDS:
        return f"lease_seconds is not a number of seconds in (0, {MAX_LEASE_SECONDS:g}]: {_show(lease)}"
    return None


def parse_claim(content: bytes, now: Optional[float] = None) -> Union["Holder", str]:
    """The ``Holder`` a claim file's content names, or why the content is not a valid claim.
    Never raises, whatever the bytes."""
    now = time.time() if now is None else now
    if not content.strip():
        return "empty claim file"
    if len(content) > MAX_CLAIM_BYTES:
        return f"larger than {MAX_CLAIM_BYTES} bytes"
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, too many digits, too deep
        return "not valid JSON"
    if not isinstance(data, dict):
        return f"not a JSON object but {_show(data)}"
    problem = _field_problem(data, now)
    if problem:
        return problem
    return Holder(data["pid"], data["host"], data["token"], float(data["claimed_at"]), float(data["renewed_at"]),
                  float(data["lease_seconds"]), data.get("job", ""))


def _read_bytes(path: Path) -> Optional[bytes]:
    """Up to ``MAX_CLAIM_BYTES + 1`` bytes of ``path``; None when it is gone or unreadable."""
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_CLAIM_BYTES + 1)
    except OSError:
        return None


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
        """The holder of a valid claim file; None when it is missing, unreadable or invalid."""
        content = _read_bytes(path)
        found = parse_claim(content) if content is not None else None
        return found if isinstance(found, Holder) else None

    def is_stale(self, now: Optional[float] = None) -> bool:
        """Dead process on this host, or a lease that ran out (any host)."""
        now = time.time() if now is None else now
        if self.host == _host() and not pid_alive(self.pid):
            return True
        return now > self.renewed_at + self.lease_seconds

    def describe(self) -> str:
        try:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.claimed_at))
        except (ValueError, OverflowError, OSError, TypeError):
            since = "?"
        return f"pid {self.pid} on {self.host}, since {since}"


class ClaimBook:
    """The claims one run holds; renews them while the run lives, releases them at the end."""

    def __init__(self, results_root: str | Path, lease_seconds: Optional[float] = None,
                 renew_seconds: Optional[float] = None):
        self.root = Path(results_root) / CLAIMS_DIR
        self.lease_seconds = lease_seconds_from_env() if lease_seconds is None else float(lease_seconds)
        if not (math.isfinite(self.lease_seconds) and 0 < self.lease_seconds <= MAX_LEASE_SECONDS):
            raise ValueError(f"lease_seconds must be in (0, {MAX_LEASE_SECONDS:g}]: {lease_seconds!r}")
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
        """Claim ``path``. Returns None when this run now holds it, else the live holder. An invalid
        claim found there is moved aside (one warning) and the job claimed as if it were free."""
        path.parent.mkdir(parents=True, exist_ok=True)
        claimed_at = time.time()
        for _attempt in range(5):
            self._link_new(path, claimed_at, job)
            found = _settled_read(path)
            if found is None:  # gone between our link and our read: try again
                continue
            content, holder = found
            if isinstance(holder, str):
                _move_invalid(path, content, holder)
                continue
            if holder.token == self.token:
                with self._lock:
                    self.held[path] = claimed_at
                self._ensure_renewing()
                return None
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
                           "renewed_at": time.time(), "lease_seconds": self.lease_seconds, "job": job[:_MAX_TEXT]}).encode()

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

    def _displace(self, path: Path, stale: Holder) -> None:
        """Move a stale claim aside. If, between our look and the rename, its owner changed (a
        live run took it over first), put that fresh claim back; if it became invalid, keep it
        aside as such."""
        aside = path.with_name(f".{path.name}.stale.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, aside)
        except OSError:
            return
        content = _read_bytes(aside)
        moved = parse_claim(content) if content is not None else None
        if isinstance(moved, str):
            _keep_invalid(path, aside, moved)
            return
        if moved is not None and moved.token != stale.token and not moved.is_stale():
            try:
                os.link(aside, path)
            except OSError:
                pass
        _unlink(aside)

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


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _settled_read(path: Path) -> Optional[tuple[bytes, Union[Holder, str]]]:
    """(content, holder or why it is invalid) of the claim at ``path``; None when it is gone.
    Content that is not a valid claim is read again for ``_REREAD_SECONDS``, and an empty file
    until it is ``EMPTY_CLAIM_GRACE_SECONDS`` old (or was seen empty that long): a claim made
    by exclusive create is written just after it appears."""
    first = time.monotonic()
    while True:
        content = _read_bytes(path)
        if content is None:
            return None
        found = parse_claim(content)
        waited = time.monotonic() - first
        if isinstance(found, Holder):
            return content, found
        if waited >= _REREAD_SECONDS and (content.strip() or waited >= EMPTY_CLAIM_GRACE_SECONDS
                                          or time.time() - _mtime(path) >= EMPTY_CLAIM_GRACE_SECONDS):
            return content, found
        time.sleep(0.05)


def _move_invalid(path: Path, content: bytes, reason: str) -> None:
    """Move the invalid claim at ``path`` aside, with one warning. It is renamed to a private
    name first, so that of two runs that judged it only one moves it; if what got moved is not
    what was judged (a run claimed the name in between) and is a valid claim, it is put back."""
    private = path.with_name(f".{path.name}.invalid.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, private)
    except OSError:
        return
    moved = _read_bytes(private)
    if moved != content:
        found = parse_claim(moved) if moved is not None else reason
        if isinstance(found, Holder):
            try:
                os.link(private, path)
            except OSError:
                pass
            _unlink(private)
            return
        reason = found
    _keep_invalid(path, private, reason)


def _keep_invalid(path: Path, private: Path, reason: str) -> None:
    """Give the invalid claim now at ``private`` its final name ``<path name>.invalid`` (or
    ``.invalid.1``, ...: ``link`` never replaces a file) and warn once. Never deletes it."""
    target = private
    for n in range(100):
        candidate = path.with_name(path.name + INVALID_SUFFIX + (f".{n}" if n else ""))
        try:
            os.link(private, candidate)
        except FileExistsError:
            continue
        except OSError:  # no hard links here: keep the private name
            break
        _unlink(private)
        target = candidate
        break
    warn(path, f"invalid claim ({reason}); moved aside as {target.name}, the job is claimed anew")
