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


def length_control(protocol: dict, data: Path | None, rows: list[dict], outputs: list[str],
                   preferences: list[float | None]) -> tuple[dict, dict]:
    """(numbers, settings) of the length-controlled win rate, or the reason it was not computed.

    The files come from `--data DIR` (names in the protocol's `length_control` block, or absolute paths), else from
    the hub dataset. With the gamed-baseline annotations the GLM is alpaca_eval's exactly (instruction difficulty
    from that file, regularized toward the gamed baselines); with only the difficulty table it is fitted without
    that regularization, and the settings say so.
    """
    from selfalign.evaluation import length_controlled as lcm

    spec = protocol.get("length_control") or {}
    if not spec.get("instruction_difficulty") and not spec.get("gamed_annotations"):
        return {"length_controlled_win_rate": None}, {"length_controlled": "off in the protocol"}
    hub_dataset = spec.get("hub_dataset", "tatsu-lab/alpaca_eval")
    gamed, difficulty, files, reasons = None, None, {}, []

    def load(key: str, loader):
        """The protocol's file `key`, read by `loader`; None (and why, in `reasons`) where it is not found."""
        path, reason = _locate(spec[key], data, hub_dataset)
        if not path:
            reasons.append(reason)
            return None
        files[key] = str(path)
        return loader(path)

    if spec.get("gamed_annotations"):
        gamed = load("gamed_annotations", lcm.load_gamed_annotations)
    if gamed is not None:  # alpaca_eval takes the difficulty from the gamed annotations: the table is not needed
        firsts = gamed.drop_duplicates("index")
        difficulty = dict(zip(firsts["index"].astype(int), firsts["instruction_difficulty"].astype(float)))
    elif spec.get("instruction_difficulty"):
        difficulty = load("instruction_difficulty", lcm.load_instruction_difficulty)
    if difficulty is None:
        return ({"length_controlled_win_rate": None},
                {"length_controlled": "not computed: " + "; ".join(reasons) +
                 f" (alpaca_eval's instruction_difficulty.csv and df_gamed.csv are on the hub, {hub_dataset})"})
    fit = lcm.length_controlled_win_rate(preferences, outputs, [r["reference"] for r in rows], [r["id"] for r in rows],
                                         difficulty, gamed, spec.get("regularize_to_baseline_lambda", 0.2),
                                         spec.get("n_splits", 5))
    numbers = {"length_controlled_win_rate": fit.pop("length_controlled_win_rate"),
               "lc_standard_error": fit.pop("lc_standard_error")}
    settings = {"length_controlled": {**fit, "files": files, "not_found": reasons or None}}
    return numbers, settings


def _locate(name: str, data: Path | None, hub_dataset: str) -> tuple[Path | None, str | None]:
    path = Path(name)
    if path.is_absolute() or data is not None:
        path = path if path.is_absolute() else Path(data) / name
        return (path, None) if path.exists() else (None, f"{path} not found")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(hub_dataset, name, repo_type="dataset")), None
    except Exception as e:  # offline, gated, renamed: the raw win rate stands without it
        return None, f"{name} not downloaded from {hub_dataset}: {type(e).__name__}"


def model_outputs_json(rows: list[dict], outputs: list[str], generator: str) -> list[dict]:
    """alpaca_eval's model_outputs.json, for its official CLI."""
    return [{"instruction": r["instruction"], "output": o, "generator": generator, "dataset": r.get("dataset")}
            for r, o in zip(rows, outputs)]
