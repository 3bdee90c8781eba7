"""A seeded generator of one- and two-step arithmetic word problems: the default recipe's own data.

Train prompts carry no answer (the loop must not see labels); the held-out set is disjoint (different number
combinations and names) and carries answers for evaluation only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

NAMES = ["Tom", "Anna", "Ravi", "Mei", "Lucas", "Sofia", "Omar", "Lena", "Kofi", "Yuki", "Maria", "Ben"]
ITEMS = ["apples", "marbles", "books", "stickers", "pencils", "cookies", "stamps", "shells", "coins", "cards"]
INSTRUCTION = "Solve the problem step by step, then end with \"The answer is N\" where N is a number."

TEMPLATES = [
    ("{name} has {a} {item}. {name} buys {b} more. How many {item} does {name} have now?", lambda a, b, c: a + b),
    ("{name} has {a} {item} and gives away {b}. How many {item} are left?", lambda a, b, c: a - b),
    ("{name} has {a} boxes with {b} {item} in each box. How many {item} are there in all?", lambda a, b, c: a * b),
    ("{name} has {a} {item}, buys {b} more, then gives away {c}. How many {item} does {name} have now?",
     lambda a, b, c: a + b - c),
    ("{name} had {a} {item}. A friend gave {name} {b} more and {c} more the next day. How many {item} does {name} "
     "have?", lambda a, b, c: a + b + c),
]


ONE_STEP, TWO_STEP = TEMPLATES[:3], TEMPLATES[3:]


def make_problem(rng: random.Random, two_step_share: float = 0.0, max_operand: int = 12) -> tuple[str, int, tuple]:
    """One problem with operands in 2..max_operand; `two_step_share` of them need two operations.

    The defaults sit inside SmolLM2-135M's reach (about a third right greedily): self-consistency needs a policy that
    is right often enough for its majority to carry signal.
    """
    pool = TWO_STEP if rng.random() < two_step_share else ONE_STEP
    template, solve = pool[rng.randrange(len(pool))]
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(2, max_operand), rng.randint(2, max_operand), rng.randint(1, max_operand)
    if "boxes" in template:
        a, b = rng.randint(2, min(9, max_operand)), rng.randint(2, min(9, max_operand))
    if "gives away {b}" in template:
        a = a + b  # never a negative answer
    question = template.format(name=name, item=item, a=a, b=b, c=c)
    return question, solve(a, b, c), (template, name, item, a, b, c)


def make_splits(num_train: int, num_heldout: int, seed: int = 0, two_step_share: float = 0.0,
                max_operand: int = 12) -> tuple[list[dict], list[dict]]:
    """Disjoint train and held-out prompt sets (no problem, names and numbers alike, in both)."""
    rng = random.Random(seed)
    seen, train, heldout = set(), [], []
    while len(train) + len(heldout) < num_train + num_heldout:
        question, answer, key = make_problem(rng, two_step_share, max_operand)
        if key in seen:
            continue
        seen.add(key)
        row = {"messages": [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}]}
        if len(heldout) < num_heldout:
            heldout.append({"id": f"heldout-{len(heldout)}", **row, "answer": str(answer)})
        else:
            train.append({"id": f"train-{len(train)}", **row})
    return train, heldout


# Phrasings the train generator never produces, for evaluation only: a gain that holds only on TEMPLATES' sentences
# would be a gain in pattern matching, not in arithmetic.
REPHRASED = [
    ("A jar holds {a} {item}. {name} puts in {b} more. How many {item} are in the jar now?", "+"),
    ("{name} found {a} {item} on Monday and {b} on Tuesday. How many {item} did {name} find in total?", "+"),
    ("There were {a} {item} on the table. {name} took {b} of them. How many {item} remain on the table?", "-"),
    ("{name} had {a} {item} and lost {b}. How many {item} does {name} still have?", "-"),
    ("There are {a} bags, and each bag holds {b} {item}. How many {item} are there altogether?", "*"),
    ("{name} buys {a} packs of {item}. Each pack has {b} {item}. How many {item} does {name} get?", "*"),
]


def make_rephrased(num: int, seed: int = 1, max_operand: int = 12) -> list[dict]:
    """`num` held-out problems (with answers) in REPHRASED's sentences, the operations in equal shares and the
    operands in the train generator's ranges."""
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < num:
        template, op = REPHRASED[len(rows) % len(REPHRASED)]
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        high = min(9, max_operand) if op == "*" else max_operand
        a, b = rng.randint(2, high), rng.randint(2, high)
        if op == "-":
            a = a + b  # never a negative answer
        question = template.format(name=name, item=item, a=a, b=b)
        if question in seen:
            continue
        seen.add(question)
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        rows.append({"id": f"rephrased-{len(rows)}",
                     "messages": [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}], "answer": str(answer)})
    return rows


# The default recipe's training forms: each problem kind in many sentences (subjects, verbs, orders, units, a
# comparison, a reversed question), so that what training teaches is the arithmetic, not one sentence's pattern.
# None is one of REPHRASED's sentences (a test checks it): those stay evaluation-only.
@dataclass(frozen=True)
class Form:
    template: str
    solve: Callable[[int, int, int], int]
    minuend: bool = False  # `a` is drawn as a + b, so a - b is never negative
    small: bool = False    # operands of a product stay in 2..9


ONE_STEP_FORMS = [
    Form(TEMPLATES[0][0], lambda a, b, c: a + b),
    Form("{name} picked {a} {item} in the morning and {b} {item} in the afternoon. How many {item} did {name} pick "
         "that day?", lambda a, b, c: a + b),
    Form("How many {item} does {name} have after getting {b} more, if {name} started with {a}?", lambda a, b, c: a + b),
    Form("{other} gave {name} {b} {item}. Before that, {name} had {a} {item}. How many {item} does {name} have now?",
         lambda a, b, c: a + b),
    Form("{name} scored {a} points in the first game and {b} points in the second game. How many points did {name} "
         "score in the two games?", lambda a, b, c: a + b),
    Form("A train has {a} passengers. At the next station {b} more passengers get on and nobody gets off. How many "
         "passengers are on the train now?", lambda a, b, c: a + b),
    Form("{name} walked {a} km on Saturday and {b} km on Sunday. How many km did {name} walk over the weekend?",
         lambda a, b, c: a + b),
    Form("{name} has {a} {item} and {other} has {b} {item}. How many {item} do they have together?",
         lambda a, b, c: a + b),
    Form(TEMPLATES[1][0], lambda a, b, c: a - b, minuend=True),
    Form("{name} needs {a} {item} for a project and already has {b}. How many more {item} does {name} need?",
         lambda a, b, c: a - b, minuend=True),
    Form("{name} has {a} {item}. {other} has {b} {item}. How many more {item} does {name} have than {other}?",
         lambda a, b, c: a - b, minuend=True),
    Form("{name} had {a} {item} and sold {b} of them at the fair. How many {item} does {name} have after the fair?",
         lambda a, b, c: a - b, minuend=True),
    Form("After giving {b} {item} to {other}, how many {item} does {name} have if {name} had {a} at first?",
         lambda a, b, c: a - b, minuend=True),
    Form("A tank is filled with {a} liters of water, and {b} liters leak out. How many liters of water does the tank "
         "have now?", lambda a, b, c: a - b, minuend=True),
    Form("{name} had some {item}. After getting {b} more, {name} has {a}. How many {item} did {name} have at first?",
         lambda a, b, c: a - b, minuend=True),
    Form(TEMPLATES[2][0], lambda a, b, c: a * b, small=True),
    Form("Each of {a} friends brings {b} {item} to school. How many {item} do the friends bring?",
         lambda a, b, c: a * b, small=True),
    Form("A garden has {a} rows of plants with {b} plants in each row. How many plants are in the garden?",
         lambda a, b, c: a * b, small=True),
    Form("{name} reads {b} pages every day for {a} days. How many pages does {name} read?", lambda a, b, c: a * b,
         small=True),
    Form("{name} buys {a} {item} that cost {b} dollars each. How many dollars does {name} spend?",
         lambda a, b, c: a * b, small=True),
    Form("How many {item} are in {a} boxes if every box has {b} {item}?", lambda a, b, c: a * b, small=True),
    Form("{other} has {b} {item}. {name} has {a} times as many {item} as {other}. How many {item} does {name} have?",
         lambda a, b, c: a * b, small=True),
]
TWO_STEP_FORMS = [
    Form(TEMPLATES[3][0], lambda a, b, c: a + b - c),
    Form(TEMPLATES[4][0], lambda a, b, c: a + b + c),
    Form("{name} had {a} {item}. {name} gave {b} to {other} and then bought {c} more. How many {item} does {name} "
         "have now?", lambda a, b, c: a - b + c, minuend=True),
    Form("{name} has {a} boxes with {b} {item} in each box and {c} more {item} outside the boxes. How many {item} "
         "does {name} have in all?", lambda a, b, c: a * b + c, small=True),
    Form("{name} has {a} {item} and {other} has {b} more than {name}. How many {item} do they have together?",
         lambda a, b, c: a + (a + b)),
]
# Sentences with a number the question does not use: the policy must learn which numbers matter.
DISTRACTORS = ["{name} is {d} years old.", "It is {d} degrees outside today.", "{other} lives {d} km away.",
               "The shop opens at {d} o'clock."]


def make_varied(num: int, seed: int = 0, two_step_share: float = 0.2, distractor_share: float = 0.15,
                max_operand: int = 12, exclude: set[str] = frozenset(), forms: list[Form] | None = None) -> list[dict]:
    """`num` distinct problems (with answers) in ONE_STEP_FORMS and TWO_STEP_FORMS (`two_step_share` of them), a
    `distractor_share` of them opening with an unrelated sentence with a number; no question text in `exclude`.
    `forms`: draw from these only, with no distractor (the two-step held-out set). `exclude` holds whole prompt
    texts (question and INSTRUCTION), as the data files store them."""
    rng = random.Random(seed)
    seen, rows = set(exclude), []
    while len(rows) < num:
        pool = forms or (TWO_STEP_FORMS if rng.random() < two_step_share else ONE_STEP_FORMS)
        form = pool[rng.randrange(len(pool))]
        name, other = rng.sample(NAMES, 2)
        item = rng.choice(ITEMS)
        high = min(9, max_operand) if form.small else max_operand
        a, b, c = rng.randint(2, high), rng.randint(2, high), rng.randint(1, max_operand)
        if form.minuend:
            a = a + b
        question = form.template.format(name=name, other=other, item=item, a=a, b=b, c=c)
        if forms is None and rng.random() < distractor_share:
            question = rng.choice(DISTRACTORS).format(name=name, other=other, d=rng.randint(3, 40)) + " " + question
        content = f"{question}\n{INSTRUCTION}"
        if content in seen:
            continue
        seen.add(content)
        rows.append({"messages": [{"role": "user", "content": content}],
                     "answer": str(form.solve(a, b, c))})
    return rows
