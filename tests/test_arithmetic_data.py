"""The shipped arithmetic files: train prompts carry no answers, and no evaluation problem is a train problem."""

import json
import re
from pathlib import Path

from selfalign.arithmetic import INSTRUCTION, REPHRASED, TEMPLATES, make_rephrased

DATA = Path(__file__).resolve().parents[1] / "data"


def _questions(name):
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def _as_regex(template):
    pattern = re.escape(template)
    for field in ("name", "item", "a", "b", "c"):
        pattern = pattern.replace(re.escape("{" + field + "}"), r"\w+")
    return re.compile(pattern)


def test_train_prompts_have_no_answers_and_evaluation_sets_are_disjoint_from_them():
    train = _questions("arithmetic_train.jsonl")
    assert all("answer" not in row for row in train)
    train_texts = {row["messages"][0]["content"] for row in train}
    for name in ("arithmetic_heldout_600.jsonl", "arithmetic_heldout_rephrased.jsonl"):
        rows = _questions(name)
        assert all(row["answer"] for row in rows)
        assert not train_texts & {row["messages"][0]["content"] for row in rows}, name


def test_rephrased_problems_use_no_train_sentence_and_their_answers_are_right():
    rows = _questions("arithmetic_heldout_rephrased.jsonl")
    assert rows == make_rephrased(len(rows))  # the shipped file is the generator's output
    train_patterns = [_as_regex(template) for template, _ in TEMPLATES]
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for row in rows:
        question = row["messages"][0]["content"].removesuffix("\n" + INSTRUCTION)
        assert not any(p.fullmatch(question) for p in train_patterns)
        matches = [op for template, op in REPHRASED if _as_regex(template).fullmatch(question)]
        assert len(matches) == 1
        a, b = (int(x) for x in re.findall(r"\d+", question))
        assert row["answer"] == str(ops[matches[0]](a, b)) and int(row["answer"]) >= 0
