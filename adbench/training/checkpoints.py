"""A job's checkpoint: where it lives, how it is written and read, and whether it belongs.

One file per job, ``<results>/.checkpoints/<dataset>/<method>/<record stem>.ckpt`` (or under
``--checkpoint-dir``), plus a small JSON sidecar ``<...>.ckpt.json`` with the header, so the run
can say "resuming from epoch E" without loading gigabytes. Written atomically (temporary file,
fsync, ``os.replace``): a kill while a checkpoint is written leaves the previous one usable.
Loaded with ``torch.load(weights_only=True)``: a checkpoint holds tensors, numbers, strings,
lists and dicts only, never pickled objects.

A checkpoint belongs to a job when its header names the same job identity (method, config hash,
seed, categories...) and the same ``Detector.VERSION`` (a method bumps it when its training
changes) and the same checkpoint ``FORMAT``. Anything else (another configuration, an older
training code, an older format) is not used: one line says why, the job starts over, and its
first checkpoint replaces the file. Nothing else is lost.

Checkpoints verify themselves (format 2): the header stores ``checksum``, a sha256 over the
header's other fields and the whole state (``state_digest``), checked on every load. The digest
walks the loaded objects (every tensor's dtype, shape and bytes; every other value with its type;
dict keys sorted) rather than hashing the file's bytes, because what must be right is what the
job will restore: it needs no second section in the file (header and state stay one
``torch.save`` payload), it does not depend on torch's zip writer being byte-stable, and it costs
one pass over the tensors when saving and loading (sha256, about 1 GB/s per core; a GPU
tensor is copied to the CPU for it, as ``torch.save`` does anyway).

A checkpoint that fails its checksum, cannot be read, or does not load into the model (state
dict keys or shapes, optimiser, scheduler or generator state: ``adbench.training.session``
checks them before restoring anything) is moved aside as ``<name>.ckpt.invalid`` (``.invalid.1``,
``.invalid.2``, ... when taken; its sidecar header beside it as ``<name>.ckpt.invalid.json``),
never deleted, with one warning line naming the file and the reason, and the job starts fresh.
Where a restore fails after part of the checkpoint was already restored, ``CheckpointRejected``
tells the job to start again from scratch (``adbench.run.worker.execute_job`` does, once).

Writing a checkpoint never fails a job: an unwritable folder or a full disk gives one warning
and the job trains on without checkpoints. Removing one never fails a finished job either
(``remove``): a read-only folder gives one warning and the file stays.

The header also carries ``torch_threads_attempts``: the torch threads of every attempt that
trained the checkpoint so far (a job's metrics depend on all of them); the record lists them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from adbench.files import size_text, write_atomic

FORMAT = 2  # 2: the header holds ``checksum`` and ``torch_threads_attempts``
SUFFIX = ".ckpt"
HEADER_SUFFIX = ".ckpt.json"
INVALID_SUFFIX = ".invalid"


class CheckpointRejected(RuntimeError):
    """A checkpoint failed to restore after part of it was already restored (modules or random
    states changed): it is moved aside, and the job must start again from scratch."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"checkpoint {path} {reason}")
        self.path, self.reason = Path(path), reason


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
    torch_threads_attempts: list = field(default_factory=list)  # torch threads of each attempt so far
    checksum: str = ""  # state_digest of the header's other fields and the state

    def describe(self) -> str:
        where = "final (training done)" if self.final else f"phase {self.phase}, epoch {self.epoch}, step {self.step}"
        return f"{where}, saved {self.saved_at}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def header_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(SUFFIX)] + HEADER_SUFFIX) if path.name.endswith(SUFFIX) \
        else path.with_name(path.name + ".json")


def _header_from(data: Mapping[str, Any]) -> Header:
    return Header(**{k: v for k, v in data.items() if k in Header.__dataclass_fields__})


def read_header(path: Path) -> Optional[Header]:
    """The sidecar header of ``path`` (None when absent or unreadable: the data file decides)."""
    try:
        return _header_from(json.loads(header_path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def state_digest(header: Mapping[str, Any], state: Any) -> str:
    """sha256 (hex) of a checkpoint's header fields (all but ``checksum``) and its state: see
    the module docstring for why the objects are hashed, not the file's bytes."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in header.items() if k != "checksum"})
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest, value: Any) -> None:
    """Hash ``value`` in a fixed traversal order; each item is tagged with its type and length,
    so that no two different structures feed the same bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        t = (t.to_dense() if t.layout != torch.strided else t).cpu().resolve_conj().resolve_neg().contiguous()
        digest.update(f"T{t.dtype}{list(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0])))
        digest.update(f"D{len(items)};".encode())
        for key, item in items:
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        digest.update(f"S{len(data)};".encode() + data)
    elif isinstance(value, (bytes, bytearray)):
        digest.update(f"B{len(value)};".encode() + bytes(value))
    elif isinstance(value, float):
        digest.update(f"F{value.hex()};".encode())
    elif value is None or isinstance(value, (bool, int)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    else:  # a dtype, a torch.Size...: its type and repr
        text = f"{type(value).__name__}:{value!r}".encode("utf-8", "surrogatepass")
        digest.update(f"O{len(text)};".encode() + text)


def _atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` through the store's atomic writer (a kill mid-write keeps the old file)."""
    write_atomic(path, lambda fh: torch.save(payload, fh))


def remove(path: Path, warn: Callable[[str], None] = log) -> bool:
    """Delete a job's checkpoint and its header (after its record is written). Never raises:
    a file that cannot be removed (read-only folder, a path below a regular file) is one
    warning line and stays; False then."""
    problems = []
    for p in (path, header_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(exc.strerror or str(exc) or type(exc).__name__)
    if problems:
        warn(f"warning: cannot remove checkpoint {path} ({problems[0]}); it is left in place")
    return not problems


def set_aside(path: Path) -> Path:
    """Move ``path`` (and its sidecar header) to ``<name>.invalid`` (``.invalid.1``, ``.invalid.2``
    when taken), never over an existing file; the new path of the data file. Raises OSError."""
    for n in range(10_000):
        aside = path.with_name(path.name + INVALID_SUFFIX + (f".{n}" if n else ""))
        if not aside.exists() and not header_path(aside).exists():
            break
    else:
        raise FileExistsError(f"too many {path.name}{INVALID_SUFFIX}.* files")
    os.rename(path, aside)
    try:
        os.rename(header_path(path), header_path(aside))
    except OSError:  # no sidecar (or it will not move): the data file, which decides, is aside
        pass
    return aside


@dataclass
class CheckpointFile:
    """Reading and writing one job's checkpoint, with the belonging checks."""

    path: Path
    identity: dict[str, Any]
    version: int
    warn: Callable[[str], None] = log
    disabled: Optional[str] = None  # why checkpoints are off for this job (then nothing is written)
    use_existing: bool = True  # False: ``load`` ignores the file (a job started again from scratch)
    _warned: set = field(default_factory=set)

    # --- reading ---------------------------------------------------------------------------------
    def load(self) -> Optional[tuple[Header, dict[str, Any]]]:
        """The checkpoint if it exists, belongs to this job and passes its checksum; otherwise
        None, with one line saying why for a file that exists but is not used (one that is
        unreadable or damaged is moved aside, ``reject``)."""
        if not self.use_existing or not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            header = _header_from(payload["header"])
            state = payload["state"]
        except Exception as exc:  # noqa: BLE001 - any unreadable file: start over, keep the rest
            self.reject(f"is unreadable ({one_line(exc)})")
            return None
        why = self.mismatch(header)
        if why:
            self.warn(f"note: checkpoint {self.path} is not used: {why}; the job starts over")
            return None
        if header.checksum != state_digest(payload["header"], state):
            self.reject("fails its checksum (its contents changed after it was written)")
            return None
        return header, state

    def reject(self, reason: str) -> None:
        """Move the damaged or unloadable checkpoint aside (never deleted), with one line."""
        try:
            where = f"moved aside to {set_aside(self.path).name}"
        except OSError as exc:
            where = f"cannot move it aside ({exc.strerror or exc}), not used"
        self.warn(f"warning: checkpoint {self.path} {reason}; {where}; the job starts over")

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
        try:
            header.checksum = state_digest(header.to_dict(), state)
            payload = {"header": header.to_dict(), "state": state}
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
            self.disable(f"{size_text(free)} free in {self.path.parent}, a checkpoint needs about "
                         f"{size_text(needed_bytes)} (twice that while it is replaced)")
            return False
        return True

    def disable(self, why: str) -> None:
        if self.disabled is None:
            self.disabled = why
            self.warn(f"warning: no checkpoints for this job: {why}; training goes on without them")


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 120 characters of it)."""
    text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
