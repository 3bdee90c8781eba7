"""MT-Bench like FastChat's llm_judge: two-turn answers, single-answer grading 1-10, FastChat's file formats."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from selfalign.judging.prompts import find_rating


def load_mt_bench(data: Path, reference_model: str = "gpt-4") -> tuple[list[dict], dict, dict]:
    """(questions, judge prompts by name, reference answers by question id) from a FastChat-layout folder."""
    data = Path(data)
    for name in ("question.jsonl", "judge_prompts.jsonl"):
        if not (data / name).exists():
            raise FileNotFoundError(f"{data / name}: not found (expected FastChat's llm_judge/data/mt_bench layout)")
    questions = [json.loads(line) for line in (data / "question.jsonl").read_text().splitlines() if line.strip()]
    prompts = {p["name"]: p for p in (json.loads(line) for line in
                                      (data / "judge_prompts.jsonl").read_text().splitlines() if line.strip())}
    references = {}
    ref_file = data / "reference_answer" / f"{reference_model}.jsonl"
    if ref_file.exists():
        for line in ref_file.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                references[row["question_id"]] = row["choices"][0]["turns"]
    return questions, prompts, references


def judge_prompt_name(category: str, turn: int, protocol: dict) -> str:
    math = category in protocol["reference_categories"]
    base = "single-math-v1" if math else "single-v1"
    return base + ("-multi-turn" if turn == 2 else "")


def judge_messages(question: dict, answers: list[str], turn: int, prompts: dict, references: dict,
                   protocol: dict) -> tuple[str, list[dict]]:
    """FastChat's single-answer judge prompt for one turn, filled exactly as its `run_judge_single` fills it."""
    name = judge_prompt_name(question["category"], turn, protocol)
    prompt = prompts[name]
    fields = {}
    if turn == 1:
        fields.update(question=question["turns"][0], answer=answers[0])
    else:
        fields.update(question_1=question["turns"][0], question_2=question["turns"][1], answer_1=answers[0],
                      answer_2=answers[1])
    if question["category"] in protocol["reference_categories"]:
        ref = references.get(question["question_id"]) or question.get("reference")  # FastChat reads the file
        if ref is None:
            raise ValueError(f"question {question['question_id']} ({question['category']}) needs a reference answer")
        if turn == 1:
            fields["ref_answer_1"] = ref[0]
        else:
            fields.update(ref_answer_1=ref[0], ref_answer_2=ref[1])
    return name, [{"role": "system", "content": prompt["system_prompt"]},
                  {"role": "user", "content": prompt["prompt_template"].format(**fields)}]


def parse_score(judgment: str) -> float:
    """FastChat: `[[rating]]`, else `[rating]`; -1 when neither is there (excluded from averages, counted)."""
    rating = find_rating(judgment)
    return -1.0 if rating is None else rating


def answer_record(question_id: int, model_id: str, turns: list[str]) -> dict:
    """FastChat's model_answer line."""
    return {"question_id": question_id, "answer_id": uuid.uuid4().hex[:22], "model_id": model_id,
            "choices": [{"index": 0, "turns": turns}], "tstamp": time.time()}


def judgment_record(question_id: int, model_id: str, judge: str, prompt_name: str, user_prompt: str, judgment: str,
                    turn: int) -> dict:
    """FastChat's model_judgment/<judge>_single.jsonl line."""
    return {"question_id": question_id, "model": model_id, "judge": [judge, prompt_name], "user_prompt": user_prompt,
            "judgment": judgment, "score": parse_score(judgment), "turn": turn, "tstamp": time.time()}


def summarize(judgments: list[dict], questions: list[dict]) -> dict:
    category = {q["question_id"]: q["category"] for q in questions}
    valid = [j for j in judgments if j["score"] >= 0]

    def mean(rows):
        return sum(r["score"] for r in rows) / len(rows) if rows else None

    return {"average": mean(valid), "turn_1": mean([j for j in valid if j["turn"] == 1]),
            "turn_2": mean([j for j in valid if j["turn"] == 2]),
            "by_category": {c: mean([j for j in valid if category[j["question_id"]] == c])
                            for c in sorted(set(category.values()))},
            "judgments": len(judgments), "unparsable_excluded": len(judgments) - len(valid)}
