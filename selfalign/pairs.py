"""Turn scored samples into preference data: pairs (TRL's conversational format), ScPO pairs, ranked lists, or
single labeled and rewarded completions (KTO, DRO).

Every drop is counted by reason in a report, so a user can see why a prompt gave no pair.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from selfalign.errors import SelfAlignError
from selfalign.records import Message, PreferencePair, RankedList, ScoredSample, SingleCompletion, group_by_prompt


class PairsError(SelfAlignError, ValueError):
    """Pair options that cannot select anything from these scored samples."""


class PairOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["pairs", "scpo", "lists", "singles"] = "pairs"
    min_margin: float = Field(0.0, ge=0, description="pairs: least score difference kept (ties are always dropped)")
    vote_threshold: int = Field(1, ge=1, description="scpo and singles with votes: keep a prompt only if its top "
                                "answer has at least this many votes (tau)")
    max_pairs_per_prompt: int = Field(1, ge=1, description="the most records one prompt gives")
    max_length_ratio: float | None = Field(None, gt=1.0, description="drop pairs whose chosen is this many times "
                                           "longer than the rejected (a guard against judges that reward length)")
    reject_unanswered: bool = Field(True, description="scpo: a sample with no answer (0 votes) may be rejected")
    chosen_pick: Literal["first", "shortest"] = Field("first", description="scpo: which sample of the top answer is "
                                                      "chosen: the first sampled, or the shortest one that finished "
                                                      "(concise; the rejected then differs mostly in its answer or "
                                                      "its rambling)")
    drop_identical: bool = Field(True, description="drop a pair whose chosen and rejected texts are the same (lists: "
                                 "a text seen earlier in the list)")


def _assistant(text: str) -> list[Message]:
    return [Message(role="assistant", content=text)]


def _length_ratio(chosen: str, rejected: str) -> float:
    return max(len(chosen), 1) / max(len(rejected), 1)


def make_pair(chosen: ScoredSample, rejected: ScoredSample, weight: float, chosen_score, rejected_score):
    """One preference record in TRL's conversational form, with the sampler's log-probs where both sides have them."""
    return PreferencePair(prompt=chosen.messages, chosen=_assistant(chosen.text), rejected=_assistant(rejected.text),
                          prompt_id=chosen.prompt_id, weight=weight, chosen_score=chosen_score,
                          rejected_score=rejected_score, **_sampler_reference(chosen, rejected))


def _sampler_reference(chosen: ScoredSample, rejected: ScoredSample) -> dict:
    """The samples' recorded log-probs and tokens, carried into the pair when both have them."""
    if any(s.logprob is None or s.token_ids is None for s in (chosen, rejected)):
        return {}
    return {"ref_chosen_logps": chosen.logprob, "ref_rejected_logps": rejected.logprob,
            "chosen_token_ids": chosen.token_ids, "rejected_token_ids": rejected.token_ids}


def _guard(chosen: ScoredSample, rejected: ScoredSample, options: PairOptions) -> str | None:
    """The reason to drop this pair, or None to keep it."""
    if options.drop_identical and chosen.text.strip() == rejected.text.strip():
        return "identical_texts"
    if options.max_length_ratio and _length_ratio(chosen.text, rejected.text) > options.max_length_ratio:
        return "length_guard"
    return None


def _score_pairs(group: list[ScoredSample], options: PairOptions, report: Counter) -> list[PreferencePair]:
    rated = [s for s in group if s.score is not None]
    report["samples_unscored"] += len(group) - len(rated)
    candidates = sorted(((a, b) for a in rated for b in rated if a.score > b.score),
                        key=lambda ab: (ab[1].score - ab[0].score, ab[0].sample_index, ab[1].sample_index))
    if not candidates:
        report["dropped_all_tied" if len(rated) >= 2 else "dropped_fewer_than_two_scored"] += 1
        return []
    kept = []
    for chosen, rejected in candidates:
        margin = chosen.score - rejected.score
        reason = "small_margin" if margin < options.min_margin else _guard(chosen, rejected, options)
        if reason:
            report[f"pairs_dropped_{reason}"] += 1
            continue
        kept.append(make_pair(chosen, rejected, 1.0, chosen.score, rejected.score))
        if len(kept) == options.max_pairs_per_prompt:
            break
    return kept


def _scpo_pairs(group: list[ScoredSample], options: PairOptions, report: Counter) -> list[PreferencePair]:
    """ScPO: chosen = a sample of the most-voted answer, rejected = one of the least-voted; w = (V+ - V-)/k."""
    k = len(group)
    answered = [s for s in group if s.answer is not None]
    if not answered:
        report["dropped_no_answers"] += 1
        return []
    top_votes = max(s.votes for s in answered)
    if top_votes < options.vote_threshold:
        report["dropped_below_vote_threshold"] += 1
        return []
    pool = group if options.reject_unanswered else answered
    low_votes = min(s.votes or 0 for s in pool)
    if low_votes == top_votes:
        report["dropped_votes_tied"] += 1
        return []
    chosen_pool = [s for s in answered if s.votes == top_votes]
    if options.chosen_pick == "shortest":
        chosen_pool.sort(key=lambda s: (s.finish_reason != "stop", s.num_tokens, s.sample_index))
    rejected_pool = [s for s in pool if (s.votes or 0) == low_votes]
    kept = []
    for chosen in chosen_pool:
        for rejected in rejected_pool:
            reason = _guard(chosen, rejected, options)
            if reason:
                report[f"pairs_dropped_{reason}"] += 1
                continue
            kept.append(make_pair(chosen, rejected, (top_votes - low_votes) / k, top_votes / k, low_votes / k))
            report["vote_margin_sum"] += top_votes - low_votes
            if len(kept) == options.max_pairs_per_prompt:
                return kept
    return kept


def _ranked_list(group: list[ScoredSample], options: PairOptions, report: Counter) -> list[RankedList]:
    rated, seen = [], set()
    for s in sorted(group, key=lambda s: -(s.score if s.score is not None else float("-inf"))):
        if s.score is None:
            report["samples_unscored"] += 1
        elif options.drop_identical and s.text.strip() in seen:
            report["samples_dropped_identical_texts"] += 1
        else:
            seen.add(s.text.strip())
            rated.append(s)
    if len({s.score for s in rated}) < 2:
        report["dropped_all_tied" if len(rated) >= 2 else "dropped_fewer_than_two_scored"] += 1
        return []
    recorded = all(s.logprob is not None and s.token_ids is not None for s in rated)
    return [RankedList(prompt=rated[0].messages, completions=[_assistant(s.text) for s in rated],
                       scores=[s.score for s in rated], prompt_id=rated[0].prompt_id,
                       ref_logps=[s.logprob for s in rated] if recorded else None,
                       completion_token_ids=[s.token_ids for s in rated] if recorded else None)]


def _singles(group: list[ScoredSample], options: PairOptions, report: Counter) -> list[SingleCompletion]:
    """Every sample of a kept prompt as one record with a label (KTO) and a reward (DRO).

    With votes (self-consistency): a prompt whose top answer has fewer than `vote_threshold` votes has no clear
    majority and is dropped whole; samples of the top answer are desirable, minority and answerless ones undesirable;
    the reward is the vote share (0 without an answer). With other scores (a judge, a reward model): desirable above
    the prompt's mean score, undesirable below, a sample at the mean is dropped; the reward is the score. Unscored
    samples are dropped.
    """
    if any(s.votes is not None for s in group):
        answered = [s for s in group if s.answer is not None]
        top_votes = max((s.votes for s in answered), default=0)
        if top_votes < options.vote_threshold:
            report["dropped_below_vote_threshold" if answered else "dropped_no_answers"] += 1
            return []
        labeled = [(s, s.answer is not None and s.votes == top_votes, s.score or 0.0) for s in group]
    else:
        rated = [s for s in group if s.score is not None]
        report["samples_unscored"] += len(group) - len(rated)
        if len({s.score for s in rated}) < 2:
            report["dropped_all_tied" if len(rated) >= 2 else "dropped_fewer_than_two_scored"] += 1
            return []
        mean = sum(s.score for s in rated) / len(rated)
        report["samples_dropped_at_mean"] += sum(s.score == mean for s in rated)
        labeled = [(s, s.score > mean, s.score) for s in rated if s.score != mean]
    records = []
    for sample, desirable, reward in labeled:
        report["desirable" if desirable else "undesirable"] += 1
        recorded = sample.logprob is not None and sample.token_ids is not None
        records.append(SingleCompletion(prompt=sample.messages, completion=_assistant(sample.text),
                                        prompt_id=sample.prompt_id, label=desirable, reward=reward,
                                        ref_logps=sample.logprob if recorded else None,
                                        completion_token_ids=sample.token_ids if recorded else None))
    return records


def build_preferences(scored: list[ScoredSample], options: PairOptions) -> tuple[list, dict]:
    """Group by prompt, build records by `options.mode`, and report counts of what was kept and dropped."""
    by_prompt = group_by_prompt(scored)
    largest = max((len(group) for group in by_prompt.values()), default=0)
    if options.mode in ("scpo", "singles") and options.vote_threshold > largest:
        raise PairsError(f"vote_threshold {options.vote_threshold} is more than the {largest} samples per prompt: no "
                         "prompt can reach it")
    builder = {"pairs": _score_pairs, "scpo": _scpo_pairs, "lists": _ranked_list, "singles": _singles}[options.mode]
    report: Counter = Counter()
    records = []
    for group in by_prompt.values():
        built = builder(sorted(group, key=lambda s: s.sample_index), options, report)
        report["prompts_kept" if built else "prompts_dropped"] += 1
        records.extend(built)
    summary = {"mode": options.mode, "prompts": len(by_prompt), "records": len(records), **dict(sorted(report.items()))}
    if options.mode == "scpo" and records:
        summary["mean_vote_margin"] = summary.pop("vote_margin_sum") / len(records)
        summary["mean_weight"] = sum(r.weight for r in records) / len(records)
    if options.mode == "singles":
        desirable = summary.setdefault("desirable", 0)
        undesirable = summary.setdefault("undesirable", 0)
        if desirable == 0 and undesirable == 0 and by_prompt:
            raise PairsError("no desirable and no undesirable completions: every prompt was dropped "
                             f"({ {k: v for k, v in summary.items() if k.startswith('dropped')} })")
        # KTO's paper keeps λ_D n_D / (λ_U n_U) in [1, 4/3]; this λ_D (with λ_U = 1) puts it at 1.
        summary["balanced_desirable_weight"] = round(undesirable / desirable, 3) if desirable else None
    return records, summary
