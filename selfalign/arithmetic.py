"""A seeded generator of one- and two-step arithmetic word problems: the default recipe's own data.

Train prompts carry no answer (the loop must not see labels); the held-out set is disjoint (different number
combinations and names) and carries answers for evaluation only.
"""

from __future__ import annotations

import random

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
