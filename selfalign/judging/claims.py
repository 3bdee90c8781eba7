"""Arithmetic claims a completion makes, checked by computing them: the label-free verifier of the execution scorer.

A small model is often confidently wrong, so a majority vote of its samples picks a wrong answer for most prompts.
What a sample *writes* can be checked, though: `16 - 5 = 8` is false whatever the model believes. This module finds
every `expression = value` claim in a text (and GSM8K's calculator annotations `<<48/2=24>>`), evaluates the
expression with a whitelisting evaluator, and says whether each claim holds and whether its operands come from the
question (or from the sample's own earlier, true results).

The evaluator never calls `eval`: it parses with `ast`, accepts only numbers, + - * / // % ** and parentheses,
computes with exact fractions, and refuses, with a reason, anything else or anything too large (`9**9**9`, a
200-digit number, a 100-node expression). A refusal is an unverifiable claim, never a crash or a hang.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

MAX_EXPRESSION_CHARS = 120
MAX_NODES = 40
MAX_DIGITS = 15  # operands and results: |x| < 10**15, the range GSM8K-style arithmetic lives in
_LIMIT = Fraction(10) ** MAX_DIGITS


class Refused(ValueError):
    """An expression the evaluator will not compute; `reason` is one word for the report's counts."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _bounded(value: Fraction) -> Fraction:
    if abs(value) >= _LIMIT or value.denominator >= _LIMIT:
        raise Refused("too_large", f"|result| must stay below 1e{MAX_DIGITS}")
    return value


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise Refused("disallowed", "fractional exponent")
    if base == 0 and exponent < 0:
        raise Refused("division_by_zero")
    magnitude = abs(base) if exponent > 0 else 1 / abs(base) if base else Fraction(0)
    # log10 of the result before computing it: 9**9**9 is refused without building a 370-million-digit integer.
    if magnitude > 1 and abs(int(exponent)) * math.log10(magnitude) >= MAX_DIGITS:
        raise Refused("too_large", "power result beyond the bound")
    return base ** int(exponent)


def _divide(a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise Refused("division_by_zero")
    return a / b


_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: _divide,
    ast.FloorDiv: lambda a, b: Fraction(math.floor(_divide(a, b))),
    ast.Mod: lambda a, b: a - b * math.floor(_divide(a, b)),
    ast.Pow: _power,
}


def safe_eval(expression: str) -> Fraction:
    """The exact value of an arithmetic expression, or `Refused` with a reason.

    >>> safe_eval("(48 / 2) * 3")
    Fraction(72, 1)
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise Refused("too_long", f"{len(expression)} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError):
        raise Refused("syntax") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise Refused("too_long", "too many operations")
    return _bounded(_evaluate(tree.body))


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if isinstance(node.value, int) and node.value.bit_length() > 64:
            raise Refused("too_large", "operand")
        return _bounded(Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _bounded(_BINARY[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    raise Refused("disallowed", type(node).__name__)


# ---- finding claims in text ---------------------------------------------------------------------------------------

_NUMBER = r"\d+(?:,\d{3})*(?:\.\d+)?"
# Operators as models write them, mapped to Python's. "x" counts only between two numbers (see _normalize).
_OPERATOR_SPELLINGS = {"×": "*", "∗": "*", "·": "*", "÷": "/", "−": "-", "–": "-", "^": "**"}
# A term may carry one unit word ("20 apples - 9 apples = 11"); the word is dropped before computing.
_TERM = rf"\(*\s*-?\s*\$?{_NUMBER}%?(?:\s+[A-Za-z]+)?\s*\)*"
_OP = r"(?:\*\*|[-+*/])"
# expression = value: at least one operator, so "x = 5" or "answer = 5" is no claim; a value may carry units after it.
_CLAIM = re.compile(rf"(?<![\w.])({_TERM}(?:\s*{_OP}\s*{_TERM})+)\s*=\s*(-?\s*\$?{_NUMBER})(?![\d])")
_ANNOTATION = re.compile(r"<<([^<>=]{1,120})=([^<>]{1,40})>>")
_NUMBERS_IN_TEXT = re.compile(_NUMBER)


def _normalize(text: str) -> str:
    for spelling, operator in _OPERATOR_SPELLINGS.items():
        text = text.replace(spelling, operator)
    return re.sub(r"(?<=\d)\s*[xX]\s*(?=\$?\d)", " * ", text)  # 9 x 7 = 63


def _to_fraction(number: str) -> Fraction:
    return Fraction(number.replace(",", "").replace("$", "").replace(" ", ""))


def _python_expression(expression: str) -> str:
    expression = re.sub(r"[A-Za-z]+", " ", expression.replace(",", "").replace("$", ""))
    return re.sub(rf"({_NUMBER})%", r"(\1/100)", expression)


def numbers_in(text: str) -> set[Fraction]:
    """Every number written in a text (commas and `$` ignored), for checking that a claim's operands are given."""
    return {_to_fraction(n) for n in _NUMBERS_IN_TEXT.findall(text)}


@dataclass
class Claim:
    expression: str
    claimed: Fraction | None
    value: Fraction | None = None  # None when refused
    holds: bool = False
    grounded: bool = False
    refused: str | None = None


@dataclass
class ClaimCheck:
    """What checking a text's claims found: every claim, and the sample's verdict."""

    claims: list[Claim] = field(default_factory=list)

    @property
    def false_claims(self) -> int:
        return sum(1 for c in self.claims if c.refused is None and not c.holds)

    @property
    def refusals(self) -> list[str]:
        return [c.refused for c in self.claims if c.refused is not None]

    @property
    def results(self) -> set[Fraction]:
        return {c.claimed for c in self.claims if c.holds and c.claimed is not None}


def _matches(claimed: Fraction, value: Fraction, written: str) -> bool:
    """A claimed value holds when it is the value, or the value correctly rounded to the decimals written
    (`10 / 3 = 3.33` holds; `10 / 3 = 3.3333` holds; `10 / 3 = 3` does not)."""
    if claimed == value:
        return True
    decimals = len(written.split(".")[1]) if "." in written else 0
    return decimals > 0 and abs(claimed - value) <= Fraction(1, 2 * 10 ** decimals)


def find_claims(text: str) -> list[tuple[str, str]]:
    """(expression, written value) pairs, annotations first, in the order they appear."""
    normalized = _normalize(text)
    found = [(m.start(), m.group(1), m.group(2)) for m in _ANNOTATION.finditer(normalized)]
    outside = _ANNOTATION.sub(lambda m: " " * len(m.group(0)), normalized)  # an annotation is one claim, not two
    found += [(m.start(), m.group(1), m.group(2)) for m in _CLAIM.finditer(outside)]
    return [(expression.strip(), value.strip()) for _, expression, value in sorted(found)]


def check_claims(text: str, given: set[Fraction]) -> ClaimCheck:
    """Check every claim of `text`. `given`: the question's numbers; a claim is grounded when each of its operands
    is given or is the result of an earlier claim of this text that holds (multi-step arithmetic)."""
    check, known = ClaimCheck(), set(given)
    for expression, written in find_claims(text):
        claim = Claim(expression=expression, claimed=None)
        try:
            claim.claimed = _to_fraction(written)
            claim.value = safe_eval(_python_expression(expression))
        except Refused as refusal:
            claim.refused = refusal.reason
        except (ValueError, ZeroDivisionError):
            claim.refused = "syntax"
        if claim.refused is None:
            claim.holds = _matches(claim.claimed, claim.value, written)
            operands = {_to_fraction(n) for n in _NUMBERS_IN_TEXT.findall(expression.replace("$", ""))}
            claim.grounded = operands <= known
            if claim.holds:
                known.add(claim.claimed)
        check.claims.append(claim)
    return check
