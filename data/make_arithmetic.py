"""Write data/arithmetic_train.jsonl (unlabeled) and data/arithmetic_heldout.jsonl (with answers, evaluation only).

    python data/make_arithmetic.py [--train 400] [--heldout 200] [--seed 0] [--two-step-share 0.0] [--max-operand 12]
    python data/make_arithmetic.py --rephrased 300    # data/arithmetic_heldout_rephrased.jsonl only
"""

import argparse
import json
from pathlib import Path

from selfalign.arithmetic import make_rephrased, make_splits

parser = argparse.ArgumentParser()
parser.add_argument("--train", type=int, default=400)
parser.add_argument("--heldout", type=int, default=200)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--two-step-share", type=float, default=0.0, help="share of two-operation problems")
parser.add_argument("--max-operand", type=int, default=12)
parser.add_argument("--rephrased", type=int, default=0, help="write only this many problems in sentences the train "
                    "generator never uses (evaluation only)")
args = parser.parse_args()
here = Path(__file__).parent
if args.rephrased:
    outputs = [("arithmetic_heldout_rephrased.jsonl", make_rephrased(args.rephrased, max_operand=args.max_operand))]
else:
    train, heldout = make_splits(args.train, args.heldout, args.seed, args.two_step_share, args.max_operand)
    outputs = [("arithmetic_train.jsonl", train), ("arithmetic_heldout.jsonl", heldout)]
for name, rows in outputs:
    (here / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {here / name}")
