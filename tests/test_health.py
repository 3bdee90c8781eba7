"""Per-iteration health, worked out by hand on a tiny synthetic run folder."""

import json
import math

import pytest

from selfalign.health import compare, describe, flips, iteration_health, mcnemar_exact, verdict


def test_flips_count_each_kind_of_item():
    before = [1, 1, 0, 0, 1, 0]
    after = [1, 0, 1, 1, 1, 0]
    assert flips(before, after) == {"right_to_wrong": 1, "wrong_to_right": 2, "both_right": 2, "both_wrong": 1}
    with pytest.raises(ValueError, match="not the same problems"):
        flips([1], [1, 0])


def test_mcnemar_exact_against_the_binomial_by_hand():
    # b = 1, c = 5: n = 6, P(X <= 1) = (1 + 6) / 64, two-sided 14/64
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0  # capped
    # b = 0, c = 10: 2 / 1024
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(2, 20) == pytest.approx(2 * sum(math.comb(22, i) for i in range(3)) / 2 ** 22)


def test_compare_and_verdict():
    worse = compare([1] * 40 + [0] * 60, [0] * 40 + [0] * 60)
    assert worse["gain"] == pytest.approx(-0.4) and verdict(worse) == "worse"
    assert worse["right_to_wrong"] == 40 and worse["mcnemar_p"] < 1e-6
    same = compare([1, 0] * 50, [1, 0] * 50)
    assert verdict(same) == "unchanged" and same["mcnemar_p"] == 1.0


def _write(run_dir, iteration, correct, scored=None):
    folder = run_dir / f"iter_{iteration:02d}"
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({"greedy_correct": correct}))
    if scored is not None:
        (folder / "scored.jsonl").write_text("".join(json.dumps(row) + "\n" for row in scored))


def test_iteration_health_from_a_run_folder(tmp_path):
    _write(tmp_path, 0, [0, 0, 0, 0, 1, 1, 0, 0, 0, 0])
    _write(tmp_path, 1, [1, 1, 1, 0, 1, 1, 0, 0, 0, 0])
    scored = [{"prompt_id": "a", "answer": "3", "finish_reason": "stop"},
              {"prompt_id": "a", "answer": "3", "finish_reason": "stop"},
              {"prompt_id": "b", "answer": "4", "finish_reason": "stop"},
              {"prompt_id": "b", "answer": None, "finish_reason": "length"},
              {"prompt_id": "c", "answer": "1", "finish_reason": "stop"},
              {"prompt_id": "c", "answer": "2", "finish_reason": "stop"}]
    _write(tmp_path, 2, [1, 1, 0, 0, 1, 0, 1, 0, 0, 0], scored)
    assert iteration_health(tmp_path, 0) is None
    first = iteration_health(tmp_path, 1)
    assert first["vs_previous"]["wrong_to_right"] == 3 and "vs_base" not in first
    second = iteration_health(tmp_path, 2)
    assert second["vs_previous"] == {**second["vs_previous"], "right_to_wrong": 2, "wrong_to_right": 1,
                                     "both_right": 3, "both_wrong": 4}
    assert second["vs_previous"]["gain"] == pytest.approx(-0.1)
    assert second["vs_base"]["gain"] == pytest.approx(0.2)  # 2 right -> 4 right of 10
    # a: 1 distinct, unanimous; b: 1 distinct (one no-answer), not unanimous; c: 2 distinct
    assert second["samples"] == {"distinct_answers_per_prompt": pytest.approx(4 / 3),
                                 "unanimous_prompts": pytest.approx(1 / 3), "finished_share": pytest.approx(5 / 6)}
    line = describe(second)
    assert "1 wrong->right, 2 right->wrong" in line and "vs base +20.0" in line and "83% finished" in line


def test_best_iteration_and_the_flip_table(tmp_path):
    from selfalign.health import best_iteration, flip_table

    _write(tmp_path, 0, [0, 0, 1, 0])
    _write(tmp_path, 1, [1, 1, 1, 0])
    _write(tmp_path, 2, [1, 0, 1, 0])
    assert best_iteration(tmp_path, 2) == 1
    manifest = {"iterations": {"0": {}, "1": {"health": iteration_health(tmp_path, 1)},
                               "2": {"health": iteration_health(tmp_path, 2)}}}
    table = flip_table(manifest)
    assert table[0].startswith("| iter | greedy gain vs previous") and len(table) == 4
    assert table[3].startswith("| 2 | -25.0") and "| 0 | 1 |" in table[3]
