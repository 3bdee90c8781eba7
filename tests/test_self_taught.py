"""Self-Taught Evaluator: verdict parsing, kept-vs-rejected verdict pairs, judge accuracy and position consistency by
hand, contrasting pairs and verdicts from a real model, and `selfalign judge-train` end to end (slow)."""

import json
import subprocess
import sys

import pytest

from selfalign.judging.prompts import parse_letter_verdict
from selfalign.judging.self_taught import (ContrastPair, SelfTaughtConfig, Verdict, build_contrast_pairs,
                                           judge_accuracy, judge_verdicts, verdict_pairs)
from selfalign.records import Message, PromptRecord


@pytest.mark.parametrize("text, expected", [("A", "A"), ("[B]", "B"), ("The better choice is A.", "A"),
                                            ("Verdict: [[B]]", "B"), ("A or B?", None), ("Here is the answer:", None),
                                            ("[[C]]", "tie")])
def test_letter_verdicts(text, expected):
    assert parse_letter_verdict(text) == expected


def _verdict(pid, better_first, verdict):
    right = verdict == ("A" if better_first else "B")
    return Verdict(prompt_id=pid, better_first=better_first, messages=[Message(role="user", content=f"judge {pid}")],
                   text=f"[[{verdict}]]" if verdict else "?", verdict=verdict, correct=right)


def test_verdict_pairs_keep_a_right_against_a_wrong_verdict():
    verdicts = ([_verdict("p", True, "A"), _verdict("p", True, "B"), _verdict("p", True, None)]   # mixed: a pair
                + [_verdict("p", False, "B"), _verdict("p", False, "B")]                        # all right: none
                + [_verdict("q", True, "B"), _verdict("q", True, None)])                        # all wrong: none
    records, report = verdict_pairs(verdicts, seed=0)
    assert len(records) == 1 and records[0].prompt_id == "p|AB"
    assert records[0].chosen[0].content == "[[A]]" and records[0].rejected[0].content in ("[[B]]", "?")
    assert report["dropped_all_right"] == 1 and report["dropped_all_wrong"] == 1 and report["verdicts_right"] == 3


def test_judge_accuracy_and_position_consistency_by_hand():
    verdicts = ([_verdict("1", True, "A"), _verdict("1", False, "B")]     # right twice, consistent
                + [_verdict("2", True, "A"), _verdict("2", False, "A")]   # always A: one right, inconsistent
                + [_verdict("3", True, None), _verdict("3", False, "B")])  # an abstention counts as wrong
    result = judge_accuracy(verdicts)
    assert result["pairs"] == 3 and result["accuracy"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert result["position_consistency"] == pytest.approx(1 / 3) and result["abstained"] == pytest.approx(1 / 6)
    low, high = result["accuracy_ci95"]
    assert low <= result["accuracy"] <= high


def test_contrast_pairs_and_verdicts_from_a_real_model(tiny_model_path):
    from selfalign.generation import get_engine

    engine = get_engine("hf", tiny_model_path)
    prompts = [PromptRecord(id="a", prompt="Name a fruit."), PromptRecord(id="b", prompt="Name a color.")]
    pairs = build_contrast_pairs(engine, prompts, SelfTaughtConfig(answer_max_new_tokens=12))
    for pair in pairs:
        assert pair.better != pair.worse and pair.modified_question != pair.question
    pairs = pairs or [ContrastPair(prompt_id="x", question="Name a fruit.", modified_question="Name a vegetable.",
                                   better="Apple.", worse="Carrot.")]
    verdicts = judge_verdicts(engine, pairs, 3, 0.8, 6, reasoning=False)
    assert len(verdicts) == len(pairs) * 2 * 3
    assert {v.better_first for v in verdicts} == {True, False}
    for v in verdicts:
        assert v.correct == (v.verdict == ("A" if v.better_first else "B"))
        shown = v.messages[-1].content
        first, second = (pairs[0].better, pairs[0].worse) if v.better_first else (pairs[0].worse, pairs[0].better)
        if v.prompt_id == pairs[0].prompt_id:
            assert shown.index(first) < shown.index(second), "the better answer is A exactly when better_first"


@pytest.mark.slow
def test_judge_train_end_to_end_on_the_default_model(tmp_path):
    from selfalign.arithmetic import make_splits

    train, _ = make_splits(10, 0, seed=4)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in train))
    config = tmp_path / "self_taught.yaml"
    config.write_text("heldout: 4\nverdicts: 8\nreasoning: false\nverdict_max_new_tokens: 6\n"
                      "answer_max_new_tokens: 32\n")
    out = tmp_path / "judge"
    cmd = [sys.executable, "-m", "selfalign.cli", "judge-train", "--prompts", str(prompts), "--out", str(out),
           "--config", str(config), "--engine", "hf", "--set", "max_steps=2", "--set", "per_device_train_batch_size=2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["iterations"]) == {"0", "1"} and summary["heldout"] == 4
    for row in summary["iterations"].values():
        assert 0 <= row["accuracy"] <= 1 and row["pairs"] == 4
    assert summary["iterations"]["1"]["train_records"] >= 1
    assert (out / "iter_01" / "merged" / "model.safetensors").exists()
    assert "judge 1: accuracy" in result.stdout + result.stderr
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # everything on disk: nothing redone
    assert rerun.returncode == 0 and json.loads((out / "summary.json").read_text()) == summary


def test_judge_train_reuses_its_folder_only_for_the_same_prompts_and_settings(tmp_path):
    from selfalign.judge_train import JudgeTrainError, check_fingerprint
    from selfalign.judging.self_taught import SelfTaughtConfig
    from selfalign.records import PromptRecord

    first = [PromptRecord(prompt="Write a haiku."), PromptRecord(prompt="Name a river.")]
    other = [PromptRecord(prompt="Write a limerick.")]
    cfg = SelfTaughtConfig(heldout=1)
    check_fingerprint(tmp_path, first, "default", cfg)
    (tmp_path / "contrast.jsonl").write_text("{}\n")
    (tmp_path / "iter_01").mkdir()
    check_fingerprint(tmp_path, first, "default", cfg)  # the same run: its files are kept for the rerun
    assert (tmp_path / "contrast.jsonl").exists()
    with pytest.raises(JudgeTrainError, match=r"other settings \(prompts_sha256: "):
        check_fingerprint(tmp_path, other, "default", cfg)
    with pytest.raises(JudgeTrainError, match="settings.verdicts"):
        check_fingerprint(tmp_path, first, "default", cfg.model_copy(update={"verdicts": 2}))
    assert (tmp_path / "contrast.jsonl").exists(), "a refusal touches nothing"
    check_fingerprint(tmp_path, other, "default", cfg, force=True)
    assert not (tmp_path / "contrast.jsonl").exists() and not (tmp_path / "iter_01").exists()
    (tmp_path / "fingerprint.json").unlink()
    (tmp_path / "contrast.jsonl").write_text("{}\n")
    with pytest.raises(JudgeTrainError, match="no fingerprint"):
        check_fingerprint(tmp_path, other, "default", cfg)
