"""Progress a stage reports to the run that started it.

Stages run as subprocesses whose output goes to log files, so they report progress through a file instead: every
progress bar in the project is `progress_bar` (a tqdm that also writes `{desc, n, total, unit}` to the file named by
$SELFALIGN_PROGRESS, at most twice a second), and the run reads that file with `read_progress` while it waits
(selfalign.run.display draws it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

PROGRESS_ENV = "SELFALIGN_PROGRESS"
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
