"""Write the arithmetic prompt files: train prompts without answers, held-out sets with answers (evaluation only).

    python data/make_arithmetic.py [--train 400] [--heldout 200] [--seed 0] [--two-step-share 0.0] [--max-operand 12]
    python data/make_arithmetic.py --rephrased 300    # data/arithmetic_heldout_rephrased.jsonl only
    python data/make_arithmetic.py --varied 1080      # data/arithmetic_train_varied.jsonl (the default recipe's) and
                                                      # data/arithmetic_heldout_twostep.jsonl (200)
"""

import argparse
import json
from pathlib import Path

from selfalign.arithmetic import TWO_STEP_FORMS, make_rephrased, make_splits, make_varied

parser = argparse.ArgumentParser()
parser.add_argument("--train", type=int, default=400)
parser.add_argument("--heldout", type=int, default=200)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--two-step-share", type=float, default=0.0, help="share of two-operation problems")
parser.add_argument("--max-operand", type=int, default=12)
parser.add_argument("--rephrased", type=int, default=0, help="write only this many problems in sentences the train "
                    "generator never uses (evaluation only)")
parser.add_argument("--varied", type=int, default=0, help="write this many train prompts in the many-form generator "
                    "(20%% two-step, 15%% with a distractor sentence) and a 200-problem two-step held-out set")
args = parser.parse_args()
here = Path(__file__).parent


def texts(name: str) -> set[str]:
    path = here / name
    return {json.loads(line)["messages"][0]["content"] for line in path.read_text().splitlines()} \
        if path.exists() else set()


if args.rephrased:
    outputs = [("arithmetic_heldout_rephrased.jsonl", make_rephrased(args.rephrased, max_operand=args.max_operand))]
elif args.varied:
    two_step = make_varied(200, seed=2, forms=TWO_STEP_FORMS, max_operand=args.max_operand)
    two_step = [{"id": f"twostep-{i}", **row} for i, row in enumerate(two_step)]
    held_out = set().union(*(texts(n) for n in ("arithmetic_heldout.jsonl", "arithmetic_heldout_600.jsonl",
                                                "arithmetic_heldout_rephrased.jsonl")))
    held_out |= {row["messages"][0]["content"] for row in two_step}
    train = make_varied(args.varied, seed=3, max_operand=args.max_operand, exclude=held_out)
    # Answers never reach the loop: the train file holds prompts only.
    train = [{"id": f"train-{i}", "messages": row["messages"]} for i, row in enumerate(train)]
    outputs = [("arithmetic_heldout_twostep.jsonl", two_step), ("arithmetic_train_varied.jsonl", train)]
else:
    train, heldout = make_splits(args.train, args.heldout, args.seed, args.two_step_share, args.max_operand)
    outputs = [("arithmetic_train.jsonl", train), ("arithmetic_heldout.jsonl", heldout)]
for name, rows in outputs:
    (here / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {here / name}")
