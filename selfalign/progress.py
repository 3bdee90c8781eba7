"""A run you can watch: live progress of each stage of `selfalign run`.

Stages run as subprocesses whose output goes to log files, so they report progress through a file instead: every
progress bar in the project is `progress_bar` (a tqdm that also writes `{desc, n, total, unit}` to the file named by
$SELFALIGN_PROGRESS, at most twice a second), and the loop reads that file while it waits and shows one line per
stage. On a terminal the line updates in place; piped to a file it is printed plainly every `plain_every` seconds,
never with escape codes. Every stage ends with a one-line summary (its count and seconds).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from tqdm.auto import tqdm

PROGRESS_ENV = "SELFALIGN_PROGRESS"
MIN_DONE_FOR_ESTIMATE = 0.1
QUIET_ENV = "SELFALIGN_PROGRESS_QUIET"  # report to the file only (an engine replica: its parent draws the one bar)


class progress_bar(tqdm):  # noqa: N801 (used like tqdm, whose name it keeps the style of)
    """tqdm that also reports to $SELFALIGN_PROGRESS when the loop set it (a disabled bar, such as a non-main rank's,
    reports nothing). vLLM takes it as `use_tqdm`."""

    def __init__(self, *args, **kwargs):
        self._report_path = None if kwargs.get("disable") else os.environ.get(PROGRESS_ENV)
        self._reported_at = 0.0
        if os.environ.get(QUIET_ENV):
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the bar)
        super().__init__(*args, **kwargs)
        self._report(force=True)

    def update(self, n=1):
        result = super().update(n)
        self._report()
        return result

    def close(self):
        if getattr(self, "_report_path", None) is not None:
            self._report(force=True)
        super().close()

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._report_path or (not force and now - self._reported_at < 0.5):
            return
        self._reported_at = now
        payload = {"desc": self.desc, "n": self.n, "total": self.total, "unit": self.unit,
                   "elapsed": round(self._time() - self.start_t, 1)}  # this bar's own time: a stage may run several
        tmp = f"{self._report_path}.{os.getpid()}.tmp"
        try:
            Path(tmp).write_text(json.dumps(payload))
            os.replace(tmp, self._report_path)
        except OSError:
            pass  # progress is a convenience: never fail a stage over it


def read_progress(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class RunDisplay:
    """The lines `selfalign run` prints: one live line per running stage, one summary line per finished stage."""

    def __init__(self, iterations: int, stream: TextIO | None = None, plain_every: float = 30.0):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.iterations, self.plain_every = iterations, plain_every
        self.stage_started = self.last_plain = 0.0
        self.label = ""

    def _write(self, text: str, final: bool = True) -> None:
        if self.live:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        self._write(text)

    def start(self, iteration: int, stage: str) -> None:
        self.label = f"iter {iteration}/{self.iterations} · {stage}" if iteration else f"base · {stage}"
        self.stage_started = self.last_plain = time.monotonic()
        self._write(f"{self.label} · started", final=not self.live)

    def update(self, progress: dict | None) -> None:
        now = time.monotonic()
        elapsed = now - self.stage_started
        line = f"{self.label} · {_clock(elapsed)} elapsed"
        if progress and progress.get("total"):
            n, total = progress["n"], progress["total"]
            what = f"{progress.get('desc') or ''} {n}/{total} {progress.get('unit') or ''}".strip()
            line = f"{self.label} · {what} · {_clock(elapsed)} elapsed"
            # The rate of this bar alone (a stage's earlier bars would inflate it), and only once a tenth is done:
            # vLLM finishes a batch's requests in waves, so the first few say nothing about the rest.
            if total * MIN_DONE_FOR_ESTIMATE <= n < total:
                part = progress.get("elapsed", elapsed)
                line += f" · ~{_clock(part * (total - n) / n)} left in this part"
        if self.live:
            self._write(line, final=False)
        elif now - self.last_plain >= self.plain_every:
            self.last_plain = now
            self._write(line)

    def done(self, info: dict, seconds: float, skipped: bool = False) -> None:
        if skipped:
            self._write(f"{self.label} · done earlier, skipped")
            return
        counts = ", ".join(f"{value} {key}" for key, value in info.items()
                           if key in ("prompts", "samples", "records", "steps", "num_prompts") and value is not None)
        accuracy = info.get("greedy_accuracy")
        if accuracy is not None:
            counts = ", ".join(filter(None, [counts, f"greedy accuracy {accuracy:.1%}"]))
        self._write(f"{self.label} · done in {seconds:.1f} s" + (f" ({counts})" if counts else ""))

    def failed(self, seconds: float) -> None:
        self._write(f"{self.label} · failed after {seconds:.1f} s")
