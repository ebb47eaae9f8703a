"""A job's checkpoint: where it lives, how it is written and read, and whether it belongs.

One file per job, ``<results>/.checkpoints/<dataset>/<method>/<record stem>.ckpt`` (or under
``--checkpoint-dir``), plus a small JSON sidecar ``<...>.ckpt.json`` with the header, so the run
can say "resuming from epoch E" without loading gigabytes. Written atomically (temporary file,
fsync, ``os.replace``): a kill while a checkpoint is written leaves the previous one usable.
Loaded with ``torch.load(weights_only=True)``: a checkpoint holds tensors, numbers, strings,
lists and dicts only, never pickled objects.

A checkpoint belongs to a job when its header names the same job identity (method, config hash,
seed, categories...) and the same ``Detector.VERSION`` (a method bumps it when its training
changes). Anything else (another configuration, an older training code, a corrupt or truncated
file) is not used: one line says why, and the job starts over. Nothing else is lost.

Writing a checkpoint never fails a job: an unwritable folder or a full disk gives one warning
and the job trains on without checkpoints.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from adbench.files import write_atomic

FORMAT = 1
SUFFIX = ".ckpt"
HEADER_SUFFIX = ".ckpt.json"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Header:
    """What a checkpoint says about itself (also stored as the JSON sidecar)."""

    identity: dict[str, Any]
    version: int
    phase: str = ""
    epoch: int = 0
    step: int = 0
    saved_at: str = ""
    fit_seconds_before: float = 0.0
    final: bool = False
    format: int = FORMAT

    def describe(self) -> str:
        where = "final (training done)" if self.final else f"phase {self.phase}, epoch {self.epoch}, step {self.step}"
        return f"{where}, saved {self.saved_at}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def header_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(SUFFIX)] + HEADER_SUFFIX) if path.name.endswith(SUFFIX) \
        else path.with_name(path.name + ".json")


def read_header(path: Path) -> Optional[Header]:
    """The sidecar header of ``path`` (None when absent or unreadable: the data file decides)."""
    try:
        data = json.loads(header_path(path).read_text(encoding="utf-8"))
        return Header(**{k: v for k, v in data.items() if k in Header.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None


def _atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` through the store's atomic writer (a kill mid-write keeps the old file)."""
    write_atomic(path, lambda fh: torch.save(payload, fh))


def remove(path: Path) -> None:
    """Delete a job's checkpoint and its header (after its record is written)."""
    for p in (path, header_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


@dataclass
class CheckpointFile:
    """Reading and writing one job's checkpoint, with the belonging checks."""

    path: Path
    identity: dict[str, Any]
    version: int
    warn: Callable[[str], None] = log
    disabled: Optional[str] = None  # why checkpoints are off for this job (then nothing is written)
    _warned: set = field(default_factory=set)

    # --- reading ---------------------------------------------------------------------------------
    def load(self) -> Optional[tuple[Header, dict[str, Any]]]:
        """The checkpoint if it exists and belongs to this job; otherwise None, with one line
        saying why for a file that exists but is not used."""
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            header = Header(**payload["header"])
            state = payload["state"]
        except Exception as exc:  # noqa: BLE001 - any unreadable file: start over, keep the rest
            text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            self.warn(f"warning: checkpoint {self.path} is unreadable ({type(exc).__name__}: {text}); "
                      f"the job starts over")
            return None
        why = self.mismatch(header)
        if why:
            self.warn(f"note: checkpoint {self.path} is not used: {why}; the job starts over")
            return None
        return header, state

    def mismatch(self, header: Header) -> Optional[str]:
        if header.format != FORMAT:
            return f"written in checkpoint format {header.format}, this adbench reads {FORMAT}"
        if header.version != self.version:
            return (f"written by version {header.version} of the method's training code, this is version "
                    f"{self.version}")
        for key, value in self.identity.items():
            if header.identity.get(key) != value:
                return f"it belongs to another job ({key} {header.identity.get(key)!r}, this job {value!r})"
        return None

    # --- writing ---------------------------------------------------------------------------------
    def save(self, header: Header, state: dict[str, Any]) -> bool:
        """Write atomically; a failure disables checkpoints for the job with one warning."""
        if self.disabled:
            return False
        payload = {"header": header.to_dict(), "state": state}
        try:
            _atomic_torch_save(payload, self.path)
            text = json.dumps(header.to_dict(), indent=1, sort_keys=True)
            write_atomic(header_path(self.path), lambda fh: fh.write(text.encode("utf-8")))
        except Exception as exc:  # noqa: BLE001 - a checkpoint failure is never a failed job
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:120]
            self.disable(f"cannot write {self.path} ({reason})")
            return False
        return True

    def size_on_disk(self) -> int:
        """Bytes of the checkpoint (the file, or every file under it when it is a folder)."""
        try:
            if self.path.is_dir():
                return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
            return self.path.stat().st_size
        except OSError:
            return 0

    def check_space(self, needed_bytes: int) -> bool:
        """Before the first write: enough free space for two copies (the new file is written
        beside the old one)? Otherwise checkpoints are off for this job, with one warning."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            probe = self.path.parent / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            free = shutil.disk_usage(self.path.parent).free
        except OSError as exc:
            self.disable(f"cannot write to {self.path.parent} ({exc.strerror or exc})")
            return False
        if free < 2 * needed_bytes:
            self.disable(f"{free / 2**30:.2f} GiB free in {self.path.parent}, a checkpoint needs about "
                         f"{needed_bytes / 2**30:.2f} GiB (twice that while it is replaced)")
            return False
        return True

    def disable(self, why: str) -> None:
        if self.disabled is None:
            self.disabled = why
            self.warn(f"warning: no checkpoints for this job: {why}; training goes on without them")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
