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


def make_problem(rng: random.Random) -> tuple[str, int, tuple]:
    template, solve = TEMPLATES[rng.randrange(len(TEMPLATES))]
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if "boxes" in template:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), 0
    else:
        a, b, c = rng.randint(10, 60), rng.randint(2, 30), rng.randint(1, 9)
    if "gives away {b}" in template:
        b = rng.randint(2, a - 1)
    question = template.format(name=name, item=item, a=a, b=b, c=c)
    return question, solve(a, b, c), (template, a, b, c)


def make_splits(num_train: int, num_heldout: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Disjoint train and held-out prompt sets (no (template, numbers) combination in both)."""
    rng = random.Random(seed)
    seen, train, heldout = set(), [], []
    while len(train) + len(heldout) < num_train + num_heldout:
        question, answer, key = make_problem(rng)
        if key in seen:
            continue
        seen.add(key)
        row = {"messages": [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}]}
        if len(heldout) < num_heldout:
            heldout.append({"id": f"heldout-{len(heldout)}", **row, "answer": str(answer)})
        else:
            train.append({"id": f"train-{len(train)}", **row})
    return train, heldout
