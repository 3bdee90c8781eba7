"""A run you can watch: the lines `selfalign run` prints while its stages run.

One live line per running stage, from the progress file its process writes (selfalign.progress); on a terminal the
line updates in place, piped to a file it is printed plainly every `plain_every` seconds, never with escape codes.
Every stage ends with a one-line summary (its count and seconds).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

MIN_DONE_FOR_ESTIMATE = 0.1


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

    def skipped(self) -> None:
        self._write(f"{self.label} · done earlier, skipped")

    def done(self, result) -> None:
        """The stage's summary line: its seconds, its counts and, for an evaluation, its greedy accuracy (`result`:
        the stage's result model, selfalign.run.results)."""
        found = result.model_dump()
        counts = ", ".join(f"{found[key]} {key}" for key in ("prompts", "samples", "records", "steps", "num_prompts")
                           if found.get(key) is not None)
        accuracy = found.get("greedy_accuracy")
        if accuracy is not None:
            counts = ", ".join(filter(None, [counts, f"greedy accuracy {accuracy:.1%}"]))
        self._write(f"{self.label} · done in {result.seconds:.1f} s" + (f" ({counts})" if counts else ""))

    def failed(self, seconds: float) -> None:
        self._write(f"{self.label} · failed after {seconds:.1f} s")
