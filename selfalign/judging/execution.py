"""Execution-grounded scoring: check what each sample claims by computing it, with no labels; then vote.

Self-consistency trusts the majority of a model's answers, which for a small model is mostly a confident error. This
scorer first checks each sample on its own and lets only the samples that pass vote:
- `check="equations"` (default): every `expression = value` the sample writes (and `<<a*b=c>>` annotations) is
  computed (`selfalign.judging.claims`). A sample passes when it finished, states its answer, makes at least one
  claim, every claim holds, with `grounded` every operand is a number of the question or an earlier true result,
  and with `answer_from_claims` its stated answer is the result of one of its true claims.
- `check="program"` (program-of-thought, Chen et al. 2022, arXiv:2211.12588; PAL, Gao et al. 2022,
  arXiv:2211.10435): the sample is a program; it runs in a bounded subprocess (`selfalign.judging.sandbox`) and
  the last number it prints is its answer. A program passes when it ran to the end and printed a number.
Then, as in self-consistency (ScPO), a passing sample's score is V(y)/k over the passing samples' answers; a sample
that fails the check gets no answer and no vote, so it can be rejected but never chosen.

With `cut_at_answer` (default), a text sample ends at its first stated answer ("The answer is N."): what a small
model writes after it (a second answer, more steps, rambling to the token limit) is cut, the sample counts as
finished, and its claims are those before the cut. The chosen completion then ends at its answer, which teaches the
policy to stop there. A cut sample's recorded log-prob no longer belongs to its text, so it is dropped (the trainer
then computes the reference itself) and its token count is scaled to the characters kept.

Each sample's `verdict` says why it passed or not (`verified`, `false_claim`, `ungrounded`, `no_claim`,
`unsupported_answer`, `unfinished`, `no_answer`, `refused`; for programs the sandbox's status), and the judge's
report counts them.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from selfalign.judging.answers import count_votes, explicit_answer, first_answer_end, last_number, normalize_number
from selfalign.judging.claims import check_claims, numbers_in
from selfalign.records import Sample, ScoredSample, group_by_prompt

Check = Literal["equations", "program"]


def _question(sample: Sample) -> str:
    return "\n".join(m.content for m in sample.messages if m.role != "assistant")


def cut_at_first_answer(sample: Sample) -> Sample:
    """The sample ending at its first stated answer (unchanged when it states none or ends there already)."""
    end = first_answer_end(sample.text)
    if end is None or not sample.text[end:].strip():
        return sample
    kept = sample.text[:end]
    return sample.model_copy(update={"text": kept, "finish_reason": "stop", "logprob": None, "token_ids": None,
                                     "num_tokens": max(1, round(sample.num_tokens * len(kept) / len(sample.text)))})


def equation_verdict(sample: Sample, grounded: bool = True, answer_from_claims: bool = True) -> tuple[str | None, str,
                                                                                                       list[str]]:
    """(answer if the sample passes else None, verdict, refusal reasons) for one text answer."""
    if sample.finish_reason != "stop":
        return None, "unfinished", []
    answer = explicit_answer(sample.text)
    if answer is None:
        return None, "no_answer", []
    check = check_claims(sample.text, numbers_in(_question(sample)))
    if not check.claims:
        return None, "no_claim", []
    if check.refusals:
        return None, "refused", check.refusals
    if check.false_claims:
        return None, "false_claim", []
    if grounded and not all(c.grounded for c in check.claims):
        return None, "ungrounded", []
    if answer_from_claims and normalize_number(answer) not in {normalize_number(str(float(v))) for v in check.results}:
        return None, "unsupported_answer", []
    return answer, "verified", []


def program_verdict(sample: Sample, timeout: float = 5.0) -> tuple[str | None, str, list[str]]:
    """(the printed answer if the program ran, else None; the sandbox's status; []) for one program answer."""
    from selfalign.judging.sandbox import extract_program, run_program

    program = extract_program(sample.text)
    if program is None:
        return None, "no_program", []
    result = run_program(program, timeout=timeout)
    if result.status != "ok":
        return None, f"program_{result.status}", []
    answer = last_number(result.stdout)
    return (answer, "verified", []) if answer is not None else (None, "program_no_output", [])


def score_execution(samples: list[Sample], check: Check = "equations", grounded: bool = True,
                    answer_from_claims: bool = True, cut_at_answer: bool = True, stats: Counter | None = None,
                    workers: int = 2) -> list[ScoredSample]:
    """Score prompt groups: each sample checked on its own, then votes among the samples that passed."""
    stats = stats if stats is not None else Counter()
    if check == "equations" and cut_at_answer:
        cut = [cut_at_first_answer(s) for s in samples]
        stats["samples_cut_at_answer"] += sum(a is not b for a, b in zip(cut, samples))
        samples = cut
    if check == "program":
        with ThreadPoolExecutor(max_workers=workers) as pool:  # each program is its own process
            verdicts = list(pool.map(program_verdict, samples))
    else:
        verdicts = [equation_verdict(s, grounded, answer_from_claims) for s in samples]
    by_sample = {(s.prompt_id, s.sample_index): v for s, v in zip(samples, verdicts)}
    scored = []
    for group in group_by_prompt(samples).values():
        checked = [by_sample[(s.prompt_id, s.sample_index)] for s in group]
        grouped, votes = count_votes([answer for answer, _, _ in checked])
        for sample, answer, (_, verdict, refusals) in zip(group, grouped, checked):
            stats[f"verdict_{verdict}"] += 1
            for reason in refusals:
                stats[f"refused_{reason}"] += 1
            vote_count = votes[answer] if answer is not None else 0
            scored.append(ScoredSample(**sample.model_dump(), answer=answer, votes=vote_count, num_samples=len(group),
                                       score=vote_count / len(group) if answer is not None else None,
                                       scorer=f"execution-{check}", verdict=verdict))
    return scored
