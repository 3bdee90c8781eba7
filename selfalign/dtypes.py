"""One spelling of dtypes everywhere: torch's and transformers' names (`bfloat16`, `float16`, `float32`, `auto`);
the short names TRL users type in flags (`bf16`, `fp16`, `fp32`) are accepted wherever a dtype is."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator

ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
NAMES = ("auto", "bfloat16", "float16", "float32")


def canonical_dtype(value):
    """`bf16` -> `bfloat16` (and the like); other values unchanged, for the field's own check to name."""
    return ALIASES.get(value, value) if isinstance(value, str) else value


DtypeName = Annotated[Literal[NAMES], BeforeValidator(canonical_dtype)]
WeightsDtype = Annotated[Literal[NAMES[1:]], BeforeValidator(canonical_dtype)]  # what weights are saved in: no auto
HELP = f"{' | '.join(NAMES)} (bf16, fp16, fp32 accepted)"
