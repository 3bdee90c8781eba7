"""Recipes: the YAML that `selfalign run` executes, validated before any work starts."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from selfalign.dtypes import WeightsDtype

from selfalign import yaml_io
from selfalign.errors import SelfAlignError
from selfalign.evaluation.heldout import HeldoutConfig
from selfalign.generation import GenerationConfig
from selfalign.judging.scorers import JudgeConfig
from selfalign.judging.self_taught import SelfTaughtConfig
from selfalign.pairs import PairOptions
from selfalign.training.config import TrainConfig


class Recipe(BaseModel):
    """One self-alignment run: N iterations of generate -> judge -> filter -> train -> export -> evaluate.

    Each step is the typed config of its stage, the same model its command takes with `--config`; the loop writes
    each subprocess stage's config to `iter_NN/config/` and runs the stage on it (loop.run_stage).
    """

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[A-Za-z0-9._-]+$", description="the run folder's name under runs/: letters, "
                      "digits, '.', '_' and '-' (no path)")
    model: str = "default"
    iterations: int = Field(2, ge=1)
    seed: int = 0
    prompts: str = Field(..., description="JSONL prompt file; answers in it are ignored")
    prompts_per_iteration: int | None = Field(None, ge=1, description="a fresh slice of the prompts each iteration")
    curriculum: Literal["fresh", "agreement"] = Field("fresh", description="which prompts each iteration samples: "
                                                     "fresh, the next slice of the file; agreement, also up to a "
                                                     "quarter retried from earlier prompts that had no checked answer, "
                                                     "never again those all of whose samples agreed "
                                                     "(selfalign.run.curriculum)")
    accelerate_config: str | None = Field(None, description="accelerate config file for the train stage (GPUs)")
    train_launcher: str | None = Field(None, description="many machines: a shell command that starts the train "
                                       "stage on every node, with {accelerate} (accelerate launch --config_file "
                                       "accelerate_config) and {train} (the stage's -m selfalign.cli train ...), e.g. "
                                       "srun --ntasks-per-node=1 bash -c '{accelerate} --machine_rank $SLURM_NODEID "
                                       "{train}'")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    judge_training: SelfTaughtConfig | None = Field(None, description="before each iteration's judging, a round of "
                                                    "Self-Taught Evaluator training of the judge (judge.judge_model "
                                                    "to start; 'policy': the base model); the judge stage then uses "
                                                    "the trained judge")
    pairs: PairOptions = Field(default_factory=PairOptions)
    train: TrainConfig = Field(default_factory=TrainConfig, description="TrainConfig fields (TRL's names); the "
                               "policy is the recipe's `model`, then each iteration's export")
    eval: HeldoutConfig | None = None
    eval_sets: dict[str, str] = Field(default_factory=dict, description="more held-out files (with answers), "
                                      "each under its name: evaluated greedily after eval.data with its settings, and "
                                      "shown beside it in the terminal, report.md and the iteration health (e.g. "
                                      "rephrased: problems in sentences training never uses)")
    verifier_check: int = Field(64, ge=0, description="before training, score this many held-out prompts of "
                                "eval.data as the recipe would (answers used only to measure) and report whether the "
                                "judge and filters choose right answers more often than the policy does; 0: off")
    verifier_check_every_iteration: bool = Field(False, description="measure the verifier again after each "
                                                 "iteration's evaluation, on the policy it trained (the next "
                                                 "iteration's sampler): its precision and coverage move as the "
                                                 "policy changes")
    export_dtype: WeightsDtype = "float32"
    stop_on_regression: bool = Field(False, description="end the run after an iteration whose held-out greedy "
                                      "accuracy is worse than the previous iteration's (paired 95% interval below "
                                      "zero); the manifest and report name the best iterate")
    keep_engine: bool | None = Field(None, description="one generation engine for the whole run, loading each "
                                     "policy's weights in place; unset: yes on CPU, no on a GPU (the trainer needs "
                                     "the memory an idle engine holds)")

    @field_validator("name")
    @classmethod
    def _not_a_path(cls, name: str) -> str:
        if name in (".", ".."):
            raise ValueError("a run folder's name, not a path")
        return name

    @field_validator("eval_sets")
    @classmethod
    def _set_names(cls, sets: dict[str, str]) -> dict[str, str]:
        for name in sets:
            if not re.fullmatch(r"[a-z0-9_]+", name):
                raise ValueError(f"{name!r}: a set's name is lower-case letters, digits and '_' (it names the file "
                                 "eval_<name>.json)")
        return sets

    @model_validator(mode="after")
    def _consistent(self):
        if self.eval_sets and self.eval is None:
            raise ValueError("eval_sets: evaluated with eval's settings; set eval too")
        if self.generation.n < 2:
            raise ValueError("generation.n: the loop needs at least 2 samples per prompt to compare")
        if "model" in self.train.model_fields_set:
            raise ValueError("train.model: set the policy with the recipe's top-level 'model' (each iteration trains "
                             "the previous iteration's export)")
        if self.train_launcher is not None:
            if self.accelerate_config is None:
                raise ValueError("train_launcher: starts `accelerate launch` on each node; set accelerate_config too")
            missing = [p for p in ("{accelerate}", "{train}") if p not in self.train_launcher]
            if missing:
                raise ValueError(f"train_launcher: needs {' and '.join(missing)} (where the launch and the train "
                                 "command go)")
        if self.judge_training is not None and (self.judge.scorer, self.judge.judge_base_url) != ("llm-judge", None):
            raise ValueError("judge_training: trains a local LLM judge; set judge.scorer to llm-judge without "
                             "judge_base_url")
        wanted = record_kind_for(self.train.loss_type)
        built = {"lists": "list", "singles": "single"}.get(self.pairs.mode, "pair")
        if wanted != built:
            raise ValueError(f"train.loss_type: {self.train.loss_type!r} trains on {wanted} records, but pairs.mode "
                             f"{self.pairs.mode!r} builds {built} records: set pairs.mode to "
                             f"{ {'list': 'lists', 'single': 'singles'}.get(wanted, 'pairs or scpo') }")
        if self.pairs.mode in ("scpo", "singles") and self.pairs.vote_threshold > self.generation.n:
            raise ValueError(f"pairs.vote_threshold: {self.pairs.vote_threshold} votes can never be reached with "
                             f"generation.n = {self.generation.n} samples")
        return self


def record_kind_for(loss_type: str) -> str:
    """'list' for listwise losses, 'single' for unpaired ones (KTO, DRO), 'pair' for the rest (SRPO's six sequences
    come from a pair)."""
    from selfalign.losses import LOSSES

    return {"list": "list", "labeled": "single", "rewarded": "single"}.get(LOSSES[loss_type].records, "pair")


class RecipeError(SelfAlignError, ValueError):
    pass


def load_recipe(path: str | Path) -> tuple[Recipe, str]:
    """The validated recipe and the sha256 of its text. Errors name the file and the field."""
    path = Path(path)
    try:
        text = yaml_io.read_text(path, "recipe")
        raw = yaml_io.loads(text, path)
    except yaml_io.YamlError as e:
        raise RecipeError(str(e)) from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping of recipe fields")
    try:
        recipe = Recipe(**raw)
    except ValidationError as e:
        raise _field_error(path, e) from None
    return recipe, hashlib.sha256(text.encode()).hexdigest()


def _field_error(path: Path, error: ValidationError) -> RecipeError:
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"] and ": " in message:  # a cross-field check names its field first
        field, message = message.split(": ", 1)
        return RecipeError(f"{path}: field '{field}': {message}")
    return RecipeError(f"{path}: field '{'.'.join(str(p) for p in first['loc'])}': {message}")


def check_inputs(recipe: Recipe, recipe_path: Path) -> None:
    """Fail before any work: missing, empty or malformed prompt files, missing models and accelerate configs."""
    from selfalign.io import DataFileError, read_jsonl
    from selfalign.models import check_hub_model, resolve_model
    from selfalign.generation import PromptError, prompt_ids
    from selfalign.records import PromptRecord

    sets = [(f"eval_sets.{name}", path) for name, path in recipe.eval_sets.items()]
    for label, value in (("prompts", recipe.prompts), ("eval.data", recipe.eval.data if recipe.eval else None),
                         *sets, ("accelerate_config", recipe.accelerate_config)):
        if value and not Path(value).exists():
            raise RecipeError(f"{recipe_path}: field '{label}': file not found: {value}")
    if recipe.generation.backend == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise RecipeError(f"{recipe_path}: field 'generation.backend': ray is not installed here: "
                              "pip install 'selfalign[ray]'")
    if recipe.generation.engine_kwargs:
        from selfalign.generation import resolve_engine_name
        from selfalign.generation.options import check_engine_options

        try:  # an unknown engine argument fails here, not after the base evaluation's engine start
            check_engine_options(resolve_engine_name(recipe.generation.engine), recipe.generation.engine_options())
        except SelfAlignError as e:  # its engine_kwargs errors start "engine_kwargs: "; others name their field
            message = str(e)
            field = "generation.engine_kwargs" if message.startswith("engine_kwargs: ") else "generation"
            raise RecipeError(f"{recipe_path}: field '{field}': {message.removeprefix('engine_kwargs: ')}") from None
    for label, value in (("prompts", recipe.prompts), ("eval.data", recipe.eval.data if recipe.eval else None),
                         *sets):
        if not value:
            continue
        try:
            prompts = read_jsonl(value, PromptRecord)
        except DataFileError as e:
            raise RecipeError(f"{recipe_path}: field '{label}': {e}") from None
        if not prompts:
            raise RecipeError(f"{recipe_path}: field '{label}': {value} holds no prompts")
        try:
            prompt_ids(prompts)  # the engines' own check: duplicates fail here, not after a model has loaded
        except PromptError as e:
            raise RecipeError(f"{recipe_path}: field '{label}': {e} in {value}") from None
        if label != "prompts" and not any(p.answer is not None for p in prompts):
            raise RecipeError(f"{recipe_path}: field '{label}': {value} has no prompt with an 'answer'")
    for label, name in (("model", recipe.model),
                        ("judge.judge_model", None if recipe.judge.judge_model == "policy" or recipe.judge.judge_base_url
                         or recipe.judge.scorer in ("self-consistency", "execution") else recipe.judge.judge_model)):
        if name:
            try:
                if resolve_model(name) == name and not Path(name).exists():
                    check_hub_model(name)  # a hub id: it must exist (or be cached) before the run folder does
            except SelfAlignError as e:
                raise RecipeError(f"{recipe_path}: field '{label}': {e}") from None
