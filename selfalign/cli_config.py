"""Command-line flags made from a config model's fields: one declaration (the field: its name, type, default and
description) gives the flag, its help and the default `--help` shows. TRL users find TRL's names (`--loss-type`,
`--use-peft`, `--lora-r`, `--max-length`, `--bf16`, `--gradient-checkpointing`, ...)."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from pathlib import Path
from typing import Optional

import typer
from pydantic import BaseModel

_SCALARS = (bool, int, float, str)
_UNIONS = (typing.Union, types.UnionType)


def field_default(config: type[BaseModel], name: str):
    """A config field's default (its factory's value where it has one): what a flag's help shows."""
    return config.model_fields[name].get_default(call_default_factory=True)


def with_default(help_text: str, default) -> str:
    """A flag's help with the default `--help` shows, in typer's own words (typer.rich_utils.DEFAULT_STRING). Flags
    whose value is None until given (so a `--config` file's value stands) show it this way: the model's default,
    never a copy."""
    from typer.rich_utils import DEFAULT_STRING

    return f"{help_text}  {DEFAULT_STRING.format('none' if default is None else default)}".strip()


def _flag_type(annotation):
    """The flag's Python type for a field's annotation, or None where only `--set` or `--config` can give it (lists,
    mappings). Literal choices and Annotated types are read through."""
    if annotation in _SCALARS:
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args and args[0] in _SCALARS:
        return annotation  # a repeatable flag
    if origin is typing.Annotated:
        return _flag_type(args[0])
    if origin is typing.Literal:
        return str if all(isinstance(a, str) for a in args) else None
    if origin in _UNIONS:
        lists = [a for a in args if typing.get_origin(a) is list]
        if lists:
            return lists[0]  # list[str] | str: repeat the flag, or give it once
        inner = [a for a in args if a is not type(None)]
        return _flag_type(inner[0]) if len(inner) == 1 else None
    return None


def _choices(annotation) -> list[str]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _choices(args[0])
    return [str(a) for a in args] if origin is typing.Literal else []


def config_parameters(config: type[BaseModel], names: dict[str, tuple[str, ...]] | None = None,
                      skip: tuple[str, ...] = (), panel: str | None = None,
                      converters: dict | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per flag-able field, defaulting to None (not given: the config file's or the field's
    value stands). `names`: flag declarations for a field (aliases; `--a/--b` for a boolean); `converters`: a field
    given as text and converted (`engine_kwargs` as JSON); `panel`: the `--help` panel they are listed in."""
    params = []
    for name, field in config.model_fields.items():
        kind = str if name in (converters or {}) else _flag_type(field.annotation)
        if name in skip or kind is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        decls = (names or {}).get(name) or ((f"{flag}/--no-{flag[2:]}",) if kind is bool else (flag,))
        choices = _choices(field.annotation)
        help_text = field.description or " | ".join(choices)
        if choices and field.description and not field.description.startswith(choices[0]):
            help_text += f" ({' | '.join(choices)})"
        help_text = with_default(help_text, "from --config" if field.is_required() else field_default(config, name))
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                                        default=typer.Option(None, *decls, help=help_text, rich_help_panel=panel)))
    return params


def with_config_flags(config: type[BaseModel], names: dict[str, tuple[str, ...]] | None = None,
                      skip: tuple[str, ...] = (), into: str = "options", panel: str | None = None,
                      converters: dict | None = None, config_file: str | None = None, section: str | None = None):
    """Decorate a command `f(..., options: dict)`: it gets a flag for every field of `config`, and receives the
    given ones (None where not given) as `options` (or the parameter named by `into`). `config_file`: the help of
    the command's `--config FILE` option (its parameter `config`), which holds the same fields. `section`: the
    recipe section the model is (`judge`), which names the flags' panel and the `--config` help unless given."""
    if section is not None:
        panel = panel or f"{section.capitalize()} (a recipe's {section}: fields)"
        config_file = config_file or f"YAML/JSON with {section} fields (a recipe's `{section}:`)"

    def decorate(command):
        own = inspect.signature(command, eval_str=True)
        if config_file is not None:
            option = typer.Option(None, help=with_default(config_file, None))
            own = own.replace(parameters=[p.replace(annotation=Optional[Path], default=option) if p.name == "config"
                                          else p for p in own.parameters.values()])
        flags = config_parameters(config, names, skip, panel, converters)
        taken = {p.name for p in flags}

        @functools.wraps(command)
        def wrapper(**kwargs):
            # a repeatable flag not given arrives as an empty list: not given, like the others' None
            options = {name: (kwargs.pop(name) or None) if isinstance(kwargs.get(name), (list, tuple))
                       else kwargs.pop(name) for name in taken}
            for name, convert in (converters or {}).items():
                if name in options:
                    options[name] = convert(options[name])
            return command(**kwargs, **{into: options})

        kept = [p for p in own.parameters.values() if p.name != into]
        wrapper.__signature__ = own.replace(parameters=kept + flags)
        wrapper.__annotations__ = {p.name: p.annotation for p in kept + flags}
        del wrapper.__wrapped__  # typer must read the new signature, not the command's
        return wrapper

    return decorate
