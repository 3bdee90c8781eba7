"""Stale build locks of PyTorch's extension compiler, found before DeepSpeed waits on them for ever.

DeepSpeed compiles some ops on first use (on CPU: its shared-memory collective; with CPU offload: CPU Adam) through
torch.utils.cpp_extension, which guards each build with a `lock` file and waits, without limit, while that file
exists. A run killed during the compile leaves the file behind, and every later DeepSpeed launch then hangs silently.
We only warn: a lock a few minutes old may belong to a build running now in another process.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

STALE_AFTER_S = 600  # the compiles seen here take 75-110 s on 2 cores


def extensions_root() -> Path:
    """The folder torch.utils.cpp_extension builds into (TORCH_EXTENSIONS_DIR, else its per-Python default)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def stale_build_locks(root: Path | None = None, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """The `lock` files under the extension build folders that are older than `older_than_s` seconds."""
    root = extensions_root() if root is None else root
    now = time.time()
    return sorted(lock for lock in root.glob("*/lock") if now - lock.stat().st_mtime > older_than_s)


def warn_stale_build_locks(root: Path | None = None) -> list[Path]:
    """Log a warning naming each stale lock and how to clear it; returns them."""
    locks = stale_build_locks(root)
    for lock in locks:
        minutes = (time.time() - lock.stat().st_mtime) / 60
        log.warning("A build lock %.0f min old, likely left by a killed run, will make DeepSpeed wait for ever "
                    "compiling %r: %s. If no other DeepSpeed run is compiling now, delete it (rm %s).",
                    minutes, lock.parent.name, lock, lock)
    return locks
