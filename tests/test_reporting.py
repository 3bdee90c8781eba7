"""The run report: accuracy intervals, the verifier section, and a plot that reads with one iteration."""

from __future__ import annotations

import json

import pytest

from selfalign.run.reporting import accuracy_intervals, write_report
from selfalign.run.results import Manifest


def _eval(greedy: list[int], sampled: list[float], majority: list[int]) -> dict:
    return {"num_prompts": len(greedy), "greedy_accuracy": sum(greedy) / len(greedy), "greedy_correct": greedy,
            "sampled_accuracy": sum(sampled) / len(sampled), "sampled_correct": sampled,
            "majority_at_4": sum(majority) / len(majority), "majority_correct": majority}


def test_accuracy_intervals():
    evaluation = _eval([1] * 20 + [0] * 80, [0.25, 0.75] * 50, [1] * 30 + [0] * 70)
    intervals = accuracy_intervals(evaluation)
    value, low, high = intervals["greedy_accuracy"]
    assert value == 0.2 and low == pytest.approx(0.1333, abs=1e-3) and high == pytest.approx(0.2888, abs=1e-3)
    value, low, high = intervals["sampled_accuracy"]
    # mean 0.5, sample sd of ±0.25 values = 0.2513, half width 1.96 * 0.2513 / 10
    assert value == 0.5 and (high - low) / 2 == pytest.approx(1.96 * 0.25126 / 10, abs=1e-4)
    assert intervals["majority"][1] < 0.3 < intervals["majority"][2]
    assert accuracy_intervals({}) == {}


def test_report_with_one_iteration_draws_intervals_and_the_verifier(tmp_path):
    run_dir = tmp_path / "run"
    for iteration, rate in ((0, 20), (1, 30)):
        folder = run_dir / f"iter_{iteration:02d}"
        folder.mkdir(parents=True)
        evaluation = _eval([1] * rate + [0] * (100 - rate), [rate / 100] * 100, [1] * rate + [0] * (100 - rate))
        (folder / "eval.json").write_text(json.dumps(evaluation))
    verify = {"prompts": 64, "prompts_kept": 40, "records": 40, "coverage": 0.625, "precision": 0.6,
              "precision_ci95": [0.45, 0.74], "pick_accuracy": 0.375, "rejected_right": 0.05,
              "greedy_accuracy_kept": 0.2, "sampled_accuracy_kept": 0.15, "verdict": "stronger",
              "explanation": "the verifier is stronger than the policy: [sic] brackets stay text"}
    stages0 = {"evaluate": {"status": "done", "seconds": 1.0, "greedy_accuracy": 0.2}, "verify": verify}
    stages1 = {"evaluate": {"status": "done", "seconds": 1.0, "greedy_accuracy": 0.3},
               "filter": {"records": 40, "prompts_dropped": 10}}
    manifest = {"recipe": {"name": "one"}, "iterations": {"0": {"stages": stages0}, "1": {"stages": stages1}}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))

    from io import StringIO

    from rich.console import Console

    out = StringIO()
    path = write_report(run_dir, Manifest(run_dir / "manifest.json"), Console(file=out, width=150))
    report = path.read_text()
    assert "## Verifier check (before training)" in report and "chosen answer right 60%" in report
    assert "+10.0 points" in report  # the paired gain with its interval
    assert "[sic] brackets stay text" in out.getvalue()
    plot = run_dir / "metrics.png"
    assert plot.stat().st_size > 5000

    import matplotlib.image as mpimg

    image = mpimg.imread(plot)
    assert image.shape[0] > 300 and image.shape[1] > 800


def test_plot_error_bars_come_from_the_eval_files(tmp_path, monkeypatch):
    """The plotted bars are the intervals of each iteration's eval.json, not of the manifest's rounded numbers."""
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, yerr=None, **kwargs):
        drawn.append((kwargs.get("label"), list(x), list(y), yerr))
        return original(self, x, y, yerr=yerr, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    run_dir = tmp_path / "run"
    (run_dir / "iter_00").mkdir(parents=True)
    evaluation = _eval([1] * 20 + [0] * 80, [0.2] * 100, [1] * 20 + [0] * 80)
    (run_dir / "iter_00" / "eval.json").write_text(json.dumps(evaluation))
    manifest = {"iterations": {"0": {"stages": {"evaluate": {"greedy_accuracy": 0.2}}}}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    write_report(run_dir, Manifest(run_dir / "manifest.json"), show=False)
    greedy = next(d for d in drawn if d[0].startswith("greedy"))
    low_err, high_err = greedy[3]
    assert greedy[2] == [0.2] and low_err[0] == pytest.approx(0.2 - 0.1333, abs=1e-3)
    assert high_err[0] == pytest.approx(0.2888 - 0.2, abs=1e-3)
