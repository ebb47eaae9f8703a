"""Issue 14, item 8: a kill during the synthetic set's generation no longer leaves its temporary
folder (21 MB) behind for good: the next run that uses the cache removes it, but never the
folder of a generation that is still running in another process.

The generator writes into ``.synthetic-vN.tmp-<host>-<pid>-<random>`` and holds an ``flock`` on
the sibling ``.lock`` file while it lives; the kernel drops that lock when the process dies
(kill -9 included), which is how the next run tells a killed generation from a live one.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from adbench.datasets import synthetic
from adbench.registry import DATASETS

GENERATOR = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from adbench.datasets import synthetic

    def slow(name, out):  # the real generator, minus the seconds of drawing: write, then hang
        (out / "train" / "good").mkdir(parents=True)
        (out / "train" / "good" / "000.png").write_bytes(b"half a set")
        Path(sys.argv[2]).write_text(str(out.parent))
        time.sleep(120)

    synthetic.generate_category = slow
    synthetic.ensure_generated(Path(sys.argv[1]))
""")


def _complete_set(base: Path) -> Path:
    """What another run finished meanwhile: the marker makes the adapter use it as is."""
    target = base / f"synthetic-v{synthetic.VERSION}"
    for name in synthetic.CATEGORIES:
        (target / name).mkdir(parents=True)
    (target / synthetic.MARKER).write_text("{}")
    return target


def _leftovers(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if synthetic.TMP_MARK in p.name)


def test_killed_generation_is_removed_by_the_next_run_a_live_one_is_not(tmp_path, capfd):
    base, ready = tmp_path / "cache", tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", GENERATOR, str(base), str(ready)], start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None, "the generator died early"
            assert time.monotonic() < deadline, "the generator never started writing"
            time.sleep(0.05)
        tmp = Path(ready.read_text())
        assert tmp.name.startswith(f".synthetic-v{synthetic.VERSION}.tmp-") and f"-{child.pid}-" in tmp.name
        _complete_set(base)
        # another run meanwhile: the live generation's folder stays
        assert DATASETS.get("synthetic")(base).root == base / f"synthetic-v{synthetic.VERSION}"
        assert _leftovers(base) == [tmp.name, tmp.name + ".lock"]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        assert tmp.is_dir()  # what the kill leaves: half a set, never renamed into place
        # the next run removes it and its lock file, and says so
        DATASETS.get("synthetic")(base)
        assert _leftovers(base) == []
        assert capfd.readouterr().err.splitlines()[-1] == (
            f"note: removed 1 unfinished synthetic set(s) left in {base} by a killed generation")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)


def test_leftovers_without_lock(tmp_path):
    """Folders of killed generations from before the lock (``mkdtemp`` names) go once they are
    older than any generation; lockless folders naming a dead pid on this host go at once."""
    base = tmp_path
    _complete_set(base)
    old = base / f".synthetic-v{synthetic.VERSION}.tmp-k2j4_x9q"  # the name mkdtemp used to give
    fresh = base / ".synthetic-v1.tmp-abc_def1"
    dead = base / f".synthetic-v{synthetic.VERSION}.tmp-{synthetic._host()}-{_dead_pid()}-0a1b2c3d"
    alive = base / f".synthetic-v{synthetic.VERSION}.tmp-{synthetic._host()}-{os.getpid()}-0a1b2c3d"
    for folder in (old, fresh, dead, alive):
        (folder / "chip").mkdir(parents=True)
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    removed = synthetic.remove_stale_tmp(base)
    assert sorted(p.name for p in removed) == sorted([old.name, dead.name])
    assert _leftovers(base) == sorted([fresh.name, alive.name])
    assert (base / f"synthetic-v{synthetic.VERSION}" / synthetic.MARKER).is_file()  # the set is untouched


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
