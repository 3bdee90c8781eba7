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
    """One process per run folder: `run_dir/.lock` holds the owner's PID and host. A lock whose process is gone (a
    kill, a crash, a reboot) is stale and taken over."""
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
            if owner.get("host") not in (None, me["host"]):
                raise RunLockedError(f"{run_dir} is locked by a selfalign run on host {owner['host']} (PID "
                                     f"{owner.get('pid')}); if that run is gone, delete {lock}") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


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
