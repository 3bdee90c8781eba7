import pytest
from pydantic import ValidationError

from selfalign.judging.scorers import JudgeConfig
from selfalign.judging.self_consistency import score_self_consistency
from selfalign.pairs import PairOptions, build_preferences
from selfalign.records import Message, Sample, ScoredSample

MESSAGES = [Message(role="user", content="q")]


def _samples(prompt_id, texts):
    return [Sample(prompt_id=prompt_id, sample_index=i, messages=MESSAGES, text=t, num_tokens=5, finish_reason="stop")
            for i, t in enumerate(texts)]


def test_scpo_threshold_and_weights():
    samples = (_samples("p1", ["The answer is 4", "The answer is 4", "The answer is 4", "The answer is 5",
                               "no idea", "The answer is 4.0", "The answer is 6", "The answer is 5"])
               + _samples("p2", ["The answer is 1", "The answer is 2", "The answer is 3", "The answer is 3"])
               + _samples("p3", ["The answer is 9", "The answer is 9", "The answer is 9"]))
    scored = score_self_consistency(samples)
    p1 = [s for s in scored if s.prompt_id == "p1"]
    assert [s.votes for s in p1] == [4, 4, 4, 2, 0, 4, 1, 2]
    assert p1[4].score is None and p1[0].score == 0.5

    records, report = build_preferences(scored, PairOptions(mode="scpo", vote_threshold=3))
    assert [r.prompt_id for r in records] == ["p1"]  # p2's top answer has 2 votes < tau=3; p3 is unanimous
    pair = records[0]
    assert pair.chosen[0].content == "The answer is 4" and pair.rejected[0].content == "no idea"
    assert pair.weight == (4 - 0) / 8
    assert report["dropped_below_vote_threshold"] == 1 and report["dropped_votes_tied"] == 1

    records, _ = build_preferences(scored, PairOptions(mode="scpo", vote_threshold=3, reject_unanswered=False))
    assert records[0].rejected[0].content == "The answer is 6" and records[0].weight == (4 - 1) / 8


def test_strict_votes_only_finished_explicit_answers_and_shortest_chosen():
    texts = ["so 3 + 4 = 7 and then 8", "Adding: 3 + 4 = 7. The answer is 7", "The answer is 7", "it is 8",
             "The answer is 8", "The answer is \\boxed{7}", "First 3 + 4 = 7, then again 7 + 1 = 8 ... The answer is 7"]
    samples = _samples("p", texts)
    samples[1] = samples[1].model_copy(update={"num_tokens": 12})
    samples[6] = samples[6].model_copy(update={"num_tokens": 30, "finish_reason": "length"})
    loose = score_self_consistency(samples)
    assert [s.answer for s in loose] == ["8", "7", "7", "8", "8", "7", "7"]
    strict = score_self_consistency(samples, strict=True)
    # bare last numbers and the sample cut at the token limit abstain: 3 votes for 7, 1 for 8
    assert [s.answer for s in strict] == [None, "7", "7", None, "8", "7", None]
    assert [s.votes for s in strict] == [0, 3, 3, 0, 1, 3, 0]

    first, _ = build_preferences(strict, PairOptions(mode="scpo", vote_threshold=3))
    assert first[0].chosen[0].content == texts[1] and first[0].rejected[0].content == texts[0]
    assert first[0].weight == 3 / 7
    shortest, _ = build_preferences(strict, PairOptions(mode="scpo", vote_threshold=3, chosen_pick="shortest"))
    assert shortest[0].chosen[0].content == "The answer is 7"  # 5 tokens, finished, of the top answer


def test_strict_answers_only_with_votes():
    assert JudgeConfig(strict_answers=True).strict_answers
    with pytest.raises(ValidationError, match="strict_answers"):
        JudgeConfig(scorer="mbr", strict_answers=True)


def _scored(prompt_id, texts_scores):
    return [ScoredSample(prompt_id=prompt_id, sample_index=i, messages=MESSAGES, text=t, num_tokens=5,
                         finish_reason="stop", score=s) for i, (t, s) in enumerate(texts_scores)]


def test_pairs_drop_ties_duplicates_small_margins_and_long_chosen():
    scored = (_scored("tie", [("a", 5.0), ("b", 5.0)])
              + _scored("dup", [("same", 9.0), ("same", 2.0)])
              + _scored("close", [("x", 5.0), ("y", 4.5)])
              + _scored("long", [("a very long padded answer " * 5, 9.0), ("short", 2.0)])
              + _scored("ok", [("good", 8.0), ("bad", 2.0), ("meh", 5.0), ("none", None)]))
    records, report = build_preferences(scored, PairOptions(mode="pairs", min_margin=1.0, max_length_ratio=3.0,
                                                            max_pairs_per_prompt=2))
    assert [(r.prompt_id, r.chosen[0].content, r.rejected[0].content) for r in records] == [
        ("ok", "good", "bad"), ("ok", "good", "meh")]
    assert records[0].chosen_score == 8.0 and records[0].rejected_score == 2.0
    assert records[0].prompt[0].content == "q" and records[0].chosen[0].role == "assistant"
    assert report["dropped_all_tied"] == 1
    assert report["pairs_dropped_identical_texts"] == 1
    assert report["pairs_dropped_small_margin"] >= 1
    assert report["pairs_dropped_length_guard"] == 1
    assert report["samples_unscored"] == 1
    assert report["prompts_kept"] == 1 and report["prompts_dropped"] == 4


def test_ranked_lists_sorted_by_score_without_duplicates():
    scored = _scored("p", [("b", 2.0), ("a", 7.0), ("c", None), ("a", 1.0), ("d", 4.0)])
    records, report = build_preferences(scored, PairOptions(mode="lists"))
    assert records[0].scores == [7.0, 4.0, 2.0]
    assert [c[0].content for c in records[0].completions] == ["a", "d", "b"]
    assert report["samples_dropped_identical_texts"] == 1 and report["samples_unscored"] == 1


def test_singles_from_votes_label_majority_desirable_and_mask_unclear_prompts():
    samples = (_samples("p1", ["The answer is 4", "The answer is 4", "The answer is 4", "The answer is 5",
                               "no idea", "The answer is 4.0", "The answer is 6", "The answer is 5"])
               + _samples("p2", ["The answer is 1", "The answer is 2", "The answer is 3", "The answer is 3"])
               + _samples("p3", ["no", "nothing", "none"]))
    records, report = build_preferences(score_self_consistency(samples), PairOptions(mode="singles", vote_threshold=3))
    assert [r.prompt_id for r in records] == ["p1"] * 8  # p2: top answer 2 votes < 3; p3: no answers
    assert [r.label for r in records] == [True, True, True, False, False, True, False, False]
    assert [r.reward for r in records] == [0.5, 0.5, 0.5, 0.25, 0.0, 0.5, 0.125, 0.25]
    assert records[0].completion[0].content == "The answer is 4" and records[0].prompt == MESSAGES
    assert report["desirable"] == 4 and report["undesirable"] == 4 and report["balanced_desirable_weight"] == 1.0
    assert report["dropped_below_vote_threshold"] == 1 and report["dropped_no_answers"] == 1


def test_singles_from_judge_scores_split_at_the_prompt_mean():
    scored = (_scored("a", [("x", 9.0), ("y", 5.0), ("z", 7.0), ("w", 1.0)])  # mean 5.5
              + _scored("b", [("u", 4.0), ("v", 4.0)]) + _scored("c", [("s", 6.0), ("t", None), ("q", 2.0)]))
    records, report = build_preferences(scored, PairOptions(mode="singles"))
    assert [(r.completion[0].content, r.label, r.reward) for r in records] == [
        ("x", True, 9.0), ("y", False, 5.0), ("z", True, 7.0), ("w", False, 1.0), ("s", True, 6.0), ("q", False, 2.0)]
    assert report["dropped_all_tied"] == 1 and report["samples_unscored"] == 1


def test_singles_with_both_classes_empty_is_an_error():
    import pytest

    from selfalign.pairs import PairsError

    scored = score_self_consistency(_samples("p", ["a", "b", "c"]))  # no answers anywhere
    with pytest.raises(PairsError, match="no desirable and no undesirable"):
        build_preferences(scored, PairOptions(mode="singles"))
