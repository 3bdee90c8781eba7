"""The one error type for expected failures: bad input, configuration, endpoints, files, model loading.

The CLI prints a `SelfAlignError` as one line (`error: <what and where>`) and exits with status 2; any other
exception is a bug and keeps its traceback. Each module's own error (DataFileError, RecipeError, ...) subclasses it.
"""

from __future__ import annotations


class SelfAlignError(Exception):
    """An expected failure whose message names what went wrong and where (file, line, field, option)."""


class ConfigError(SelfAlignError, ValueError):
    """A bad option or configuration file."""


class StageError(SelfAlignError, RuntimeError):
    """A stage of `selfalign run` failed, or its record cannot be read; the message holds its command and the tail
    of its log, or the file and field."""
