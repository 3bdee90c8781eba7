"""The label-free curriculum: prompt classes from judged samples, and which prompts the next iteration draws."""

import json

from selfalign.run.curriculum import RETRY_SHARE, draw, prompt_status
from selfalign.io import read_jsonl, write_jsonl
from selfalign.records import PromptRecord


def _scored(path, groups):
    """groups: prompt id -> list of (score, answer) per sample."""
    rows = [{"prompt_id": pid, "sample_index": i, "score": score, "answer": answer}
            for pid, samples in groups.items() for i, (score, answer) in enumerate(samples)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_prompt_status_classes_each_prompt_by_its_checked_answers(tmp_path):
    _scored(tmp_path / "scored.jsonl", {
        "all-agree": [(1.0, "7"), (1.0, "7"), (1.0, "7")],
        "none-checked": [(None, "7"), (None, None), (None, "9")],
        "dissent": [(0.67, "7"), (0.67, "7"), (None, "9")],
        "checked-but-split": [(0.33, "7"), (0.33, "8"), (0.33, "9")],
        "agree-but-one-unchecked": [(0.67, "7"), (0.67, "7"), (None, "7")]})
    assert prompt_status(tmp_path / "scored.jsonl") == {
        "all-agree": "spent", "none-checked": "waiting", "dissent": "used", "checked-but-split": "used",
        "agree-but-one-unchecked": "used"}


def _pool(n):
    return [PromptRecord(id=f"q{i}", messages=[{"role": "user", "content": f"question {i}"}]) for i in range(n)]


def test_agreement_retries_waiting_prompts_once_and_never_draws_spent_ones(tmp_path):
    pool, size = _pool(40), 8
    first = draw(pool, size, 1, tmp_path, "agreement")
    assert [p.id for p in first] == [f"q{i}" for i in range(8)]  # iteration 1: the file's first slice
    it1 = tmp_path / "iter_01"
    it1.mkdir()
    write_jsonl(it1 / "prompts.jsonl", first)
    # q0..q2 had no checked answer, q3 all agreed, the rest made pairs
    _scored(it1 / "scored.jsonl", {**{f"q{i}": [(None, None), (None, "3")] for i in range(3)},
                                   "q3": [(1.0, "5"), (1.0, "5")],
                                   **{f"q{i}": [(0.5, "1"), (None, "2")] for i in range(4, 8)}})
    second = [p.id for p in draw(pool, size, 2, tmp_path, "agreement")]
    retries = int(RETRY_SHARE * size)
    assert second == ["q0", "q1"][:retries] + [f"q{i}" for i in range(8, 8 + size - retries)]
    it2 = tmp_path / "iter_02"
    it2.mkdir()
    write_jsonl(it2 / "prompts.jsonl", [p for p in pool if p.id in second])
    # still no checked answer for the retried ones: they are not retried a second time
    _scored(it2 / "scored.jsonl", {pid: [(None, None), (None, None)] for pid in second})
    third = [p.id for p in draw(pool, size, 3, tmp_path, "agreement")]
    assert third[:retries] == ["q2"] + [f"q{i}" for i in range(8, 8 + size - retries)][:retries - 1]
    assert "q0" not in third and "q1" not in third and "q3" not in third
    assert len(third) == size == len(set(third))


def test_fresh_rule_takes_the_next_slice_and_agreement_reuses_pair_makers_when_the_file_is_spent(tmp_path):
    pool = _pool(10)
    assert [p.id for p in draw(pool, 4, 2, tmp_path, "fresh")] == ["q4", "q5", "q6", "q7"]
    assert [p.id for p in draw(pool, 4, 3, tmp_path, "fresh")] == ["q8", "q9", "q0", "q1"]  # wraps around
    it1 = tmp_path / "iter_01"
    it1.mkdir()
    write_jsonl(it1 / "prompts.jsonl", pool[:8])
    _scored(it1 / "scored.jsonl", {**{f"q{i}": [(1.0, "2"), (1.0, "2")] for i in range(4)},
                                   **{f"q{i}": [(0.5, "2"), (None, "3")] for i in range(4, 8)}})
    drawn = [p.id for p in draw(pool, 4, 2, tmp_path, "agreement")]
    assert drawn == ["q8", "q9", "q4", "q5"]  # the two fresh ones, then the earliest pair makers; no spent one


def test_prompts_without_ids_keep_a_stable_id_across_iterations(tmp_path):
    pool = [PromptRecord(messages=[{"role": "user", "content": f"question {i}"}]) for i in range(6)]
    first = draw(pool, 3, 1, tmp_path, "agreement")
    assert all(p.id and p.id.startswith("p-") for p in first)
    it1 = tmp_path / "iter_01"
    it1.mkdir()
    write_jsonl(it1 / "prompts.jsonl", first)
    _scored(it1 / "scored.jsonl", {p.id: [(None, None), (None, None)] for p in first})
    second = draw(pool, 4, 2, tmp_path, "agreement")
    assert second[0].id == first[0].id  # retried under the same id
    assert [p.messages[0].content for p in second[1:]] == ["question 3", "question 4", "question 5"]
    assert read_jsonl(it1 / "prompts.jsonl", PromptRecord)[0].id == first[0].id
