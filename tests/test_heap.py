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
if sys.argv[1] == "train":  # a notebook that trains, then goes on with other work
    from selfalign.training.config import TrainConfig
    from selfalign.training.trainer import train
    train(TrainConfig(model=sys.argv[2], loss_type="dpo", max_steps=1, per_device_train_batch_size=2, report_to=[]),
          sys.argv[3], sys.argv[4])
torch.ones(16 * 2**20)  # the first allocation faults in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 2**20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, *args) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode, *map(str, args)], capture_output=True, text=True,
                         check=True).stdout
    applied, faults = out.split()[-2:]
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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_train_as_a_library_call_leaves_the_process_heap_alone(tmp_path, tiny_model_path):
    """Only entry points (`selfalign train`, `judge-train`) set the heap: a notebook that calls train() gets its
    memory handed back as before."""
    from selfalign.io import write_jsonl
    from selfalign.records import Message, PreferencePair

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [PreferencePair(prompt=[Message(role="user", content=f"{i} + 1?")], prompt_id=str(i),
                                       chosen=[Message(role="assistant", content=f"{i + 1}")],
                                       rejected=[Message(role="assistant", content="no")]) for i in range(2)])
    _, after_train = _faults("train", tiny_model_path, pairs, tmp_path / "out")
    assert after_train > 100_000, after_train  # glibc's defaults: every 64 MB block faulted in again
