"""The trainer's heap setting: freed large blocks are reused, not faulted in again (measured as minor page faults)."""

import platform
import subprocess
import sys

import pytest

# Allocate and free a 64 MB tensor 20 times (above glibc's largest mmap threshold, like a step's logits) and count
# the page faults of the loop, with and without the setting.
PROGRAM = """
import resource, sys, torch
from selfalign.training.heap import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else None
torch.ones(16 * 2**20)  # the first allocation faults in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 2**20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    applied, kept = _faults("on")
    _, default = _faults("off")
    assert applied == "True"
    # 20 fresh 64 MB blocks are 327,700 faults of 4 KB pages by default; reused, 16k-115k here (some blocks still
    # land on fresh pages)
    assert default > 100_000, default
    assert kept < default / 2, (kept, default)
