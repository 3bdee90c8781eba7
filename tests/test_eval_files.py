"""Evaluation files as lm-eval users read them (accuracy with standard error, a per-item samples file), and
`eval compare` on every evaluation file the project writes, with paired intervals."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from selfalign.cli import app
from selfalign.evaluation import gsm8k as g8
from selfalign.evaluation.files import compare, stderr

runner = CliRunner()


def test_stderr_is_lm_evals_sample_standard_error():
    values = [1, 0, 0, 1, 1, 0, 0, 0]
    mean = sum(values) / 8
    brute = math.sqrt(sum((v - mean) ** 2 for v in values) / 7) / math.sqrt(8)
    assert stderr(values) == pytest.approx(brute)
    assert stderr([1]) is None


def test_gsm8k_items_name_each_filters_answer_and_match():
    rows = [{"id": 0, "question": "q0", "gold": "6"}, {"id": 1, "question": "q1", "gold": "5"}]
    items = g8.items(rows, ["21 - 15 = 6. The answer is 6.", "I think 7, or maybe 5"])
    assert items[0]["exact_match,strict-match"] == 1 and items[0]["filtered_resps"]["strict-match"] == "6"
    assert items[1]["exact_match,strict-match"] == 0 and items[1]["exact_match,flexible-extract"] == 1


def test_eval_heldout_writes_stderrs_and_samples_and_compare_pairs_them(tmp_path, tiny_model_path):
    from selfalign.arithmetic import make_splits

    _, heldout = make_splits(4, 6, seed=3)
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in heldout))
    out = tmp_path / "a" / "eval.json"
    result = runner.invoke(app, ["eval", "heldout", "--model", tiny_model_path, "--out", str(out), "--data",
                                 str(data), "--k", "2", "--engine", "hf"])
    assert result.exit_code == 0, result.output
    assert "6 prompts: 6 greedy generations + 6 x 2 sampled = 18 generations" in result.output
    assert f"wrote {out}, {out.parent / 'eval.samples.jsonl'}" in result.output
    evaluation = json.loads(out.read_text())
    assert "greedy_items" not in evaluation
    assert evaluation["greedy_accuracy_stderr"] == pytest.approx(stderr(evaluation["greedy_correct"]), nan_ok=True)
    assert "majority_at_2_stderr" in evaluation and "sampled_accuracy_stderr" in evaluation
    items = [json.loads(line) for line in (out.parent / "eval.samples.jsonl").read_text().splitlines()]
    assert [i["correct"] for i in items] == evaluation["greedy_correct"]
    assert set(items[0]) == {"prompt_id", "output", "extracted", "gold", "correct"}

    # a second evaluation of the same items, right where the first was wrong on the first three
    better = dict(evaluation, model="b", greedy_correct=[1, 1, 1] + evaluation["greedy_correct"][3:])
    better["greedy_accuracy"] = sum(better["greedy_correct"]) / 6
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "eval.json").write_text(json.dumps(better))
    rows = {row[0]: row for row in compare(tmp_path / "a", tmp_path / "b" / "eval.json")}
    paired = rows["greedy_correct (paired, n=6)"]
    gain = (sum(better["greedy_correct"]) - sum(evaluation["greedy_correct"])) / 6
    assert paired[3].startswith(f"{gain:+.4f} [")
    shown = runner.invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert shown.exit_code == 0 and "paired" in shown.output, shown.output
