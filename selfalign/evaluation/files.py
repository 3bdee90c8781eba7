"""Evaluation files as lm-evaluation-harness users read them, and `eval compare` over any of them.

Every evaluation writes a results file (each accuracy with its standard error, lm-eval's
`sqrt(p (1 - p) / (n - 1))`) and a per-item samples file (one JSON line per item: its id, the output, the extracted
answer, the gold answer, whether it is right). `compare` reads whichever the project wrote (a benchmark folder's
`results.json` or the held-out `eval.json`, given as the file or its folder) and pairs per-item results where both
sides have them, so a difference carries a paired bootstrap interval.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from selfalign.errors import ConfigError
from selfalign.evaluation.common import flat_numbers, format_number
from selfalign.io import write_json, write_jsonl

# eval.json's per-item lists (0/1, or a fraction of right samples), each beside the accuracy it averages
ITEM_LISTS = ("greedy_correct", "sampled_correct", "majority_correct", "selected_correct")


def _accuracy_key(result: dict, items: str) -> str | None:
    prefix = {"greedy_correct": "greedy_accuracy", "sampled_correct": "sampled_accuracy",
              "majority_correct": "majority_at_", "selected_correct": "selected_"}[items]
    return next((k for k in result if k.startswith(prefix) and isinstance(result[k], float)), None)


def stderr(values: list[float]) -> float | None:
    """Standard error of a mean over items, as lm-eval reports it (sample standard deviation / sqrt(n))."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def heldout_stderrs(result: dict) -> dict:
    """`<accuracy>_stderr` beside each accuracy an eval.json holds per item (greedy_accuracy_stderr, ...)."""
    out = {}
    for items in ITEM_LISTS:
        key = _accuracy_key(result, items)
        if result.get(items) and key:
            out[f"{key}_stderr"] = stderr([float(v) for v in result[items]])
    return out


def samples_path(eval_json: Path) -> Path:
    """`eval.json` -> `eval.samples.jsonl` beside it."""
    return eval_json.with_name(f"{eval_json.stem}.samples.jsonl")


def write_heldout(out: Path, header: dict, result: dict) -> tuple[dict, Path, Path]:
    """eval.json (numbers, stderrs, per-item 0/1 lists) and its samples file (one line per greedy item); returns what
    eval.json holds and both paths."""
    items = result.pop("greedy_items", [])
    out = Path(out)
    written = {**header, **result, **heldout_stderrs(result)}
    write_json(out, written)
    if items:
        write_jsonl(samples_path(out), items)
    return written, out, samples_path(out)


def read_eval(path: Path) -> tuple[str, dict, dict]:
    """(model, flat numbers, per-item lists) of any evaluation file the project writes, or its folder."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("results.json", "eval.json") if (path / name).is_file()]
        if not found:
            raise ConfigError(f"{path}: holds no results.json (selfalign eval gsm8k/mt-bench/alpaca-eval) or "
                              "eval.json (selfalign eval heldout, or a run's iter_NN folder); nothing to compare")
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"{path}: not found; give an evaluation folder or its results.json / eval.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON evaluation file ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not an evaluation file (expected a JSON object)")
    if "numbers" in data:  # a benchmark's results.json
        return str(data.get("model")), flat_numbers(data["numbers"]), _benchmark_items(path.parent, data)
    if "greedy_accuracy" in data:  # eval.json
        numbers = {k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        items = {k: data[k] for k in ITEM_LISTS if isinstance(data.get(k), list)}
        return str(data.get("model")), numbers, items
    raise ConfigError(f"{path}: neither a benchmark results.json (no 'numbers') nor a held-out eval.json "
                      "(no 'greedy_accuracy')")


def _benchmark_items(folder: Path, results: dict) -> dict:
    samples = folder / f"samples_{results.get('benchmark')}.jsonl"
    if not samples.is_file():
        return {}
    rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()]
    metrics = [k for k in rows[0] if k.startswith("exact_match,")] if rows else []
    return {m: [int(r[m]) for r in rows] for m in metrics}


def compare(a: Path, b: Path) -> list[tuple[str, ...]]:
    """Rows (metric, a, b, b - a [95% paired interval]) for two evaluations of the same items."""
    from selfalign.evaluation.heldout import paired_bootstrap

    model_a, numbers_a, items_a = read_eval(a)
    model_b, numbers_b, items_b = read_eval(b)
    rows = [("model", model_a, model_b, "")]
    for key in dict.fromkeys([*numbers_a, *numbers_b]):
        va, vb = numbers_a.get(key), numbers_b.get(key)
        diff = f"{vb - va:+.4f}" if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else ""
        rows.append((key, format_number(va), format_number(vb), diff))
    for key in items_a.keys() & items_b.keys():
        left, right = items_a[key], items_b[key]
        if len(left) != len(right) or not left:
            rows.append((f"{key} (paired)", f"{len(left)} items", f"{len(right)} items", "not the same items"))
            continue
        gain = paired_bootstrap([float(v) for v in left], [float(v) for v in right])
        rows.append((f"{key} (paired, n={gain['n']})", format_number(sum(map(float, left)) / len(left)),
                     format_number(sum(map(float, right)) / len(right)),
                     f"{gain['gain']:+.4f} [{gain['ci95_low']:+.4f}, {gain['ci95_high']:+.4f}]"))
    return rows
