"""GSM8K, MT-Bench and AlpacaEval: scoring against known answers, prompts filled exactly from the data files, the
win-rate arithmetic against hand-computed and published numbers, and both judged pipelines end to end."""

import csv
import json
import math
import re

import pytest
import yaml
from typer.testing import CliRunner

from selfalign.cli import app
from selfalign.evaluation import alpaca_eval as ae
from selfalign.evaluation import gsm8k as g8
from selfalign.evaluation import mt_bench as mt
from selfalign.evaluation.common import load_protocol

runner = CliRunner()


def test_gsm8k_gold_answers_score_100_and_corrupted_score_0(shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:300]]
    golds = [g8.gold_answer(r["answer"]) for r in rows]
    assert g8.score([r["answer"] for r in rows], golds) == {"strict-match": 1.0, "flexible-extract": 1.0, "n": 300}
    corrupted = [re.sub(r"#### .*$", f"#### {int(float(g)) + 1}", r["answer"]) for r, g in zip(rows, golds)]
    assert g8.score(corrupted, golds) == {"strict-match": 0.0, "flexible-extract": 0.0, "n": 300}
    cot = [f"Some reasoning with 3 and 4. The answer is {g}." for g in golds]
    assert g8.score(cot, golds)["strict-match"] == 1.0
    bare = [f"so it is {g}" for g in golds]
    assert g8.score(bare, golds) == {"strict-match": 0.0, "flexible-extract": 1.0, "n": 300}


def test_gsm8k_prompt_styles():
    protocol = load_protocol("gsm8k")
    zero = g8.messages_for("How many?", protocol)
    assert len(zero) == 1 and "Problem: How many?" in zero[0]["content"] and "The final answer is" in zero[0]["content"]
    few = g8.messages_for("How many?", {**protocol, "style": "fewshot_cot"})
    assert len(few) == 17 and [m["role"] for m in few[:2]] == ["user", "assistant"]
    assert all(m["content"].endswith(".") and "The answer is" in m["content"] for m in few[1:16:2])
    assert few[-1]["content"] == "Q: How many?\nA:"


def test_mt_bench_judge_prompts_filled_exactly_from_the_data(shared_data):
    data = shared_data / "mt_bench"
    questions, prompts, references = mt.load_mt_bench(data)
    protocol = load_protocol("mt_bench")
    raw_prompts = {json.loads(line)["name"]: json.loads(line) for line in (data / "judge_prompts.jsonl").open()}
    math_q = next(q for q in questions if q["category"] == "math")
    writing_q = next(q for q in questions if q["category"] == "writing")
    answers = ["first answer", "second answer"]
    ref = [json.loads(line) for line in (data / "reference_answer" / "gpt-4.jsonl").open()
           if json.loads(line)["question_id"] == math_q["question_id"]][0]["choices"][0]["turns"]

    name, messages = mt.judge_messages(math_q, answers, 2, prompts, references, protocol)
    template = raw_prompts["single-math-v1-multi-turn"]
    assert name == "single-math-v1-multi-turn" and messages[0]["content"] == template["system_prompt"]
    assert messages[1]["content"] == template["prompt_template"].format(
        question_1=math_q["turns"][0], question_2=math_q["turns"][1], answer_1=answers[0], answer_2=answers[1],
        ref_answer_1=ref[0], ref_answer_2=ref[1])

    name, messages = mt.judge_messages(writing_q, answers, 1, prompts, references, protocol)
    assert name == "single-v1" and messages[0]["content"] == raw_prompts["single-v1"]["system_prompt"]
    assert messages[1]["content"] == raw_prompts["single-v1"]["prompt_template"].format(
        question=writing_q["turns"][0], answer=answers[0])
    assert len(questions) == 80 and {q["category"] for q in questions} >= {"math", "reasoning", "coding"}


def test_mt_bench_score_parsing_and_summary():
    assert mt.parse_score("Rating: [[7]]") == 7.0 and mt.parse_score("Rating: [6.5]") == 6.5
    assert mt.parse_score("no rating") == -1
    questions = [{"question_id": 1, "category": "math"}, {"question_id": 2, "category": "writing"}]
    judgments = [{"question_id": 1, "turn": 1, "score": 8.0}, {"question_id": 1, "turn": 2, "score": 4.0},
                 {"question_id": 2, "turn": 1, "score": 6.0}, {"question_id": 2, "turn": 2, "score": -1}]
    summary = mt.summarize(judgments, questions)
    assert summary["average"] == 6.0 and summary["turn_1"] == 7.0 and summary["turn_2"] == 4.0
    assert summary["by_category"] == {"math": 6.0, "writing": 6.0} and summary["unparsable_excluded"] == 1


def test_win_rate_against_hand_computed_preferences():
    result = ae.win_rate([1.0, 0.0, 0.5, 0.75])
    assert result["win_rate"] == pytest.approx(56.25)
    # deviations .4375 -.5625 -.0625 .1875; squares sum .546875; /3 = .182292; sqrt = .426956; / sqrt(4) = .213478
    assert result["standard_error"] == pytest.approx(21.3478, abs=1e-3)
    assert (result["n_wins"], result["n_wins_base"], result["n_draws"]) == (2, 1, 1)
    assert result["discrete_win_rate"] == pytest.approx(62.5)


def test_standard_error_matches_the_published_alpaca_eval_1_leaderboard(shared_data):
    """AlpacaEval 1.0's annotator gives discrete preferences, so each row's standard error follows from its counts."""
    path = shared_data / "alpaca_eval" / "leaderboards" / "AlpacaEval_1_alpaca_eval_gpt4_leaderboard.csv"
    checked = 0
    for row in csv.DictReader(path.open()):
        try:
            wins, losses, draws = (int(float(row[k])) for k in ("n_wins", "n_wins_base", "n_draws"))
            published_se, published_wr = float(row["standard_error"]), float(row["win_rate"])
            discrete = float(row["discrete_win_rate"])
        except ValueError:
            continue
        if abs(discrete - published_wr) > 1e-6:
            continue  # rows annotated with continuous preferences: the counts do not determine the SE
        ours = ae.win_rate([1.0] * wins + [0.0] * losses + [0.5] * draws)
        assert ours["win_rate"] == pytest.approx(published_wr, abs=1e-6)  # the CSV rounds some rows
        assert ours["standard_error"] == pytest.approx(published_se, abs=1e-6)
        checked += 1
    assert checked >= 50


def test_alpaca_eval_2_standard_errors_within_the_bound(shared_data):
    """Continuous preferences: the published SE can never exceed the binary bound for the same mean."""
    path = shared_data / "alpaca_eval" / "leaderboards" / "AlpacaEval_2_weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
    for row in csv.DictReader(path.open()):
        if not row["standard_error"]:
            continue
        p, n = float(row["win_rate"]) / 100, int(float(row["n_total"]))
        assert float(row["standard_error"]) <= 100 * math.sqrt(p * (1 - p) / (n - 1)) + 1e-6


def test_alpaca_judge_template_and_order(shared_data):
    template = ae.judge_template(shared_data / "alpaca_eval")
    messages = ae.template_messages(template, instruction="Say hi", output_1="Hi!", output_2="Hello there.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert '"""Say hi"""' in messages[1]["content"] and '"""Hi!"""' in messages[1]["content"]
    assert messages[1]["content"].index("Hi!") < messages[1]["content"].index("Hello there.")
    rows = [{"instruction": str(i), "reference": "ref"} for i in range(200)]
    requests = ae.judge_pairs(rows, ["out"] * 200, seed=0)
    first = sum(r["model_token"] == "m" for r in requests)
    assert 70 < first < 130, "random order per instruction"
    assert all((r["output_1"] == "out") == (r["model_token"] == "m") for r in requests)
    assert ae.judge_pairs(rows, ["out"] * 200, seed=0) == requests


def _small_protocol(tmp_path, name, **changes):
    protocol = {**load_protocol(name), **changes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(protocol))
    return path


def test_mt_bench_pipeline_end_to_end(tmp_path, shared_data):
    config = _small_protocol(tmp_path, "mt_bench", max_new_tokens=24, judge_max_new_tokens=48)
    out = tmp_path / "mt"
    args = ["eval", "mt-bench", "--model", "default", "--out", str(out), "--data", str(shared_data / "mt_bench"),
            "--config", str(config), "--limit", "2", "--engine", "hf"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert "LOCAL JUDGE" in results["judge_note"] and results["numbers"]["judgments"] == 4
    answers = [json.loads(line) for line in (out / "model_answer" / "default.jsonl").open()]
    assert len(answers) == 2 and all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    assert {"question_id", "answer_id", "model_id", "choices", "tstamp"} <= set(answers[0])
    judgment_file = next((out / "model_judgment").glob("*_single.jsonl"))
    judgments = [json.loads(line) for line in judgment_file.open()]
    assert sorted(j["turn"] for j in judgments) == [1, 1, 2, 2]
    assert {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn"} <= set(judgments[0])
    assert "local judge" in (out / "results.md").read_text()
    before = judgment_file.read_text()
    assert runner.invoke(app, args).exit_code == 0
    assert judgment_file.read_text() == before, "a rerun redoes nothing finished"


def test_alpaca_eval_pipeline_end_to_end(tmp_path, shared_data):
    config = _small_protocol(tmp_path, "alpaca_eval", max_new_tokens=24)
    out = tmp_path / "ae"
    result = runner.invoke(app, ["eval", "alpaca-eval", "--model", "default", "--out", str(out), "--data",
                                 str(shared_data / "alpaca_eval"), "--config", str(config), "--limit", "3",
                                 "--engine", "hf"])
    assert result.exit_code == 0, result.output
    numbers = json.loads((out / "results.json").read_text())["numbers"]
    assert numbers["n_total"] == 3 and 0 <= numbers["win_rate"] <= 100
    outputs = json.loads((out / "model_outputs.json").read_text())
    assert len(outputs) == 3 and set(outputs[0]) == {"instruction", "output", "generator", "dataset"}
    annotations = [json.loads(line) for line in (out / "annotations.jsonl").open()]
    assert all(0.0 <= a["preference"] <= 1.0 for a in annotations)

    results = json.loads((out / "results.json").read_text())
    assert results["numbers"]["length_controlled_win_rate"] is None
    assert "instruction_difficulty.csv not found" in results["settings"]["length_controlled"]

    # The same run with alpaca_eval's difficulty table beside the data (a synthetic one: the real table is hub-only):
    # the finished answers and judgments are reused and the length-controlled win rate is fitted.
    data = tmp_path / "ae_data"
    data.mkdir()
    for name in ("reference_outputs", "evaluators_configs", "instructions_805.jsonl"):
        (data / name).symlink_to(shared_data / "alpaca_eval" / name)
    (data / "instruction_difficulty.csv").write_text(
        "index,instruction_difficulty\n" + "".join(f"{i},{math.sin(i):.6f}\n" for i in range(805)))
    answers_before = (out / "outputs.jsonl").read_text()
    result = runner.invoke(app, ["eval", "alpaca-eval", "--model", "default", "--out", str(out), "--data", str(data),
                                 "--config", str(config), "--limit", "3", "--engine", "hf"])
    assert result.exit_code == 0, result.output
    assert (out / "outputs.jsonl").read_text() == answers_before
    results = json.loads((out / "results.json").read_text())
    assert 0 < results["numbers"]["length_controlled_win_rate"] < 100
    assert results["settings"]["length_controlled"]["regularized_to_gamed_baselines"] is False
    assert set(results["settings"]["length_controlled"]["weights"]) == {
        "np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)"}
    assert "length_controlled_win_rate" in (out / "results.md").read_text()

    compare = runner.invoke(app, ["eval", "compare", str(out), str(out)])
    assert compare.exit_code == 0 and "win_rate" in compare.output


def test_gsm8k_cli_on_local_slice(tmp_path, shared_data):
    data = tmp_path / "slice.jsonl"
    data.write_text("".join((shared_data / "gsm8k" / "train.jsonl").read_text().splitlines(keepends=True)[:3]))
    config = _small_protocol(tmp_path, "gsm8k", generation={"temperature": 0.0, "max_new_tokens": 32, "stop": []})
    out = tmp_path / "g"
    result = runner.invoke(app, ["eval", "gsm8k", "--model", "default", "--out", str(out), "--data", str(data),
                                 "--config", str(config), "--engine", "hf"])
    assert result.exit_code == 0, result.output
    numbers = json.loads((out / "results.json").read_text())["numbers"]
    assert numbers["n"] == 3 and set(numbers) >= {"strict-match", "flexible-extract", "strict-match_stderr",
                                                  "flexible-extract_stderr"}
    items = [json.loads(line) for line in (out / "samples_gsm8k.jsonl").read_text().splitlines()]
    assert [i["doc_id"] for i in items] == [0, 1, 2]
    assert sum(i["exact_match,flexible-extract"] for i in items) / 3 == pytest.approx(numbers["flexible-extract"])
    assert "wrote " in result.output and "samples_gsm8k.jsonl" in result.output and "strict-match_stderr" not in \
        result.output and "±" in result.output  # one line of numbers with their standard errors
    # lm-eval's knobs: 2 of the 8 exemplars as a multi-turn chat, a shorter generation, smaller steps
    again = runner.invoke(app, ["eval", "gsm8k", "--model", "default", "--out", str(tmp_path / "g2"), "--data",
                                str(data), "--config", str(config), "--engine", "hf", "--num-fewshot", "2",
                                "--max-new-tokens", "8", "--batch-size", "2"])
    assert again.exit_code == 0, again.output
    settings = json.loads((tmp_path / "g2" / "results.json").read_text())["settings"]["protocol"]
    assert settings["style"] == "fewshot_cot" and len(settings["fewshot_exemplars"]) == 2
    assert settings["generation"]["max_new_tokens"] == 8 and settings["batch_size"] == 2


def test_evaluators_answer_with_the_selected_sample(tmp_path, shared_data, tiny_model_path):
    """--select mbr: each answer is the MBR choice among --n samples (checked against the samples' own chrF MBR
    scores), written under a file name of its own so it never resumes plain answers; the settings record it."""
    from selfalign.evaluation.run import _answers
    from selfalign.generation import SamplingSettings, get_engine
    from selfalign.judging.mbr import mbr_scores, metric_utility
    from selfalign.selection import SelectConfig, make_selector

    config = SelectConfig(method="mbr", n=3, temperature=1.0)
    engine = get_engine("hf", tiny_model_path, seed=5)
    chats = [[{"role": "user", "content": "Say hi."}], [{"role": "user", "content": "Count to three."}]]
    settings = SamplingSettings(temperature=0.0, max_new_tokens=8, seed=5)
    chosen = _answers(engine, chats, settings, (config, make_selector(config, tiny_model_path)[0]))
    again = get_engine("hf", tiny_model_path, seed=5)  # the same seeded samples, to check the choice against
    from selfalign.records import PromptRecord

    samples = again.generate([PromptRecord(id=str(i), messages=c) for i, c in enumerate(chats)],
                             settings.model_copy(update={"n": 3, "temperature": 1.0}))
    for i, text in enumerate(chosen):
        group = [s.text for s in samples if s.prompt_id == str(i)]
        scores = mbr_scores(group, metric_utility("chrf"), 8)
        assert text == group[scores.index(max(scores))]

    data = tmp_path / "slice.jsonl"
    data.write_text("".join((shared_data / "gsm8k" / "train.jsonl").read_text().splitlines(keepends=True)[:2]))
    protocol = _small_protocol(tmp_path, "gsm8k", generation={"temperature": 0.0, "max_new_tokens": 16, "stop": []})
    out = tmp_path / "g"
    result = runner.invoke(app, ["eval", "gsm8k", "--model", tiny_model_path, "--out", str(out), "--data", str(data),
                                 "--config", str(protocol), "--engine", "hf", "--select", "mbr", "--n", "2"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["select"]["method"] == "mbr" and results["numbers"]["n"] == 2
    assert (out / f"outputs.{SelectConfig(method='mbr', n=2).tag()}.jsonl").exists()
    assert not (out / "outputs.jsonl").exists()
    bad = runner.invoke(app, ["eval", "gsm8k", "--model", tiny_model_path, "--out", str(out), "--n", "2"])
    assert bad.exit_code == 2 and "give --select too" in bad.output
