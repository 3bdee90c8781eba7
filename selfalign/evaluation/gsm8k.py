"""GSM8K like lm-evaluation-harness: greedy chain of thought, strict-match and flexible-extract accuracy."""

from __future__ import annotations

import json
from pathlib import Path

from selfalign.judging.answers import extract_answer, last_number, majority_answer, normalize_number, strict_answer


def load_gsm8k(protocol: dict, data: Path | None) -> list[dict]:
    if data is not None:
        rows = [json.loads(line) for line in Path(data).read_text().splitlines() if line.strip()]
    else:
        from datasets import load_dataset

        source = protocol["data"]
        rows = list(load_dataset(source["hub"], source["config"], split=source["split"]))
    for i, row in enumerate(rows):
        for field in ("question", "answer"):
            if field not in row:
                raise ValueError(f"{data or protocol['data']['hub']}, row {i + 1}: missing field '{field}'")
    return [{"id": i, "question": r["question"], "gold": gold_answer(r["answer"])} for i, r in enumerate(rows)]


def gold_answer(answer: str) -> str:
    return normalize_number(answer.split("####")[-1].strip()) or answer.split("####")[-1].strip()


def messages_for(question: str, protocol: dict) -> list[dict]:
    if protocol["style"] == "zeroshot_cot":
        return [{"role": "user", "content": protocol["zeroshot_template"].format(question=question)}]
    messages = []
    for shot in protocol["fewshot_exemplars"]:  # few-shot as a multi-turn chat, as lm-eval's --fewshot_as_multiturn
        messages += [{"role": "user", "content": protocol["fewshot_template"].format(question=shot["question"])},
                     {"role": "assistant", "content": shot["answer"]}]
    return messages + [{"role": "user", "content": protocol["fewshot_template"].format(question=question)}]


def score(outputs: list[str], golds: list[str]) -> dict:
    """strict-match: an explicit "#### N" / "The (final) answer is N"; flexible-extract: the last number."""
    strict = [strict_answer(o) == g for o, g in zip(outputs, golds)]
    flexible = [last_number(o) == g for o, g in zip(outputs, golds)]
    n = max(len(golds), 1)
    return {"strict-match": sum(strict) / n, "flexible-extract": sum(flexible) / n, "n": len(golds)}


def items(rows: list[dict], outputs: list[str]) -> list[dict]:
    """lm-eval's per-item sample rows: the document, the output, each filter's extracted answer and exact match."""
    return [{"doc_id": r["id"], "question": r["question"], "target": r["gold"], "resps": output,
             "filtered_resps": {"strict-match": strict_answer(output), "flexible-extract": last_number(output)},
             "exact_match,strict-match": int(strict_answer(output) == r["gold"]),
             "exact_match,flexible-extract": int(last_number(output) == r["gold"])}
            for r, output in zip(rows, outputs)]


def majority_score(samples: list[list[str]], golds: list[str]) -> float:
    right = sum(majority_answer([extract_answer(t) for t in texts]) == gold for texts, gold in zip(samples, golds))
    return right / max(len(golds), 1)
