"""`selfalign run` owns its stage processes: SIGTERM or SIGKILL of the run alone (not its process group) leaves no
trainer or engine running, and a rerun never trains beside an orphan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from selfalign.run import children
from selfalign.run.lock import RunLockedError, run_folder_lock

from test_loop import _recipe


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_stop_ends_the_whole_group_and_the_lock_waits_for_it(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with run_folder_lock(run_dir) as lock, children.owned_children(on_change=lock.record):
        # a child that starts a grandchild of its own, as accelerate starts its workers
        child = children.start([sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, "
                                "'-c', 'import time; time.sleep(300)']); time.sleep(300)"])
        time.sleep(1.0)
        assert json.loads((run_dir / ".lock").read_text())["children"] == [child.pid]
        children.stop(child, grace=5)
        assert not children.group_alive(child.pid)
        assert json.loads((run_dir / ".lock").read_text())["children"] == []
    assert not (run_dir / ".lock").exists()


def test_a_lock_is_not_taken_over_while_a_child_of_the_dead_owner_lives(tmp_path, monkeypatch):
    from selfalign.run import lock as run_lock

    monkeypatch.setattr(run_lock, "CHILDREN_GRACE_S", 1.0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ending = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"], start_new_session=True)
    threading.Thread(target=ending.wait, daemon=True).start()  # reaped when it ends, as init reaps a dead run's
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                               "children": [ending.pid]}))
    with run_folder_lock(run_dir):  # a child that ends within the grace (a killed run's, shutting down) is waited for
        pass
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        (run_dir / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                                   "children": [orphan.pid]}))
        with pytest.raises(RunLockedError, match="still run"):
            with run_folder_lock(run_dir):
                pass
    finally:
        orphan.kill()
        orphan.wait()
    with run_folder_lock(run_dir):  # the orphan is gone: the lock is stale now
        pass


@pytest.mark.slow
def test_sigterm_and_sigkill_of_the_run_leave_no_stage_running(tmp_path):
    recipe, run_dir = _recipe(tmp_path), tmp_path / "run"
    cmd = [sys.executable, "-m", "selfalign.cli", "run", str(recipe), "--out", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    trainer = f"train --config {run_dir}"

    for sig in (signal.SIGTERM, signal.SIGKILL):
        # start_new_session: the signal below goes to the run's process alone, as `kill PID` does, never to its group
        run = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        try:
            wait_for(lambda: processes_mentioning(trainer) or run.poll() is not None, 900, "the train stage")
            assert run.poll() is None, "the run ended before training"
            time.sleep(3)
            os.kill(run.pid, sig)
            run.wait(timeout=60)
            wait_for(lambda: not processes_mentioning(str(run_dir)), 60, f"stage processes to end after {sig.name}")
            if sig == signal.SIGTERM:
                assert not (run_dir / ".lock").exists(), "SIGTERM releases the lock"
        finally:
            for pid in processes_mentioning(str(run_dir)):
                os.kill(pid, signal.SIGKILL)
            if run.poll() is None:
                run.kill()
    # the rerun takes over the killed run's lock (no stage of it is left: checked above) and finishes
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "manifest.json").read_text()).get("finished")
