"""One `selfalign run` per run folder: a lock file holding the owner's PID and host, taken over when stale."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from selfalign.errors import SelfAlignError


class RunLockedError(SelfAlignError, RuntimeError):
    """Another process is running this run folder."""


@contextlib.contextmanager
def run_folder_lock(run_dir: Path):
    """One process per run folder: `run_dir/.lock` holds the owner's PID and host, and the process groups of the
    stage processes it runs (selfalign.run.children). A lock is stale, and taken over, only when the owner and all of
    those groups are gone (a kill, a crash, a reboot): a stage left running by a killed run keeps the folder locked.
    Yields the lock, whose `record(groups)` the run's children call with their groups
    (`children.owned_children(on_change=lock.record)`)."""
    lock = run_dir / ".lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text())
            except (OSError, json.JSONDecodeError):
                owner = {}  # torn by a kill between create and write: stale
            if owner.get("host") == me["host"] and _alive(owner.get("pid")):
                raise RunLockedError(f"{run_dir} is in use by another selfalign run (PID {owner['pid']}, started "
                                     f"{owner.get('started', '?')}); wait for it, stop it, or use another --out") from None
            left = _still_running(owner.get("children", [])) if owner.get("host") == me["host"] else []
            if left:
                raise RunLockedError(f"{run_dir}: its last run (PID {owner.get('pid')}) is gone, but stage "
                                     f"processes it started still run (process groups {left}); end them "
                                     f"(kill -- -{left[0]}) or wait, then run again") from None
            if owner.get("host") not in (None, me["host"]):
                raise RunLockedError(f"{run_dir} is locked by a selfalign run on host {owner['host']} (PID "
                                     f"{owner.get('pid')}); if that run is gone, delete {lock}") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break

    try:
        yield RunLock(lock, me)
    finally:
        lock.unlink(missing_ok=True)


class RunLock:
    """The lock file of a run folder this process owns."""

    def __init__(self, path: Path, owner: dict):
        self.path, self.owner = path, owner

    def record(self, groups: list[int]) -> None:
        """List the run's child process groups in the lock (a rerun waits for them)."""
        from selfalign.io import write_json

        write_json(self.path, {**self.owner, "children": groups})


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


# A killed run's stage processes get a parent-death signal and end on their own; an engine or trainer that is shutting
# down takes a few seconds, so a rerun right after a kill waits this long before calling them still running.
CHILDREN_GRACE_S = 20.0


def _still_running(groups: list) -> list[int]:
    """The process groups among `groups` still alive after up to CHILDREN_GRACE_S seconds of waiting for them to end."""
    from selfalign.run import children

    deadline = time.monotonic() + CHILDREN_GRACE_S
    while True:
        left = [g for g in groups if isinstance(g, int) and g > 0 and children.group_alive(g)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)
