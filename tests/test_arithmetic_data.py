"""The shipped arithmetic files: train prompts carry no answers, and no evaluation problem is a train problem."""

import json
import re
from pathlib import Path

import pytest

from selfalign.arithmetic import (DISTRACTORS, INSTRUCTION, ONE_STEP_FORMS, REPHRASED, TEMPLATES, TWO_STEP_FORMS,
                                  make_rephrased, make_varied)

DATA = Path(__file__).resolve().parents[1] / "data"


def _questions(name):
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def _as_regex(template):
    pattern = re.escape(template)
    for field in ("name", "item", "a", "b", "c"):
        pattern = pattern.replace(re.escape("{" + field + "}"), r"\w+")
    return re.compile(pattern)


HELD_OUT = ("arithmetic_heldout.jsonl", "arithmetic_heldout_600.jsonl", "arithmetic_heldout_rephrased.jsonl",
            "arithmetic_heldout_twostep.jsonl")


@pytest.mark.parametrize("train_file", ["arithmetic_train.jsonl", "arithmetic_train_varied.jsonl"])
def test_train_prompts_have_no_answers_and_evaluation_sets_are_disjoint_from_them(train_file):
    train = _questions(train_file)
    assert all("answer" not in row for row in train)
    train_texts = {row["messages"][0]["content"] for row in train}
    if train_file == "arithmetic_train_varied.jsonl":  # the older file repeats 4 texts (kept as it was measured)
        assert len(train_texts) == len(train)
    for name in HELD_OUT:
        rows = _questions(name)
        assert all(row["answer"] for row in rows)
        # the older train file predates the two-step set, and shares texts with the older 200-problem set (written by
        # another run of the generator); the 600 set, which the recipes evaluate on, is disjoint from both
        if train_file == "arithmetic_train_varied.jsonl" or name in HELD_OUT[1:3]:
            assert not train_texts & {row["messages"][0]["content"] for row in rows}, name


def _form_of(question, forms):
    """The one form (and its numbers) a question was written in, a leading distractor sentence set aside."""
    found = []
    for form in forms:
        pattern = _as_regex(form.template.replace("{other}", "{name}"))
        match = pattern.fullmatch(question)
        if match is None:
            for distractor in DISTRACTORS:
                lead = _as_regex(distractor.replace("{other}", "{name}").replace("{d}", "{a}")).pattern
                match = re.fullmatch(lead + " " + pattern.pattern, question)
                if match:
                    break
        if match:
            found.append(form)
    return found


def test_varied_train_forms_are_never_evaluation_sentences_and_each_answer_is_right():
    rephrased = [_as_regex(template) for template, _ in REPHRASED]
    for form in ONE_STEP_FORMS + TWO_STEP_FORMS:
        assert not any(p.pattern == _as_regex(form.template).pattern for p in rephrased), form.template
    rows = make_varied(400, seed=7)
    assert len({row["messages"][0]["content"] for row in rows}) == 400
    shares = {"two": 0, "distractor": 0}
    for row in rows:
        question = row["messages"][0]["content"].removesuffix("\n" + INSTRUCTION)
        assert not any(p.fullmatch(question) for p in rephrased)
        [form] = _form_of(question, ONE_STEP_FORMS + TWO_STEP_FORMS) or [None]
        assert form is not None, question
        numbers = [int(x) for x in re.findall(r"\d+", question)]
        if not _as_regex(form.template.replace("{other}", "{name}")).fullmatch(question):
            numbers = numbers[1:]  # the distractor's number comes first
            shares["distractor"] += 1
        fields = re.findall(r"\{([abc])\}", form.template)
        values = dict(zip(fields, numbers))
        assert row["answer"] == str(form.solve(values.get("a", 0), values.get("b", 0), values.get("c", 0)))
        assert int(row["answer"]) >= 0
        shares["two"] += form in TWO_STEP_FORMS
    assert 0.12 < shares["two"] / 400 < 0.28 and 0.08 < shares["distractor"] / 400 < 0.22
    # every form appears: what training teaches is spread over all of them
    assert {f.template for f in ONE_STEP_FORMS + TWO_STEP_FORMS} <= {
        _form_of(r["messages"][0]["content"].removesuffix("\n" + INSTRUCTION), ONE_STEP_FORMS + TWO_STEP_FORMS)[0]
        .template for r in make_varied(2000, seed=8)}


def test_two_step_heldout_file_is_the_generator_output_with_right_answers():
    rows = _questions("arithmetic_heldout_twostep.jsonl")
    assert [{k: v for k, v in r.items() if k != "id"} for r in rows] == make_varied(200, seed=2, forms=TWO_STEP_FORMS)
    for row in rows:
        question = row["messages"][0]["content"].removesuffix("\n" + INSTRUCTION)
        assert len(_form_of(question, TWO_STEP_FORMS)) == 1


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
