"""What the command-line modules share: the error console, the way a command fails, and the one way a stage's
settings are assembled (a `--config` file, then the command's own options on top)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from selfalign.errors import ConfigError

# Text from users, models and endpoints ([/INST], p[v2].jsonl, "[vllm]") is printed as text, never read as rich markup.
console = Console(stderr=True, markup=False, highlight=False)
Config = TypeVar("Config", bound=BaseModel)


def setup_logging(verbose: bool = False) -> None:
    """The command line's logging (an entry point's choice, never a library call's): warnings, or everything with
    --verbose. vLLM logs through its own handler, at the level of VLLM_LOGGING_LEVEL when it is first imported; a
    value you set yourself wins."""
    import os

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "WARNING")


def print_error(message) -> None:
    """`error: <message>` on stderr, the message as plain text whatever brackets it holds."""
    from rich.text import Text

    console.print(Text("error: ", style="bold red") + Text(str(message)), soft_wrap=True)


def one_line(report: dict) -> str:
    """A summary as one readable line (`scored 16, abstained 0, verdicts: verified 3, false 5`), not a Python dict;
    None values are left out, nested mappings follow their key, and a number with a `<name>_stderr` beside it prints
    as `name 0.18 ± 0.016`."""
    parts = []
    for key, value in report.items():
        if value is None or value == {} or value == [] or (key.endswith("_stderr")
                                                            and key.removesuffix("_stderr") in report):
            continue
        if isinstance(value, dict):
            parts.append(f"{key}: {one_line(value)}")
            continue
        error = report.get(f"{key}_stderr")
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        if isinstance(error, float):
            parts[-1] += f" ± {error:.2g}"
    return ", ".join(parts)


def fail(message: str) -> None:
    """Print a clear error and exit with status 2 (nothing is written by a failed command)."""
    print_error(message)
    raise typer.Exit(2)


def read_mapping(path: Path) -> dict:
    """A YAML or JSON file holding a mapping of fields; errors name the file."""
    from selfalign import yaml_io

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a configuration file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    values = yaml_io.loads(text, path)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of fields, got {type(values).__name__}")
    return values


def parse_set_options(items: list[str]) -> dict:
    """`--set key=value` strings; values are parsed as YAML so numbers, booleans and lists work."""
    from selfalign import yaml_io

    values = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        try:
            values[key.strip()] = yaml_io.loads(text)
        except yaml_io.YamlError as e:
            raise ConfigError(f"--set {key.strip()}: value {text!r} is not valid YAML "
                              f"({str(e).split(': ', 1)[-1]})") from None
    return values


def load_config(config_type: type[Config], config_path: Path | None, options: dict,
                set_values: dict | None = None, file_values: dict | None = None) -> Config:
    """The stage's settings: fields from `config_path` (YAML/JSON; `file_values` when the caller has read and
    translated it already), then the options the user gave (None = not given), then `--set key=value` fields. An
    option and a `--set` of the same field is an error, not a silent choice."""
    if file_values is not None:
        values = dict(file_values)
    else:
        values = read_mapping(config_path) if config_path is not None else {}
    given = {key: value for key, value in options.items() if value is not None}
    for key in sorted(set(given) & set(set_values or {})):
        raise ConfigError(f"--{key.replace('_', '-')} and --set {key}=... both given: use one")
    from_options = {**given, **(set_values or {})}
    values.update(from_options)
    try:
        return config_type(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        key = str(err["loc"][0]) if err["loc"] else ""
        if key in from_options:
            flag = f"--set {key}" if key in (set_values or {}) else f"--{key.replace('_', '-')}"
            where = f"{flag} {from_options[key]!r}"
        else:
            where = f"{config_path}: field '{field}'" if config_path else f"field '{field}'"
        raise ConfigError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None
