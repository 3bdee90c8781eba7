"""Keep freed memory in the trainer's heap instead of handing it back to the kernel after every step.

glibc serves each allocation above its mmap threshold (at most 32 MB: logits, activations) with a fresh mmap and
returns it with munmap when the tensor dies, so every step faults its working set in again. A 6-step LoRA run of the
`--small` loop took 2.7 million page faults (about 11 GB of fresh pages); on this VM each fault got slower while
another process held memory (a kept vLLM engine, or any idle process with 6 GB resident): 24 s alone, 34-41 s beside
it. With mmap off for chunks and no trimming, freed memory is reused: 1.1 million faults, 22-23 s alone, 28 s beside
it (docs/results.md). The cost: the heap keeps its high-water mark until the process ends, which a training
process reaches anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from the heap and never trim it; False where the C library is not
    glibc (musl, macOS) or refuses, which leaves its defaults."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    done = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    if not done:
        log.warning("mallopt refused the heap settings; training runs with the C library's defaults")
    return done
