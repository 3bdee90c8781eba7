"""The engine-layout flags of every command that generates (`generate`, `serve`, `eval ...`): made from the fields
of `EngineOptions` (selfalign/generation/options.py), their one declaration, so each command spells, explains and
defaults them the same way."""

from __future__ import annotations

from selfalign.cli_config import with_config_flags
from selfalign.generation.options import EngineOptions, parse_engine_kwargs

_NAMES = {"enable_prefix_caching": ("--enable-prefix-caching/--no-prefix-caching",)}


def with_engine_flags(skip: tuple[str, ...] = ()):
    """Decorate a command taking `layout: dict`: the engine-layout fields given (None where not), `engine_kwargs`
    parsed from its JSON text."""
    return with_config_flags(EngineOptions, names=_NAMES, skip=skip, into="layout", panel="Engine layout",
                             converters={"engine_kwargs": parse_engine_kwargs})
