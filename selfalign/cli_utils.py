"""What the command-line modules share: the error console and the way a command fails."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def fail(message: str) -> None:
    """Print a clear error and exit with status 2 (nothing is written by a failed command)."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)
