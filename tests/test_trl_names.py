"""TRL's names and forms: every TrainConfig field is a `train` flag under its TRL name with its default shown,
TRL's loss names and dtype spellings are accepted, alignment-handbook YAML reads as a TrainConfig, and the output
lands where PEFT users look (the adapter at OUT's root, a portable base name, a ModelCard)."""

from __future__ import annotations

import json

import pytest
import typer.main
from typer.testing import CliRunner

from selfalign.cli import app
from selfalign.errors import ConfigError
from selfalign.training.config import TrainConfig

runner = CliRunner()


def _train_command():
    return typer.main.get_command(app).commands["train"]


def test_every_scalar_train_config_field_is_a_flag_with_its_default_shown():
    options = {p.name: p for p in _train_command().params if p.param_type_name == "option"}
    for name in ("loss_type", "use_peft", "lora_r", "max_length", "bf16", "gradient_checkpointing", "beta",
                 "learning_rate", "max_prompt_length", "warmup_ratio", "dtype", "seed"):
        assert name in options, name
        default = TrainConfig.model_fields[name].get_default()
        assert f"[default: {'none' if default is None else default}]" in options[name].help, name
    assert "--loss-type" in options["loss_type"].opts and "--loss" in options["loss_type"].opts
    assert {"--use-peft", "--lora"} <= set(options["use_peft"].opts) and "--full" in options["use_peft"].secondary_opts
    assert set(TrainConfig.model_fields) <= set(options), set(TrainConfig.model_fields) - set(options)
    assert options["report_to"].multiple and options["lora_target_modules"].multiple
    assert TrainConfig(report_to="none").report_to == [] and TrainConfig(report_to=["none"]).report_to == []
    assert TrainConfig(lora_target_modules=["all-linear"]).lora_target_modules == "all-linear"


@pytest.mark.parametrize("given, expected", [("sigmoid", "dpo"), ("sigmoid_norm", "ln_dpo"), ("ipo", "ipo")])
def test_trls_loss_names_are_accepted(given, expected):
    assert TrainConfig(loss_type=given).loss_type == expected


@pytest.mark.parametrize("given, expected", [("bf16", "bfloat16"), ("bfloat16", "bfloat16"), ("fp32", "float32"),
                                             ("float16", "float16"), ("auto", "auto")])
def test_one_spelling_of_dtypes_with_the_short_names_accepted(given, expected):
    from selfalign.generation.options import EngineOptions
    from selfalign.recipes import Recipe

    assert TrainConfig(dtype=given).dtype == expected == EngineOptions(dtype=given).dtype
    if given != "auto":
        assert Recipe.model_fields["export_dtype"].annotation is not None
        assert Recipe.model_validate({"name": "x", "prompts": "p.jsonl", "export_dtype": given}).export_dtype \
            == expected


HANDBOOK = """\
# Model arguments
model_name_or_path: {model}
torch_dtype: bfloat16
# Data training arguments
dataset_mixer:
  HuggingFaceH4/ultrafeedback_binarized: 1.0
dataset_splits: [train_prefs, test_prefs]
preprocessing_num_workers: 12
# DPOTrainer arguments
bf16: false
beta: 0.05
do_eval: true
eval_strategy: steps
gradient_accumulation_steps: 1
gradient_checkpointing: false
learning_rate: 5.0e-4
lr_scheduler_type: cosine
max_length: 256
max_prompt_length: 128
max_steps: 1
num_train_epochs: 1
optim: adamw_torch
output_dir: data/zephyr-7b-dpo-full
per_device_train_batch_size: 2
push_to_hub: false
save_strategy: "no"
seed: 42
warmup_ratio: 0.1
use_peft: true
lora_r: 4
lora_alpha: 8
report_to: []
"""


def test_an_alignment_handbook_recipe_trains_and_its_adapter_loads_with_peft(tmp_path, tiny_model_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from test_train import _pairs
    from selfalign.io import write_jsonl

    recipe = tmp_path / "config_full.yaml"
    recipe.write_text(HANDBOOK.format(model=tiny_model_path))
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, _pairs(4))
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", "--pairs", str(pairs), "--out", str(out), "--config", str(recipe),
                                 "--loss-type", "sigmoid", "--lora-r", "8", "--report-to", "none",
                                 "--lora-target-modules", "q_proj", "--lora-target-modules", "v_proj"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["model"], saved["dtype"], saved["beta"], saved["lora_r"], saved["loss_type"], saved["max_length"]) \
        == (tiny_model_path, "bfloat16", 0.05, 8, "dpo", 256)
    assert saved["report_to"] == [] and saved["lora_target_modules"] == ["q_proj", "v_proj"]
    # where PEFT users look: the adapter at OUT's root, its base named portably, a model card the hub reads
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    PeftModel.from_pretrained(base, str(out))
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == tiny_model_path
    from huggingface_hub import ModelCard

    card = ModelCard.load(str(out / "README.md"))
    assert "selfalign" in card.data.tags and card.data.library_name == "peft" and "dpo" in card.data.tags
    assert "beta | 0.05" in card.text and str(pairs) in card.text
    assert not (out / "final").exists() and (out / "selfalign_training.json").exists()


def test_a_handbook_recipe_with_unknown_keys_names_them_all_in_one_line(tmp_path):
    from selfalign.handbook import read_train_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: default\nlearnin_rate: 1e-5\nfoo_bar: 3\nbeta: 0.1\n")
    with pytest.raises(ConfigError) as error:
        read_train_config(recipe, {}, {})
    message = str(error.value)
    assert "\n" not in message and "foo_bar" in message and "learnin_rate (did you mean learning_rate?)" in message


def test_the_base_model_is_recorded_portably():
    from selfalign.cards import training_card
    from selfalign.training.outputs import portable_name

    assert portable_name("default") == "default"
    assert portable_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = training_card("default", True, "dpo", {"beta": 0.1}, {"pairs": "p.jsonl"}, {"loss": 0.69})
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and "Q4_1" in card.text


def test_every_option_of_every_command_shows_its_default():
    """typer prints a default it knows; an option whose default means "not given" says what applies in its help."""
    def commands(group, prefix=""):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from commands(command, prefix + name + " ")
            else:
                yield prefix + name, command

    silent = []
    for name, command in commands(typer.main.get_command(app)):
        for p in command.params:
            if p.param_type_name != "option" or p.required or getattr(p, "hidden", False):
                continue
            if p.default not in (None, (), []) or "default:" in (p.help or ""):
                continue
            silent.append(f"{name} {p.opts[0]}")
    assert silent == [], silent
