"""The execution-grounded verifier: the arithmetic evaluator, claim checking, the program sandbox, the scorer, and
the verifier diagnosis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from fractions import Fraction

import pytest

from selfalign.judging.claims import Refused, check_claims, find_claims, numbers_in, safe_eval
from selfalign.judging.execution import equation_verdict, score_execution
from selfalign.judging.sandbox import extract_program, run_program
from selfalign.pairs import PairOptions
from selfalign.records import Message, Sample
from selfalign.verifier_check import diagnose, wilson_interval

QUESTION = "Maria has 14 apples and gives away 8. How many apples are left?"


def sample(text: str, index: int = 0, prompt_id: str = "p", question: str = QUESTION, finish="stop") -> Sample:
    return Sample(prompt_id=prompt_id, sample_index=index, messages=[Message(role="user", content=question)],
                  text=text, num_tokens=len(text.split()), finish_reason=finish)


# ---- the evaluator ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("expression, value", [
    ("14 - 8", 6), ("9 * 7", 63), ("(3 + 4) * 2", 14), ("48 / 2", 24), ("7 / 2", Fraction(7, 2)), ("2 ** 10", 1024),
    ("-3 + 5", 2), ("17 // 5", 3), ("17 % 5", 2), ("0.1 + 0.2", Fraction(3, 10)),
])
def test_safe_eval_computes_exactly(expression, value):
    assert safe_eval(expression) == value


@pytest.mark.parametrize("expression, reason", [
    ("9**9**9", "too_large"),              # would build a 370-million-digit integer
    ("10**20", "too_large"),
    ("99999999999999999999999 + 1", "too_large"),
    ("1e300 * 1e300", "too_large"),
    ("__import__('os').system('true')", "disallowed"),
    ("open('/etc/passwd')", "disallowed"),
    ("(lambda: 1)()", "disallowed"),
    ("[1] * 10", "disallowed"),
    ("a + b", "disallowed"),
    ("2 ** 0.5", "disallowed"),
    ("1 / 0", "division_by_zero"),
    ("5 % 0", "division_by_zero"),
    ("0 ** -1", "division_by_zero"),
    ("(1" * 50, "syntax"),
    ("1 +" * 60 + "1", "too_long"),
])
def test_safe_eval_refuses_hostile_input_with_a_reason(expression, reason):
    started = time.perf_counter()
    with pytest.raises(Refused) as refusal:
        safe_eval(expression)
    assert refusal.value.reason == reason
    assert time.perf_counter() - started < 1.0  # refused, not computed: 9**9**9 would take minutes and gigabytes


# ---- claims ----------------------------------------------------------------------------------------------------

def test_claims_in_the_forms_models_write():
    text = "So 14 - 8 = 6 apples. Also 9 x 7 = 63, 9 × 7 = 63, $1,200 + $300 = $1,500 and <<48/2=24>>24."
    assert find_claims(text) == [("14 - 8", "6"), ("9 * 7", "63"), ("9 * 7", "63"), ("$1,200 + $300", "$1,500"),
                                 ("48/2", "24")]
    assert find_claims("x = 5 and the answer = 6") == []  # no operator: no claim


def test_claims_are_computed_and_grounded():
    given = numbers_in(QUESTION)
    true = check_claims("14 - 8 = 6", given)
    assert [c.holds for c in true.claims] == [True] and true.claims[0].grounded
    false = check_claims("14 - 8 = 8", given)
    assert false.false_claims == 1
    ungrounded = check_claims("20 - 8 = 12", given)  # true, but 20 is not in the question
    assert ungrounded.claims[0].holds and not ungrounded.claims[0].grounded
    chained = check_claims("14 - 8 = 6, then 6 * 2 = 12", numbers_in(QUESTION + " twice as many: 2"))
    assert all(c.holds and c.grounded for c in chained.claims)  # an earlier true result is a given operand
    rounded = check_claims("10 / 3 = 3.33", {Fraction(10), Fraction(3)})
    assert rounded.claims[0].holds  # correctly rounded to the decimals written
    assert not check_claims("10 / 3 = 3", {Fraction(10), Fraction(3)}).claims[0].holds
    refused = check_claims("9**9**9 = 1", given)
    assert refused.refusals == ["too_large"] and refused.false_claims == 0


@pytest.mark.parametrize("text, verdict, answer", [
    ("14 - 8 = 6. The answer is 6.", "verified", "6"),
    ("14 - 8 = 8. The answer is 8.", "false_claim", None),
    ("20 - 14 = 6. The answer is 6.", "ungrounded", None),
    ("She has 6 left. The answer is 6.", "no_claim", None),
    ("14 - 8 = 6. The answer is 7.", "unsupported_answer", None),
    ("14 - 8 = 6 apples left.", "no_answer", None),
    ("9**9**9 = 5. The answer is 5.", "refused", None),
])
def test_equation_verdicts_on_hand_written_samples(text, verdict, answer):
    got_answer, got_verdict, _ = equation_verdict(sample(text))
    assert (got_verdict, got_answer) == (verdict, answer)


def test_a_sample_cut_at_the_token_limit_never_passes():
    assert equation_verdict(sample("14 - 8 = 6. The answer is 6.", finish="length"))[1] == "unfinished"


def test_a_sample_ends_at_its_first_stated_answer():
    rambling = sample("14 - 8 = 6. The answer is 6.\n\nThe answer is 7 because 3 + 3 = 7 and", finish="length")
    rambling = rambling.model_copy(update={"logprob": -12.5, "token_ids": list(range(40)), "num_tokens": 40})
    [scored] = score_execution([rambling])
    assert (scored.verdict, scored.answer, scored.text) == ("verified", "6", "14 - 8 = 6. The answer is 6.")
    assert scored.finish_reason == "stop" and scored.logprob is None and scored.token_ids is None
    assert 0 < scored.num_tokens < 40
    [uncut] = score_execution([rambling], cut_at_answer=False)
    assert (uncut.verdict, uncut.text) == ("unfinished", rambling.text)
    finished = sample("14 - 8 = 6. The answer is 6.").model_copy(update={"logprob": -3.0, "token_ids": [1, 2]})
    assert score_execution([finished])[0].logprob == -3.0  # nothing cut: the sampler's reference stays


def test_votes_are_counted_among_checked_samples_only():
    texts = ["14 - 8 = 6. The answer is 6.",          # verified
             "14 - 8 = 6 so 6. The answer is 6.",     # verified
             "14 - 8 = 4. The answer is 4.",          # false claim
             "14 - 8 = 4. The answer is 4.",          # false claim: a confident wrong majority of 3
             "The answer is 4."]                       # no claim
    from collections import Counter

    stats = Counter()
    scored = score_execution([sample(t, i) for i, t in enumerate(texts)], stats=stats)
    assert [s.answer for s in scored] == ["6", "6", None, None, None]
    assert [s.votes for s in scored] == [2, 2, 0, 0, 0]
    assert scored[0].score == pytest.approx(2 / 5) and scored[2].score is None
    assert stats == Counter(verdict_verified=2, verdict_false_claim=2, verdict_no_claim=1)
    # the self-consistency majority would have chosen the wrong "4"
    from selfalign.judging.self_consistency import score_self_consistency

    assert max(score_self_consistency([sample(t, i) for i, t in enumerate(texts)]), key=lambda s: s.votes).answer == "4"


# ---- the sandbox -----------------------------------------------------------------------------------------------

def test_a_program_runs_and_its_printed_answer_is_read():
    result = run_program("a = 14\nb = 8\nprint(a - b)")
    assert (result.status, result.answer_text) == ("ok", "6")
    assert run_program("import math, fractions, random\nprint(math.gcd(12, 8))").answer_text == "4"


@pytest.mark.parametrize("program, status", [
    ("while True:\n    pass", "timeout"),
    ("import time\ntime.sleep(60)", "timeout"),
    ("print('x' * 10**7)", "output_limit"),
    ("x = [0] * (10**10)", "error"),                      # MemoryError under the address-space limit
    ("import socket", "refused"),
    ("import subprocess", "refused"),
    ("import ctypes", "refused"),
    ("__import__('shutil')", "refused"),
    ("import os\nos.system('true')", "refused"),
    ("import os\nos.fork()", "refused"),
    ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))", "refused"),  # root could raise them
    ("print(", "error"),
    ("raise SystemExit(3)", "error"),
])
def test_sandbox_limits(program, status):
    started = time.perf_counter()
    result = run_program(program, timeout=3, cpu_seconds=2)
    assert result.status == status, result
    assert time.perf_counter() - started < 10


def test_sandbox_touches_no_file(tmp_path):
    target = tmp_path / "written.txt"
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    for program in (f"open({str(target)!r}, 'w').write('x')", f"import os\nos.remove({str(keep)!r})",
                    f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
                    f"import os\nos.rename({str(keep)!r}, {str(target)!r})"):
        assert run_program(program).status == "refused", program
    assert not target.exists() and keep.read_text() == "mine"


def test_sandbox_kills_what_the_program_started(tmp_path):
    # A program that tries to outlive its timeout by forking is refused before it can; a hung one is killed with its
    # process group, so no process of it is left.
    marker = "selfalign-sandbox-orphan-check"
    result = run_program(f"import time\n# {marker}\ntime.sleep(60)", timeout=1)
    assert result.status == "timeout"
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.strip()
    assert left == ""


def test_program_extraction():
    assert extract_program("Here:\n```python\nprint(6)\n```\nThe answer is 6.") == "print(6)\n"
    assert extract_program("```\nprint(1)\n```") == "print(1)\n"
    assert extract_program("no code here") is None


def test_program_scorer_votes_among_programs_that_ran():
    texts = ["```python\nprint(14 - 8)\n```", "```python\nx = 14\nprint(x - 8)\n```", "```python\nprint(14 + 8)\n```",
             "```python\nwhile True: pass\n```", "The answer is 22."]
    from collections import Counter

    stats = Counter()
    scored = score_execution([sample(t, i) for i, t in enumerate(texts)], check="program", stats=stats)
    assert [s.answer for s in scored] == ["6", "6", "22", None, None]
    assert [s.votes for s in scored] == [2, 2, 1, 0, 0]
    assert stats["verdict_program_timeout"] == 1 and stats["verdict_no_program"] == 1


# ---- the diagnosis ---------------------------------------------------------------------------------------------

def test_wilson_interval():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) is None


def _groups(spec: dict[str, list[str]]) -> list[Sample]:
    return [sample(t, i, prompt_id=pid) for pid, texts in spec.items() for i, t in enumerate(texts)]


def test_diagnosis_on_a_tiny_set_with_known_answers():
    from selfalign.judging.self_consistency import score_self_consistency

    answers = {"a": "6", "b": "6", "c": "6"}
    samples = _groups({
        "a": ["14 - 8 = 6. The answer is 6."] * 2 + ["14 - 8 = 4. The answer is 4."] * 3,  # wrong majority
        "b": ["14 - 8 = 6. The answer is 6."] * 3 + ["The answer is 5."] * 2,             # right majority
        "c": ["I do not know."] * 5,                                                         # nothing to pick
    })
    options = PairOptions(mode="scpo", vote_threshold=2, chosen_pick="shortest")
    greedy = {"a": False, "b": False, "c": False}
    votes = diagnose(score_self_consistency(samples, strict=True), answers, options, greedy)
    assert (votes["prompts_kept"], votes["precision"], votes["coverage"]) == (2, 0.5, 2 / 3)
    assert votes["pick_accuracy"] == pytest.approx(1 / 3)
    assert votes["rejected_right"] == 0.5  # prompt a's pair rejects the right 6
    checked = diagnose(score_execution(samples), answers, options, greedy)
    assert (checked["prompts_kept"], checked["precision"], checked["rejected_right"]) == (2, 1.0, 0.0)
    assert checked["greedy_accuracy_kept"] == 0.0
    assert checked["sampled_accuracy_all"] == pytest.approx((2 / 5 + 3 / 5 + 0) / 3)


def test_diagnosis_verdicts():
    answers = {f"p{i}": "6" for i in range(30)}
    right = _groups({f"p{i}": ["14 - 8 = 6. The answer is 6."] * 3 + ["The answer is 2."] for i in range(30)})
    options = PairOptions(mode="scpo", vote_threshold=2)
    strong = diagnose(score_execution(right), answers, options, {p: False for p in answers})
    assert strong["verdict"] == "stronger", strong["explanation"]
    weak = diagnose(score_execution(right), answers, options, {p: True for p in answers})
    assert weak["verdict"] == "not stronger" and "NOT stronger" in weak["explanation"]
    nothing = diagnose(score_execution(_groups({"p0": ["hm"] * 4})), answers, options, None)
    assert nothing["verdict"] == "no signal"


def test_judge_command_runs_the_execution_scorer(tmp_path, cli_env):
    samples = tmp_path / "samples.jsonl"
    rows = [sample(t, i).model_dump() for i, t in enumerate(
        ["14 - 8 = 6. The answer is 6.", "14 - 8 = 5. The answer is 5.", "The answer is 5."])]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    run = subprocess.run([sys.executable, "-m", "selfalign.cli", "judge", "--samples", str(samples), "--out", str(out),
                          "--scorer", "execution"], capture_output=True, text=True, env=cli_env)
    assert run.returncode == 0, run.stderr
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["verdict"] for s in scored] == ["verified", "false_claim", "no_claim"]
    report = json.loads((tmp_path / "scored.report.json").read_text())
    assert report["scorer"] == "execution" and report["verdict_false_claim"] == 1
