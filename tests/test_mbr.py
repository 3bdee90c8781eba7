"""MBR consensus scoring and selection: hand-computed scores, the consensus pick, the reference cap, each utility
on real metric libraries and real models, and the CLI paths (judge --scorer mbr, generate --select, eval --select)."""

import json
import subprocess
import sys

import pytest

from selfalign.judging.mbr import EmbeddingUtility, judge_utility, mbr_scores, metric_utility, score_mbr, select_best
from selfalign.records import Message, Sample

QUESTION = [Message(role="user", content="Describe the cat.")]


def _samples(texts, prompt_id="p"):
    return [Sample(prompt_id=prompt_id, sample_index=i, messages=QUESTION, text=t, num_tokens=5, finish_reason="stop")
            for i, t in enumerate(texts)]


def test_chrf_mbr_scores_by_hand():
    """chrF of identical texts is 1 and of texts sharing no character is 0, so with samples (abc, abc, xyz):
    score(abc) = (1 + 0)/2, score(xyz) = (0 + 0)/2."""
    assert mbr_scores(["abc", "abc", "xyz"], metric_utility("chrf")) == [0.5, 0.5, 0.0]


def test_mbr_score_is_the_mean_utility_against_the_others():
    from sacrebleu import sentence_chrf

    texts = ["the cat sat on the mat", "a cat sat on a mat", "the dog ran in the park"]
    got = mbr_scores(texts, metric_utility("chrf"))
    for i, text in enumerate(texts):
        others = [sentence_chrf(text, [t]).score / 100 for j, t in enumerate(texts) if j != i]
        assert got[i] == pytest.approx(sum(others) / 2)


def test_reference_cap_uses_the_next_samples_cyclically():
    calls = []

    def utility(question, hypothesis, refs):
        calls.append((hypothesis, tuple(refs)))
        return [float(len(r)) for r in refs]

    scores = mbr_scores(["a", "bb", "ccc", "dddd"], utility, max_references=2)
    assert calls == [("a", ("bb", "ccc")), ("bb", ("ccc", "dddd")), ("ccc", ("dddd", "a")), ("dddd", ("a", "bb"))]
    assert scores == [2.5, 3.5, 2.5, 1.5]


# The first is one edit from each of the next three, which are two edits apart; the last shares nothing.
CONSENSUS = ["the cat sat on the mat", "a cat sat on the mat", "the cat sits on the mat", "the cat sat on a mat",
             "quantum chromodynamics describes gluons"]


@pytest.mark.parametrize("utility", ["chrf", "bleu", "rouge-l"])
def test_selection_picks_the_consensus_sample(utility):
    scored = score_mbr(_samples(CONSENSUS), metric_utility(utility), None, utility)
    assert [s.text for s in select_best(scored)] == [CONSENSUS[0]]
    assert min(scored, key=lambda s: s.score).text == CONSENSUS[4]
    assert all(s.scorer == f"mbr:{utility}" and 0 <= s.score <= 1 for s in scored)


def test_select_best_breaks_ties_by_order_and_puts_abstentions_last():
    from selfalign.records import ScoredSample

    rows = [ScoredSample(**s.model_dump(), score=score) for s, score in zip(_samples(["a", "b", "c"]), [None, 0.5, 0.5])]
    assert select_best(rows)[0].text == "b"


def test_embedding_utility_on_a_real_model(tiny_model_path):
    utility = EmbeddingUtility(tiny_model_path)
    same, other = utility("", "the cat sat on the mat", ["the cat sat on the mat", "quantum chromodynamics"])
    assert same == pytest.approx(1.0, abs=1e-5) and 0 <= other < same


def test_llm_judge_utility_with_a_local_judge(tiny_model_path):
    from selfalign.judging.backends import LocalJudge

    values = judge_utility(LocalJudge(tiny_model_path))("Describe the cat.", "A cat.", ["A dog.", "A cat."])
    assert len(values) == 2 and all(0 <= v <= 1 for v in values)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cli(*args, cwd=None):
    result = subprocess.run([sys.executable, "-m", "selfalign.cli", *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_judge_cli_with_the_mbr_scorer(tmp_path):
    samples = _write(tmp_path / "samples.jsonl", [s.model_dump() for s in _samples(CONSENSUS)])
    _cli("judge", "--samples", str(samples), "--out", str(tmp_path / "scored.jsonl"), "--scorer", "mbr",
         "--utility", "rouge-l", "--mbr-references", "2")
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [round(s["score"], 6) for s in scored] == [round(v, 6) for v in
                                                     mbr_scores(CONSENSUS, metric_utility("rouge-l"), 2)]


def test_generate_select_mbr_writes_one_chosen_sample_per_prompt(tmp_path, tiny_model_path):
    prompts = _write(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "Say hi."}, {"id": "b", "prompt": "Count."}])
    _cli("generate", "--prompts", str(prompts), "--out", str(tmp_path / "chosen.jsonl"), "--model", tiny_model_path,
         "--engine", "hf", "--n", "3", "--max-new-tokens", "8", "--select", "mbr")
    chosen = [json.loads(line) for line in (tmp_path / "chosen.jsonl").read_text().splitlines()]
    candidates = [json.loads(line) for line in (tmp_path / "chosen.candidates.jsonl").read_text().splitlines()]
    assert [c["prompt_id"] for c in chosen] == ["a", "b"] and len(candidates) == 6
    for c in chosen:
        group = [s["text"] for s in candidates if s["prompt_id"] == c["prompt_id"]]
        scores = mbr_scores(group, metric_utility("chrf"), 8)
        assert c["text"] == group[scores.index(max(scores))] and c["score"] == pytest.approx(max(scores))


def test_self_verify_selection_rates_with_the_policy(tmp_path, tiny_model_path):
    from selfalign.selection import SelectConfig, make_selector

    select, stats = make_selector(SelectConfig(method="self-verify"), tiny_model_path)
    chosen = select(_samples(["A cat.", "A small grey cat.", "No."]) + _samples(["x", "y"], prompt_id="q"))
    assert [c.prompt_id for c in chosen] == ["p", "q"]
    assert stats["rated"] + stats["abstained"] == 5


def test_eval_heldout_reports_the_selected_sample_accuracy(tmp_path, tiny_model_path):
    from selfalign.arithmetic import make_splits

    _, heldout = make_splits(8, 4, seed=3)
    data = _write(tmp_path / "heldout.jsonl", heldout)
    _cli("eval", "heldout", "--model", tiny_model_path, "--out", str(tmp_path / "eval.json"), "--data", str(data),
         "--k", "3", "--engine", "hf", "--select", "mbr", "--utility", "chrf")
    result = json.loads((tmp_path / "eval.json").read_text())
    assert 0 <= result["selected_mbr_accuracy"] <= result["pass_at_3"]
    assert len(result["selected_correct"]) == result["sampled_num_prompts"] == 4
    # per-prompt columns, for paired intervals of sampled and majority gains (benchmarks/efficacy.py)
    assert sum(result["sampled_correct"]) / 4 == pytest.approx(result["sampled_accuracy"])
    assert sum(result["majority_correct"]) / 4 == pytest.approx(result["majority_at_3"])
