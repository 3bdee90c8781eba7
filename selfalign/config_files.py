"""The one way a stage's settings are assembled, for commands and library code alike: fields from a YAML/JSON file
(a `--config` file or a job file), then the options given, then `--set key=value` fields; errors name the file and
field, or the flag."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from selfalign.errors import ConfigError

Config = TypeVar("Config", bound=BaseModel)


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
