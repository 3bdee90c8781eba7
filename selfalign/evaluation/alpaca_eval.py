"""AlpacaEval 2.0: outputs against the reference outputs, judged by the weighted pairwise annotator.

The judge sees the two outputs in a random order per instruction and answers one token, "m" (the first output) or
"M" (the second); the preference is the probability mass on the model's token, renormalized over the two
(alpaca_eval's `logprob_parser`). Win rate = 100 x mean preference; standard error = 100 x the standard error of
the mean (ddof = 1), as alpaca_eval reports them.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

from selfalign.evaluation.common import EVALS_DIR


def load_alpaca_eval(data: Path | None, reference: str) -> list[dict]:
    if data is None:
        from datasets import load_dataset

        rows = list(load_dataset("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline", split="eval"))
        return [{"instruction": r["instruction"], "dataset": r.get("dataset"), "reference": r["output"]} for r in rows]
    data = Path(data)
    ref_file = data / "reference_outputs" / f"{reference}.json"
    if not ref_file.exists():
        raise FileNotFoundError(f"{ref_file}: reference outputs not found")
    refs = json.loads(ref_file.read_text())
    return [{"instruction": r["instruction"], "dataset": r.get("dataset"), "reference": r["output"]} for r in refs]


def judge_template(data: Path | None) -> str:
    candidates = ([Path(data) / "evaluators_configs" / "alpaca_eval_clf_gpt4_turbo" / "alpaca_eval_clf.txt"]
                  if data else []) + [EVALS_DIR / "alpaca_eval_clf.txt"]
    return next(p for p in candidates if p.exists()).read_text()


def template_messages(template: str, **fields) -> list[dict]:
    """alpaca_eval's chat-markup template (<|im_start|>role ... <|im_end|>) filled and split into chat messages."""
    filled = template
    for key, value in fields.items():
        filled = filled.replace("{" + key + "}", value)
    return [{"role": role, "content": content.strip("\n")}
            for role, content in re.findall(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", filled, flags=re.S)]


def judge_pairs(rows: list[dict], outputs: list[str], seed: int) -> list[dict]:
    """One judge request per instruction; the model's output is first or second by a seeded coin."""
    rng = random.Random(seed)
    requests = []
    for row, output in zip(rows, outputs):
        model_first = rng.random() < 0.5
        first, second = (output, row["reference"]) if model_first else (row["reference"], output)
        requests.append({"instruction": row["instruction"], "output_1": first, "output_2": second,
                         "model_token": "m" if model_first else "M"})
    return requests


def win_rate(preferences: list[float]) -> dict:
    """Preferences in [0, 1] (1: the model's output is better)."""
    n = len(preferences)
    mean = sum(preferences) / n
    sem = math.sqrt(sum((p - mean) ** 2 for p in preferences) / (n - 1)) / math.sqrt(n) if n > 1 else float("nan")
    wins = sum(p > 0.5 for p in preferences)
    draws = sum(p == 0.5 for p in preferences)
    return {"win_rate": 100 * mean, "standard_error": 100 * sem, "n_wins": wins, "n_wins_base": n - wins - draws,
            "n_draws": draws, "n_total": n, "discrete_win_rate": 100 * (wins + draws / 2) / n}


def model_outputs_json(rows: list[dict], outputs: list[str], generator: str) -> list[dict]:
    """alpaca_eval's model_outputs.json, for its official CLI."""
    return [{"instruction": r["instruction"], "output": o, "generator": generator, "dataset": r.get("dataset")}
            for r, o in zip(rows, outputs)]
