"""Final-answer extraction and majority voting, as self-consistency (Wang et al. 2023) and ScPO use them."""

from __future__ import annotations

import re
from collections import Counter

_NUMBER = r"-?[$]?\s?\d[\d,]*(?:\.\d+)?"
_GSM8K = re.compile(r"####\s*(" + _NUMBER + ")")
_THE_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is[:\s]*\**\s*(" + _NUMBER + ")")
_ANY_NUMBER = re.compile(_NUMBER)


def normalize_number(text: str) -> str | None:
    """'$1,234.50' -> '1234.5', '12.0' -> '12', '-3' -> '-3'; None when no number is there."""
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if value == int(value):
        return str(int(value))
    return repr(value).rstrip("0").rstrip(".")


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, or None.

    Tried in order: GSM8K's `#### N`, "The answer is N", `\\boxed{...}`, then the last number in the text.
    Numbers are normalized (commas, `$`, trailing `.0`); a boxed non-number is kept as written for symbolic matching.
    """
    answer = explicit_answer(text)
    return answer if answer is not None else last_number(text)


def last_number(text: str) -> str | None:
    """The last number in the text, normalized (lm-eval-harness's flexible-extract)."""
    numbers = _ANY_NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def explicit_answer(text: str) -> str | None:
    """The answer only where the text states it (`#### N`, "The answer is N", `\\boxed{}`): no last-number guess."""
    answer = strict_answer(text)
    if answer is not None:
        return answer
    boxed = _boxed(text)
    return None if boxed is None else normalize_number(boxed) or boxed


def strict_answer(text: str) -> str | None:
    """Only the explicit formats (`#### N`, "The answer is N"), as lm-eval-harness's strict-match."""
    for pattern in (_GSM8K, _THE_ANSWER_IS):
        matches = pattern.findall(text)
        if matches:
            return normalize_number(matches[-1])
    return None


def first_answer_end(text: str) -> int | None:
    """Where the first explicit answer statement (`#### N`, "The answer is N") ends, its closing period included;
    None when the text states no answer."""
    matches = [m for pattern in (_GSM8K, _THE_ANSWER_IS) for m in [pattern.search(text)] if m]
    if not matches:
        return None
    end = min(m.end() for m in matches)
    return end + 1 if text[end:end + 1] == "." else end


def answer_state(text: str) -> str | None:
    """How far the first explicit answer statement has come, for stopping a sample there while it is written:
    None (no statement yet, or its number may still grow: "The answer is 14", "The answer is 1,"), `"point"` (the
    number is followed by "." alone: a decimal may follow, or the sentence is over) or `"done"` (anything else follows
    the number: "The answer is 14.\n", "The answer is 14 apples", "The answer is 6.5.")."""
    matches = [m for pattern in (_GSM8K, _THE_ANSWER_IS) for m in [pattern.search(text)] if m]
    if not matches:
        return None
    first = min(matches, key=lambda m: m.end())
    rest = text[first.end():]
    if not rest:
        return None
    return "point" if rest == "." and "." not in first.group(1) else "done"


def _equivalent(a: str, b: str) -> bool:
    """Symbolic equivalence through math-verify, for answers that are not plain numbers (fractions, expressions)."""
    if a == b:
        return True
    try:
        from math_verify import parse, verify

        return bool(verify(parse(f"${a}$"), parse(f"${b}$")))
    except Exception:  # math-verify raises on unparsable input; unparsable means not provably equal
        return False


def group_answers(answers: list[str | None]) -> list[str | None]:
    """Map each answer to its group's representative (the first equivalent answer seen). None stays None."""
    representatives: list[str] = []
    grouped = []
    for answer in answers:
        if answer is None:
            grouped.append(None)
            continue
        match = next((r for r in representatives if _same_answer(r, answer)), None)
        if match is None:
            representatives.append(answer)
            match = answer
        grouped.append(match)
    return grouped


def _same_answer(a: str, b: str) -> bool:
    if _is_number(a) and _is_number(b):  # normalized numbers: string equality is exact and cheap
        return a == b
    return _equivalent(a, b)


def _is_number(s: str) -> bool:
    return normalize_number(s) == s


def count_votes(answers: list[str | None]) -> tuple[list[str | None], Counter]:
    """Group equivalent answers and count votes V(y); samples without an answer cast no vote."""
    grouped = group_answers(answers)
    return grouped, Counter(a for a in grouped if a is not None)


def majority_answer(answers: list[str | None]) -> str | None:
    """The most-voted answer (ties broken by first appearance), None if no sample had an answer."""
    grouped, votes = count_votes(answers)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in grouped if a is not None and votes[a] == best)
