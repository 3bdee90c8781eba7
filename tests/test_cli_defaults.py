"""Every command's flags come from its config model: each flag-able field is a flag, and the default `--help` shows
is the model's own (a default written twice can drift; here it cannot)."""

from pathlib import Path

import pytest
import typer

from selfalign.cli import app
from selfalign.cli_config import _flag_type
from selfalign.evaluation.heldout import HeldoutConfig
from selfalign.generation import GenerationConfig
from selfalign.generation.options import EngineOptions
from selfalign.judging.scorers import JudgeConfig
from selfalign.judging.self_taught import SelfTaughtConfig
from selfalign.pairs import PairOptions
from selfalign.selection import SelectConfig
from selfalign.training.config import TrainConfig

COMMANDS = [(("generate",), GenerationConfig), (("generate",), EngineOptions), (("judge",), JudgeConfig),
            (("build-pairs",), PairOptions), (("train",), TrainConfig), (("judge-train",), SelfTaughtConfig),
            (("eval", "heldout"), HeldoutConfig), (("eval", "heldout"), EngineOptions)]
# Options that set one field of a nested or companion model under another name.
SELECT_FLAGS = [(("generate",), "utility", "utility"), (("generate",), "mbr_references", "mbr_references"),
                (("eval", "heldout"), "utility", "utility"), (("eval", "gsm8k"), "utility", "utility"),
                (("eval", "gsm8k"), "n", "n"), (("eval", "mt-bench"), "n", "n")]


def _options(path):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {p.name: p for p in command.params if p.param_type_name == "option"}


def _shown(default) -> str:
    return f"[default: {'none' if default is None else default}]"


@pytest.mark.parametrize("path, config", COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v.__name__)
def test_each_field_is_a_flag_showing_the_models_default(path, config):
    options = _options(path)
    skipped = {("generate", "GenerationConfig"): set(EngineOptions.model_fields),
               ("eval heldout", "HeldoutConfig"): {"select"}, ("judge-train", "SelfTaughtConfig"): {"train"}}
    skip = skipped.get((" ".join(path), config.__name__), set())
    checked = 0
    for name, field in config.model_fields.items():
        if name in skip or _flag_type(field.annotation) is None and name != "engine_kwargs":
            continue
        assert name in options, f"{' '.join(path)}: {config.__name__}.{name} has no flag"
        help_text = " ".join(options[name].help.split())
        if field.is_required():
            assert "[default: from --config]" in help_text, name  # no default: the flag's or the file's value
        else:
            assert _shown(field.get_default(call_default_factory=True)) in help_text, (name, help_text)
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("path, flag, field", SELECT_FLAGS)
def test_select_flags_show_select_configs_defaults(path, flag, field):
    help_text = " ".join(_options(path)[flag].help.split())
    assert _shown(SelectConfig.model_fields[field].get_default()) in help_text, help_text


def test_no_default_is_written_by_hand_in_the_source():
    package = Path(__file__).resolve().parents[1] / "selfalign"
    written = [f"{path.relative_to(package)}:{number}" for path in sorted(package.rglob("*.py"))
               for number, line in enumerate(path.read_text().splitlines(), 1) if "[default:" in line]
    assert written == []
