"""A run you can watch: stage processes report through progress_bar, the loop shows one line per stage."""

import io

from selfalign.progress import PROGRESS_ENV, progress_bar, read_progress
from selfalign.run.display import RunDisplay
from selfalign.run.results import SampleResult, TrainResult


def test_progress_bar_reports_to_the_file_the_loop_names(tmp_path, monkeypatch):
    path = tmp_path / "generate.progress.json"
    monkeypatch.setenv(PROGRESS_ENV, str(path))
    bar = progress_bar(total=10, desc="generate (hf)", unit="prompts", file=io.StringIO())
    first = read_progress(path)
    assert 0.0 <= first.pop("elapsed") < 5.0, "the bar's own seconds so far"
    assert first == {"desc": "generate (hf)", "n": 0, "total": 10, "unit": "prompts"}
    bar.update(4)  # within half a second of the last report: throttled
    bar.update(3)
    bar.close()  # a closing bar always reports its last count
    assert read_progress(path)["n"] == 7
    assert not list(tmp_path.glob("*.tmp")), "written through a temporary file, renamed into place"


def test_disabled_bar_reports_nothing(tmp_path, monkeypatch):
    path = tmp_path / "train.progress.json"
    monkeypatch.setenv(PROGRESS_ENV, str(path))
    bar = progress_bar(total=5, disable=True)  # a non-main rank's bar
    bar.update(5)
    bar.close()
    assert not path.exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_piped_output_is_plain_lines_with_summaries():
    out = io.StringIO()
    display = RunDisplay(2, stream=out, plain_every=0.0)
    display.start(1, "generate")
    display.update({"desc": "generate (vllm)", "n": 36, "total": 72, "unit": "prompts"})
    display.done(SampleResult(prompts=72, samples=576, engine_seconds=249.0, seconds=250.04))
    display.start(0, "evaluate")
    display.skipped()
    lines = out.getvalue().splitlines()
    assert lines[0] == "iter 1/2 · generate · started"
    assert lines[1].startswith("iter 1/2 · generate · generate (vllm) 36/72 prompts · 0:00 elapsed")
    assert "left in this part" in lines[1]
    assert lines[2] == "iter 1/2 · generate · done in 250.0 s (72 prompts, 576 samples)"
    assert lines[3:] == ["base · evaluate · started", "base · evaluate · done earlier, skipped"]
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_terminal_output_updates_one_line_in_place():
    out = _Terminal()
    display = RunDisplay(1, stream=out)
    display.start(1, "train")
    display.update({"desc": "train", "n": 3, "total": 14, "unit": "steps"})
    display.done(TrainResult(steps=14, final_metrics={"loss": 0.5}, seconds=61.2))
    text = out.getvalue()
    assert text.count("\n") == 1, "the live line is rewritten, only the summary ends a line"
    assert text.endswith("\r\x1b[2Kiter 1/1 · train · done in 61.2 s (14 steps)\n")
    assert "train 3/14 steps" in text


def test_estimate_uses_the_current_bars_own_rate_and_waits_for_a_tenth():
    """A stage's second bar (evaluation: greedy, then sampled) is estimated from its own elapsed time, not the
    stage's; with under a tenth done no estimate is printed (it was hours off with 4 of 400 done)."""
    out = io.StringIO()
    display = RunDisplay(1, stream=out, plain_every=0.0)
    display.start(0, "evaluate")
    display.stage_started -= 600  # the stage's first bar took ten minutes
    display.update({"desc": "Processed prompts", "n": 4, "total": 400, "unit": "it", "elapsed": 30.0})
    display.update({"desc": "Processed prompts", "n": 100, "total": 400, "unit": "it", "elapsed": 60.0})
    lines = out.getvalue().splitlines()
    assert "left" not in lines[1] and "10:00 elapsed" in lines[1]
    assert lines[2].endswith("· ~3:00 left in this part"), lines[2]
