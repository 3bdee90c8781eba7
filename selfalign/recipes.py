"""Recipes: the YAML that `selfalign run` executes, validated before any work starts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from selfalign.evaluation.heldout import HeldoutConfig
from selfalign.pairs import PairOptions


class GenerationStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: Literal["hf", "vllm", "auto"] = "auto"
    n: int = Field(8, ge=2)
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: list[str] = Field(default_factory=list)
    record_logprobs: bool = False


class JudgeStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scorer: Literal["self-consistency", "llm-judge", "reward-model"] = "self-consistency"
    mode: Literal["pointwise", "pairwise"] = "pairwise"
    judge_model: str = Field("policy", description="'policy' (self-rewarding), a model name, or an endpoint's model")
    judge_base_url: str | None = None
    use_logprobs: bool = True


class Recipe(BaseModel):
    """One self-alignment run: N iterations of generate -> judge -> filter -> train -> export -> evaluate."""

    model_config = ConfigDict(extra="forbid")
    name: str
    model: str = "default"
    iterations: int = Field(2, ge=1)
    seed: int = 0
    prompts: str = Field(..., description="JSONL prompt file; answers in it are ignored")
    prompts_per_iteration: int | None = Field(None, ge=1, description="a fresh slice of the prompts each iteration")
    accelerate_config: str | None = Field(None, description="accelerate config file for the train stage (GPUs)")
    generation: GenerationStep = Field(default_factory=GenerationStep)
    judge: JudgeStep = Field(default_factory=JudgeStep)
    pairs: PairOptions = Field(default_factory=PairOptions)
    train: dict = Field(default_factory=dict, description="TrainConfig fields (TRL's names); model is set per iteration")
    eval: HeldoutConfig | None = None
    export_dtype: Literal["bf16", "fp16", "fp32"] = "fp32"


class RecipeError(ValueError):
    pass


def load_recipe(path: str | Path) -> tuple[Recipe, str]:
    """The validated recipe and the sha256 of its text. Errors name the file and the field."""
    from selfalign.training.config import TrainConfig

    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: recipe not found")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping of recipe fields")
    try:
        recipe = Recipe(**raw)
    except ValidationError as e:
        raise _field_error(path, e, "") from None
    try:
        TrainConfig(**{**recipe.train, "model": recipe.model})
    except ValidationError as e:
        raise _field_error(path, e, "train.") from None
    return recipe, hashlib.sha256(text.encode()).hexdigest()


def _field_error(path: Path, error: ValidationError, prefix: str) -> RecipeError:
    first = error.errors()[0]
    return RecipeError(f"{path}: field '{prefix}{'.'.join(str(p) for p in first['loc'])}': {first['msg']}")


def check_inputs(recipe: Recipe, recipe_path: Path) -> None:
    """Fail before any work: missing prompt files, models and accelerate configs."""
    from selfalign.models import resolve_model

    for label, value in (("prompts", recipe.prompts), ("eval.data", recipe.eval.data if recipe.eval else None),
                         ("accelerate_config", recipe.accelerate_config)):
        if value and not Path(value).exists():
            raise RecipeError(f"{recipe_path}: field '{label}': file not found: {value}")
    for label, name in (("model", recipe.model),
                        ("judge.judge_model", None if recipe.judge.judge_model == "policy" or recipe.judge.judge_base_url
                         or recipe.judge.scorer == "self-consistency" else recipe.judge.judge_model)):
        if name:
            try:
                resolve_model(name)
            except FileNotFoundError as e:
                raise RecipeError(f"{recipe_path}: field '{label}': {e}") from None
