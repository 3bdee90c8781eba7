"""Per-iteration health, worked out by hand on a tiny synthetic run folder."""

import json
import math

import pytest

from selfalign.run.health import compare, describe, flips, iteration_health, mcnemar_exact, verdict


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
    from selfalign.run.health import best_iteration, flip_table

    _write(tmp_path, 0, [0, 0, 1, 0])
    _write(tmp_path, 1, [1, 1, 1, 0])
    _write(tmp_path, 2, [1, 0, 1, 0])
    assert best_iteration(tmp_path, 2) == 1
    from selfalign.run.results import Manifest

    manifest = Manifest(tmp_path / "manifest.json")
    manifest.record_health(1, iteration_health(tmp_path, 1))
    manifest.record_health(2, iteration_health(tmp_path, 2))
    table = flip_table(Manifest(tmp_path / "manifest.json"))
    assert table[0].startswith("| iter | greedy gain vs previous") and len(table) == 4
    assert table[3].startswith("| 2 | -25.0") and "| 0 | 1 |" in table[3]


def test_extra_held_out_sets_in_the_health_and_the_report(tmp_path):
    from selfalign.run.reporting import gain_vs_base, set_table

    for t, main, extra in ((0, [0, 0, 1, 0], [0, 0, 0, 0, 1]), (1, [1, 0, 1, 0], [1, 1, 0, 0, 1]),
                           (2, [1, 1, 1, 0], [1, 0, 0, 0, 1])):
        _write(tmp_path, t, main)
        (tmp_path / f"iter_{t:02d}" / "eval_rephrased.json").write_text(json.dumps({"greedy_correct": extra}))
    health = iteration_health(tmp_path, 2, ("rephrased", "missing"))
    rephrased = health["sets"]["rephrased"]
    assert set(health["sets"]) == {"rephrased"}  # a set with no file is left out, not an error
    assert rephrased["accuracy"] == pytest.approx(2 / 5)
    assert rephrased["vs_previous"]["right_to_wrong"] == 1 and rephrased["vs_previous"]["gain"] == pytest.approx(-0.2)
    assert rephrased["vs_base"]["wrong_to_right"] == 1 and rephrased["vs_base"]["gain"] == pytest.approx(0.2)
    assert "rephrased 40.0%: -20.0 [" in describe(health) and "+20.0 [" in describe(health)
    assert gain_vs_base(tmp_path, "rephrased")["gain"] == pytest.approx(0.2)
    assert gain_vs_base(tmp_path)["gain"] == pytest.approx(0.5) and gain_vs_base(tmp_path)["iteration"] == 2
    table = set_table(tmp_path, ["rephrased"])
    assert table[0] == "| set | iter 0 | iter 1 | iter 2 | last vs base [95% CI] |"
    # 1 of 4 right: Wilson 95% interval [4.6%, 69.9%]
    assert table[2].startswith("| eval.data (n = 4) | 25.0% [4.6%, 69.9%] | 50.0% [")
    assert table[3].startswith("| rephrased (n = 5) | 20.0% [") and table[3].endswith("|")
    assert set_table(tmp_path, []) == []  # one set: the main table says it all
