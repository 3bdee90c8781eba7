"""A lock left by a killed DeepSpeed op compile is named before the next launch waits on it (the CI hang of stop 22)."""

import logging
import os
import time

from selfalign.training.build_locks import extensions_root, stale_build_locks, warn_stale_build_locks


def _lock(root, op, age_s):
    (root / op).mkdir(parents=True)
    lock = root / op / "lock"
    lock.touch()
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def test_only_old_locks_are_stale(tmp_path):
    old = _lock(tmp_path, "deepspeed_shm_comm", 3600)
    _lock(tmp_path, "cpu_adam", 30)  # a build running now in another process
    assert stale_build_locks(tmp_path) == [old]
    assert stale_build_locks(tmp_path, older_than_s=7200) == []


def test_warning_names_the_file_and_the_op(tmp_path, caplog):
    old = _lock(tmp_path, "deepspeed_shm_comm", 3600)
    with caplog.at_level(logging.WARNING):
        assert warn_stale_build_locks(tmp_path) == [old]
    assert str(old) in caplog.text and "'deepspeed_shm_comm'" in caplog.text and "60 min" in caplog.text


def test_torch_extensions_dir_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    old = _lock(tmp_path, "deepspeed_shm_comm", 3600)
    assert extensions_root() == tmp_path and warn_stale_build_locks() == [old]
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert extensions_root().name.startswith("py3")  # torch's per-Python default, e.g. py311_cpu
