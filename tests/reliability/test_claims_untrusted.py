"""Reliability: claim files are untrusted input (issue 23, cases 5 and 13).

Anyone who can write a shared results folder can put anything under ``.claims``. A claim that
does not parse or holds impossible values is moved aside as ``<name>.invalid`` with one warning,
and the job is claimed and run at once: it neither crashes the run (case 5: NaN, 1e20) nor
blocks the job (case 13: a lease ten years ahead, ``garbage{``). Unit cases fuzz the validation
(``parse_claim``), then real runs over a folder holding such claims.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from adbench.errors import ConfigError
from adbench.results import claims as claims_mod
from adbench.results.claims import (CLOCK_SKEW_SECONDS, DEFAULT_LEASE_SECONDS, LEASE_ENV, MAX_LEASE_SECONDS,
                                    ClaimBook, Holder, lease_seconds_from_env, parse_claim)
from adbench.results.store import reset_warnings

NOW = time.time()
TEN_YEARS = 10 * 365.25 * 86400


def _claim(**fields) -> dict:
    base = {"pid": 12345, "host": "another-host", "token": "theirs", "claimed_at": NOW - 5, "renewed_at": NOW - 5,
            "lease_seconds": DEFAULT_LEASE_SECONDS, "job": "x"}
    return {**base, **fields}


def _bytes(**fields) -> bytes:
    return json.dumps(_claim(**fields)).encode()


def _without(name: str) -> bytes:
    data = _claim()
    del data[name]
    return json.dumps(data).encode()


FUZZ = {
    "empty": b"",
    "garbage": b"garbage{",
    "not utf-8": b"\xff\xfe\x00\x80{",
    "array": b"[]",
    "empty object": b"{}",
    "true": b"true",
    "string": b'"pid"',
    "huge number": b"9" * 4000,
    "too many digits": b"9" * 5000,
    "deep": b"[" * 50000,
    "too big": b" " * (claims_mod.MAX_CLAIM_BYTES + 10) + b"{}",
    "no pid": _without("pid"),
    "no lease": _without("lease_seconds"),
    "NaN renewed": _bytes(renewed_at=float("nan")),
    "Infinity claimed": _bytes(claimed_at=float("inf")),
    "-Infinity lease": _bytes(lease_seconds=float("-inf")),
    "1e20 renewed": _bytes(renewed_at=1e20),
    "1e20 claimed": _bytes(claimed_at=1e20),
    "huge int time": _bytes(claimed_at=10**400),
    "zero time": _bytes(claimed_at=0, renewed_at=0),
    "1999": _bytes(renewed_at=946684799.0),
    "future beyond skew": _bytes(renewed_at=NOW + CLOCK_SKEW_SECONDS + 60),
    "ten years ahead": _bytes(renewed_at=NOW + TEN_YEARS),
    "string time": _bytes(renewed_at=str(NOW)),
    "bool time": _bytes(renewed_at=True),
    "null time": _bytes(renewed_at=None),
    "string pid": _bytes(pid="12345"),
    "negative pid": _bytes(pid=-5),
    "pid 0": _bytes(pid=0),
    "huge pid": _bytes(pid=10**30),
    "bool pid": _bytes(pid=True),
    "float pid": _bytes(pid=12.5),
    "string lease": _bytes(lease_seconds="600"),
    "zero lease": _bytes(lease_seconds=0),
    "negative lease": _bytes(lease_seconds=-1),
    "lease above max": _bytes(lease_seconds=MAX_LEASE_SECONDS + 1),
    "ten-year lease": _bytes(lease_seconds=TEN_YEARS),
    "huge int lease": _bytes(lease_seconds=10**400),
    "NaN lease": _bytes(lease_seconds=float("nan")),
    "host number": _bytes(host=7),
    "empty token": _bytes(token=""),
    "host with newline": _bytes(host="a\nwarning: forged"),
    "token list": _bytes(token=[1]),
    "job object": _bytes(job={"a": 1}),
}


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def test_a_well_formed_claim_is_valid():
    holder = parse_claim(_bytes(), now=NOW)
    assert isinstance(holder, Holder) and holder.pid == 12345 and holder.lease_seconds == DEFAULT_LEASE_SECONDS
    assert isinstance(parse_claim(_bytes(renewed_at=NOW + CLOCK_SKEW_SECONDS - 1, job=""), now=NOW), Holder)
    assert isinstance(parse_claim(_without("job"), now=NOW), Holder)  # job is informative only
    assert isinstance(parse_claim(_bytes(host=""), now=NOW), Holder)  # gethostname() may say ""
    assert isinstance(parse_claim(_bytes(lease_seconds=MAX_LEASE_SECONDS, pid=1), now=NOW), Holder)


@pytest.mark.parametrize("name", sorted(FUZZ))
def test_fuzzed_claim_contents_are_invalid_and_never_raise(name, tmp_path):
    reason = parse_claim(FUZZ[name], now=NOW)
    assert isinstance(reason, str) and reason and "\n" not in reason and len(reason) < 200, reason
    path = tmp_path / "x.claim"
    path.write_bytes(FUZZ[name])
    assert Holder.from_file(path) is None


def test_describe_never_raises():
    for t in (float("nan"), 1e20, float("inf"), -1e20):
        assert "pid 1 on h, since ?" == Holder(1, "h", "t", t, t, 1.0).describe()


def test_the_lease_of_the_environment_is_checked(monkeypatch):
    monkeypatch.delenv(LEASE_ENV, raising=False)
    assert lease_seconds_from_env() == DEFAULT_LEASE_SECONDS
    monkeypatch.setenv(LEASE_ENV, "120")
    assert lease_seconds_from_env() == 120.0 and ClaimBook("/nonexistent").lease_seconds == 120.0
    monkeypatch.setenv(LEASE_ENV, str(MAX_LEASE_SECONDS))
    assert lease_seconds_from_env() == MAX_LEASE_SECONDS
    for bad in ("abc", "nan", "inf", "0", "-5", str(MAX_LEASE_SECONDS + 1), "1e400", str(TEN_YEARS)):
        monkeypatch.setenv(LEASE_ENV, bad)
        with pytest.raises(ConfigError, match=LEASE_ENV):
            ClaimBook("/nonexistent")
    with pytest.raises(ValueError):
        ClaimBook("/nonexistent", lease_seconds=MAX_LEASE_SECONDS + 1)


def test_a_bad_lease_in_the_environment_stops_the_run_with_one_error(run_cli, kit_data, monkeypatch):
    monkeypatch.setenv(LEASE_ENV, "ten minutes")
    result, results = run_cli("--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(kit_data))
    assert result.exit_code == 2, (result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and LEASE_ENV in errors[0] and "Traceback" not in result.output, result.stderr
    assert not any(results.rglob("*.json"))


# --------------------------------------------------------------------------------------------
# ClaimBook.acquire on invalid claims
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["garbage", "NaN renewed", "1e20 renewed", "ten years ahead", "ten-year lease",
                                  "huge pid", "array", "deep"])
def test_an_invalid_claim_is_moved_aside_with_one_warning_and_claimed(name, tmp_path, capsys):
    reset_warnings()
    book = ClaimBook(tmp_path)
    path = book.path_for("d", "m", "job")
    path.parent.mkdir(parents=True)
    path.write_bytes(FUZZ[name])
    assert book.acquire(path, "job") is None
    assert json.loads(path.read_text())["token"] == book.token
    aside = path.with_name(path.name + ".invalid")
    assert aside.read_bytes() == FUZZ[name]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {path}: invalid claim ("), lines
    assert lines[0].endswith(f"moved aside as {aside.name}, the job is claimed anew")
    book.release_all()
    assert not path.exists() and aside.exists()


def test_moved_aside_claims_are_numbered_never_replaced(tmp_path, capsys):
    book = ClaimBook(tmp_path)
    path = book.path_for("d", "m", "job")
    path.parent.mkdir(parents=True)
    for n, content in enumerate((b"one{", b"two{", b"three{")):
        path.write_bytes(content)
        assert book.acquire(path) is None
        book.release(path)
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["job.claim.invalid", "job.claim.invalid.1", "job.claim.invalid.2"]
    assert [(path.parent / n).read_bytes() for n in names] == [b"one{", b"two{", b"three{"]
    assert len(capsys.readouterr().err.splitlines()) == 3
    book.release_all()


def test_a_claim_being_written_is_not_moved_aside(tmp_path, capsys):
    """An empty claim file is one being written (exclusive create, then write): wait for it."""
    book = ClaimBook(tmp_path)
    path = book.path_for("d", "m", "job")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    live = _bytes(pid=os.getpid(), host=socket.gethostname(), claimed_at=time.time(), renewed_at=time.time())
    writer = threading.Timer(0.4, path.write_bytes, args=(live,))
    writer.start()
    holder = book.acquire(path)
    writer.join()
    assert holder is not None and holder.token == "theirs" and holder.pid == os.getpid()
    assert path.read_bytes() == live and [p.name for p in path.parent.iterdir()] == ["job.claim"]
    assert capsys.readouterr().err == ""
    book.release_all()


def test_an_old_empty_claim_is_invalid_at_once(tmp_path, capsys):
    reset_warnings()
    book = ClaimBook(tmp_path)
    path = book.path_for("d", "m", "job")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    old = time.time() - 3600
    os.utime(path, (old, old))
    t0 = time.monotonic()
    assert book.acquire(path) is None
    assert time.monotonic() - t0 < claims_mod.EMPTY_CLAIM_GRACE_SECONDS
    assert "invalid claim (empty claim file)" in capsys.readouterr().err
    assert path.with_name("job.claim.invalid").read_bytes() == b""
    book.release_all()


# --------------------------------------------------------------------------------------------
# Real runs over a folder holding invalid claims
# --------------------------------------------------------------------------------------------
def _run_with_claims(run_cli, data: Path, results: Path, contents: dict[str, bytes]):
    """Plant ``contents`` (category -> bytes) as the claims of the grid's jobs (paths as the run
    makes them, from its own plan), then run the grid: -> (click result, {category: claim path})."""
    from adbench.run.runner import RunOptions, plan_run

    args = ("--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(data))
    plan = plan_run(RunOptions(method="kit_mean", dataset="kitgen", data_root=str(data), results=str(results),
                               plugins=["adbench_testkit"], progress=False))
    book = ClaimBook(results)
    paths = {job.categories[0]: book.path_for(job.dataset, job.method, Path(job.record_name(job.categories[0])).stem)
             for job in plan.jobs}
    assert sorted(paths) == sorted(contents)
    for category, content in contents.items():
        paths[category].parent.mkdir(parents=True, exist_ok=True)
        paths[category].write_bytes(content)
    result, _ = run_cli(*args)
    records = [json.loads(p.read_text()) for p in (results / "kitgen" / "kit_mean").glob("*.json")]
    assert sorted(r["category"] for r in records if r["status"] == "ok") == sorted(contents), result.stderr
    return result, paths


def _check_moved_aside(result, paths: dict[str, Path], contents: dict[str, bytes]) -> None:
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Traceback" not in result.output and "running elsewhere" not in result.stderr, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(paths), result.stderr
    for category, path in paths.items():
        assert len([w for w in warnings if w.startswith(f"warning: {path}: invalid claim (")]) == 1, warnings
        assert not path.exists()  # the run claimed it, ran the job, released it
        assert path.with_name(path.name + ".invalid").read_bytes() == contents[category]


def test_case5_nan_and_1e20_claims_do_not_crash_the_run(run_cli, kit_data, tmp_path):
    contents = {"tex_a": _bytes(claimed_at=float("nan"), renewed_at=float("nan")),
                "obj_b": _bytes(claimed_at=1e20, renewed_at=1e20)}
    result, paths = _run_with_claims(run_cli, kit_data, tmp_path / "res", contents)
    _check_moved_aside(result, paths, contents)


def test_case13_a_lease_ten_years_ahead_and_garbage_do_not_block_their_jobs(run_cli, kit_data, tmp_path):
    """Another host's claim whose lease runs ten years (renewed just now), and a corrupt claim."""
    now = time.time()
    contents = {"tex_a": _bytes(claimed_at=now, renewed_at=now, lease_seconds=TEN_YEARS), "obj_b": b"garbage{"}
    t0 = time.monotonic()
    result, paths = _run_with_claims(run_cli, kit_data, tmp_path / "res", contents)
    assert time.monotonic() - t0 < 120  # now, not after a lease of 10 minutes (or 10 years)
    _check_moved_aside(result, paths, contents)
