"""The argument parser of the plain (non-Lightning) commands: ``gvc``, ``gvc-export``, ``gvc-shard``.

A bad command line is one line, ``PROG: error: <what> (see PROG --help)``, and exit status 2:
the usage text is one ``--help`` away and would bury the line that matters. Standard library
only, so a command's argument errors answer before it imports anything heavy.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors (its own and ``parser.error``) are one line.

    ``error_prog`` names the program in the message (subcommand parsers share their root's)."""

    def __init__(self, *args: object, error_prog: str | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.error_prog = error_prog or self.prog.split()[0]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.error_prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``, refused in words otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
