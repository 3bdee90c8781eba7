"""The processes `selfalign run` starts (stage commands, the engine server) belong to it.

- Each child leads its own process group, so ending it ends what it started too (accelerate's workers, a vLLM core).
- On Linux each child gets a parent-death signal (SIGTERM when the run's process dies, even by SIGKILL).
- `owned_children()` wraps a run: on SIGTERM (turned into SystemExit), Ctrl-C or any error, every child group still
  running gets SIGTERM, then SIGKILL after a grace period, before the run's lock is released.
- The run folder's lock lists the children's process groups (`owned_children(on_change=...)`), so a rerun takes
  over a lock only when neither its owner nor any of those groups is alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Callable

_running: dict[int, subprocess.Popen] = {}  # process-group id -> child, for this process's run
_on_change: Callable[[list[int]], None] | None = None  # set by owned_children: who records the running groups


def _die_with_parent() -> None:  # in the child, before exec (the loop starts its stages from its only thread)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(command: list[str], **kwargs) -> subprocess.Popen:
    """Popen in its own process group that dies with this process; registered until `stop` or `forget`."""
    process = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)
    _running[process.pid] = process
    _changed()
    return process


def forget(process: subprocess.Popen) -> None:
    """The child ended by itself (its exit status was read): its group is no longer ours to watch."""
    if _running.pop(process.pid, None) is not None:
        _changed()


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """End the child's whole process group: SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            process.wait(timeout=grace)
            if not group_alive(process.pid):
                break
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + grace  # the leader is gone; give the rest of its group the same grace
        while group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    forget(process)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _changed() -> None:
    if _on_change is not None:
        _on_change(sorted(_running))


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def owned_children(on_change: Callable[[list[int]], None] | None = None):
    """Within this block SIGTERM ends the run as Ctrl-C does, and leaving it, by any way, stops every child.
    `on_change(groups)`: called with the running children's process groups whenever they change (the run lock)."""
    global _on_change
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    _on_change = on_change
    try:
        yield
    finally:
        for process in list(_running.values()):
            stop(process)
        _on_change = None
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
