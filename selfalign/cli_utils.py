"""What the command-line modules share: the error console, logging, one-line summaries and the way a command fails.
How a stage's settings are assembled (a `--config` file, then the command's options) is `selfalign.config_files`."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

# Text from users, models and endpoints ([/INST], p[v2].jsonl, "[vllm]") is printed as text, never read as rich markup.
console = Console(stderr=True, markup=False, highlight=False)


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
