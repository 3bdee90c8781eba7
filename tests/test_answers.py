import json

import pytest

from selfalign.judging.answers import count_votes, extract_answer, majority_answer, normalize_number, strict_answer


def test_gsm8k_gold_answers_extract_to_their_numbers(shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:1000]]
    for row in rows:
        gold = row["answer"].split("####")[-1].strip()
        assert extract_answer(row["answer"]) == normalize_number(gold), row["answer"][-80:]
        assert strict_answer(row["answer"]) == normalize_number(gold)


@pytest.mark.parametrize("text, expected", [
    ("She pays 3 * $4 = $12.\n#### 12", "12"),
    ("#### 1,250", "1250"),
    ("The answer is $1,000.00.", "1000"),
    ("The final answer is 7.5 apples", "7.5"),
    ("So the answer is: -3", "-3"),
    ("We get \\boxed{42}.", "42"),
    ("Thus \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
    ("First 12, then 30, so 42 in total.", "42"),
    ("The answer is 8. Wait, no: 9.", "8"),  # the explicit format wins over the last number
    ("I cannot tell.", None),
    ("", None),
])
def test_tricky_strings(text, expected):
    assert extract_answer(text) == expected


def test_strict_ignores_bare_numbers():
    assert strict_answer("so 42 in total") is None
    assert strict_answer("The answer is 42") == "42"


def test_votes_group_equivalent_answers():
    grouped, votes = count_votes(["0.5", "\\frac{1}{2}", "1/2", "3", None, "3.0"])
    assert votes[grouped[0]] == 3 and grouped[0] == grouped[1] == grouped[2]
    assert grouped[4] is None and votes[normalize_number("3.0")] == 2
    assert majority_answer(["1", "2", "2", None]) == "2"
    assert majority_answer([None, None]) is None
