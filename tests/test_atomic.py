"""The write lock: a second holder, in this process or another, fails at once; a dead holder frees it."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from siamsearch.core.atomic import LockedError, exclusive_lock

HOLDER = """
import sys
from siamsearch.core.atomic import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills this process)
"""


def hold_in_other_process(path: Path) -> subprocess.Popen:
    """A child process holding the lock on path, once this returns."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_holder_in_this_process_fails_at_once_then_gets_it(tmp_path):
    path = tmp_path / ".lock"
    with exclusive_lock(path):
        with pytest.raises(LockedError, match="locked by another process"):
            with exclusive_lock(path):
                pass
    with exclusive_lock(path):
        assert path.exists()


def test_another_process_locks_this_one_out_without_waiting_until_it_ends(tmp_path):
    path = tmp_path / ".lock"
    child = hold_in_other_process(path)
    try:
        start = time.monotonic()
        with pytest.raises(LockedError):
            with exclusive_lock(path):
                pass
        assert time.monotonic() - start < 1.0  # failed at once, did not wait
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    with exclusive_lock(path):
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    path = tmp_path / ".lock"
    child = hold_in_other_process(path)
    child.kill()
    child.wait(timeout=30)
    with exclusive_lock(path):
        pass
