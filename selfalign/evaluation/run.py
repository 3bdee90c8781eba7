"""`selfalign eval BENCH`: generate with the model, judge where the benchmark needs a judge, write the reports.

Answers and judgments are appended item by item, so a rerun after a kill redoes nothing finished.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from selfalign.evaluation import alpaca_eval as ae
from selfalign.evaluation import gsm8k as g8
from selfalign.evaluation import mt_bench as mt
from selfalign.evaluation.common import resumable, write_results
from selfalign.generation import SamplingSettings
from selfalign.evaluation.files import stderr
from selfalign.io import write_json, write_jsonl
from selfalign.records import PromptRecord, group_by_prompt


def make_judge(judge: str, base_url: str | None, api_key_env: str, cache: Path, max_new_tokens: int = 2048):
    """(backend, is_local). A local judge is labelled as such in every report."""
    from selfalign.judging.scorers import make_judge_backend

    return make_judge_backend(judge, base_url, api_key_env, cache_path=cache, max_tokens=max_new_tokens), not base_url


def _generate(engine, chats: list[list[dict]], settings: SamplingSettings) -> list[str]:
    prompts = [PromptRecord(id=str(i), messages=c) for i, c in enumerate(chats)]
    samples = engine.generate(prompts, settings)
    by_prompt = group_by_prompt(samples)
    return [[s.text for s in by_prompt[str(i)]] for i in range(len(chats))]


def _answers(engine, chats: list[list[dict]], settings: SamplingSettings, selection=None) -> list[str]:
    """One answer per chat: the engine's under `settings`, or with `selection` (config, select) the one chosen from
    config.n samples at config.temperature by MBR or self-verification."""
    if selection is None:
        return [texts[0] for texts in _generate(engine, chats, settings)]
    config, select = selection
    prompts = [PromptRecord(id=str(i), messages=c) for i, c in enumerate(chats)]
    samples = engine.generate(prompts, settings.model_copy(update={"n": config.n, "temperature": config.temperature}))
    chosen = {s.prompt_id: s.text for s in select(samples)}
    return [chosen[str(i)] for i in range(len(chats))]


def _outputs_name(selection, stem: str = "outputs") -> str:
    return f"{stem}.jsonl" if selection is None else f"{stem}.{selection[0].tag()}.jsonl"


def run_gsm8k(engine, model: str, out: Path, protocol: dict, data: Path | None, limit: int | None,
              selection=None) -> dict:
    rows = g8.load_gsm8k(protocol, data)[:limit]
    gen = protocol["generation"]
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=gen["max_new_tokens"], stop=gen.get("stop", []))

    def answer(part):
        texts = _answers(engine, [g8.messages_for(r["question"], protocol) for r in part], greedy, selection)
        return [{"id": r["id"], "question": r["question"], "gold": r["gold"], "output": t} for r, t in zip(part, texts)]

    done = resumable(out / _outputs_name(selection), rows, lambda r: r["id"], answer,
                     chunk=int(protocol.get("batch_size") or 32))
    outputs = [done[str(r["id"])]["output"] for r in rows]
    numbers = g8.score(outputs, [r["gold"] for r in rows])
    items = g8.items(rows, outputs)
    write_jsonl(out / "samples_gsm8k.jsonl", items)  # lm-eval's per-item file: what each filter read, right or not
    for metric in ("strict-match", "flexible-extract"):
        numbers[f"{metric}_stderr"] = stderr([item[f"exact_match,{metric}"] for item in items])
    k = int(protocol.get("majority_k") or 0)
    if k > 0:
        sampled = SamplingSettings(n=k, temperature=protocol["majority_temperature"], max_new_tokens=gen["max_new_tokens"],
                                   stop=gen.get("stop", []))

        def sample(part):
            texts = _generate(engine, [g8.messages_for(r["question"], protocol) for r in part], sampled)
            return [{"id": r["id"], "samples": t} for r, t in zip(part, texts)]

        samples = resumable(out / f"samples_k{k}.jsonl", rows, lambda r: r["id"], sample, chunk=16)
        numbers[f"majority@{k}"] = g8.majority_score([samples[str(r["id"])]["samples"] for r in rows],
                                                     [r["gold"] for r in rows])
    return write_results(out, "gsm8k", model, None, numbers, {"protocol": protocol, "limit": limit, **_selected(selection),
                                                             "data": str(data) if data else protocol["data"]}, False)


def _selected(selection) -> dict:
    return {} if selection is None else {"select": selection[0].model_dump()}


def run_mt_bench(engine, model: str, out: Path, protocol: dict, data: Path, limit: int | None, judge,
                 local_judge: bool, selection=None) -> dict:
    questions, prompts, references = mt.load_mt_bench(data, protocol["reference_model"])
    questions = questions[:limit]
    model_id = Path(model).name if Path(model).exists() else model.replace("/", "_")
    if selection is not None:  # FastChat names answer files by model id: the selected answers are another "model"
        model_id = f"{model_id}.{selection[0].tag()}"

    def answer(part):
        """Turn 1 for all, then turn 2 after each question's own first answer; per-category temperatures."""
        turns = {q["question_id"]: [] for q in part}
        for turn in (0, 1):
            by_temp = defaultdict(list)
            for q in part:
                by_temp[protocol["temperature_by_category"].get(q["category"], 0.7)].append(q)
            for temperature, group in by_temp.items():
                chats = []
                for q in group:
                    chat = [{"role": "user", "content": q["turns"][0]}]
                    if turn == 1:
                        chat += [{"role": "assistant", "content": turns[q["question_id"]][0]},
                                 {"role": "user", "content": q["turns"][1]}]
                    chats.append(chat)
                settings = SamplingSettings(temperature=temperature, max_new_tokens=protocol["max_new_tokens"])
                for q, text in zip(group, _answers(engine, chats, settings, selection)):
                    turns[q["question_id"]].append(text)
        return [mt.answer_record(q["question_id"], model_id, turns[q["question_id"]]) for q in part]

    answers = resumable(out / "model_answer" / f"{model_id}.jsonl", questions, lambda q: q["question_id"], answer)
    items = [(q, turn) for q in questions for turn in (1, 2)]

    def grade(part):
        requests = [mt.judge_messages(q, answers[str(q["question_id"])]["choices"][0]["turns"], turn, prompts,
                                      references, protocol) for q, turn in part]
        judgments = judge.complete([messages for _, messages in requests])
        return [mt.judgment_record(q["question_id"], model_id, judge.name, name, messages[-1]["content"], text, turn)
                for (q, turn), (name, messages), text in zip(part, requests, judgments)]

    judged = resumable(out / "model_judgment" / f"{_safe(judge.name)}_single.jsonl", items,
                       lambda item: f"{item[0]['question_id']}-{item[1]}", grade, chunk=8)
    numbers = mt.summarize(list(judged.values()), questions)
    return write_results(out, "mt_bench", model, judge.name, numbers, {"protocol": protocol, "limit": limit,
                                                                      "data": str(data), **_selected(selection)},
                         local_judge)


def run_alpaca_eval(engine, model: str, out: Path, protocol: dict, data: Path | None, limit: int | None, judge,
                    local_judge: bool, selection=None) -> dict:
    rows = ae.load_alpaca_eval(data, protocol["reference"])[:limit]
    for i, row in enumerate(rows):
        row["id"] = i
    settings = SamplingSettings(temperature=protocol["temperature"], max_new_tokens=protocol["max_new_tokens"])

    def answer(part):
        texts = _answers(engine, [[{"role": "user", "content": r["instruction"]}] for r in part], settings, selection)
        return [{"id": r["id"], "output": t} for r, t in zip(part, texts)]

    done = resumable(out / _outputs_name(selection), rows, lambda r: r["id"], answer)
    outputs = [done[str(r["id"])]["output"] for r in rows]
    generator = Path(model).name if Path(model).exists() else model
    if selection is not None:
        generator = f"{generator}.{selection[0].tag()}"
    write_json(out / _outputs_name(selection, "model_outputs").replace(".jsonl", ".json"),
               ae.model_outputs_json(rows, outputs, generator))
    template = ae.judge_template(data)
    requests = ae.judge_pairs(rows, outputs, protocol["seed"])
    for request, row in zip(requests, rows):
        request["id"] = row["id"]

    def annotate(part):
        chats = [ae.template_messages(template, instruction=r["instruction"], output_1=r["output_1"],
                                      output_2=r["output_2"]) for r in part]
        probs = judge.letter_probs(chats, letters=("m", "M"))
        return [{"id": r["id"], "model_token": r["model_token"],
                 "preference": None if p is None else p[r["model_token"]]} for r, p in zip(part, probs)]

    annotations = resumable(out / _outputs_name(selection, "annotations"), requests, lambda r: r["id"], annotate,
                            chunk=8)
    preferences = [annotations[str(r["id"])]["preference"] for r in rows]
    valid = [p for p in preferences if p is not None]
    if not valid:
        raise RuntimeError("the judge returned no log-probabilities for 'm'/'M': AlpacaEval 2.0's weighted annotator "
                           "needs an endpoint or local model that exposes token log-probabilities")
    lc_numbers, lc_settings = ae.length_control(protocol, data, rows, outputs, preferences)
    numbers = {**ae.win_rate(valid), **lc_numbers, "abstained": len(preferences) - len(valid),
               "avg_length": sum(map(len, outputs)) / len(outputs)}
    return write_results(out, "alpaca_eval", model, judge.name, numbers,
                         {"protocol": protocol, "limit": limit, "data": str(data) if data else "tatsu-lab/alpaca_eval",
                          **lc_settings, **_selected(selection)}, local_judge)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
