"""User-facing errors: one line that names the bad value, then the fix."""

from __future__ import annotations

import click

from diag.display import literal


class DiagError(click.ClickException):
    """An error caused by the user's input, shown by the CLI as one line without a traceback.

    Exit code 2, like a usage error: diag could not do what was asked.

    >>> str(DiagError("identity file 'x.yaml' not found", fix="pass --identity PATH"))
    "identity file 'x.yaml' not found. Fix: pass --identity PATH"
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. Fix: {fix}" if fix else problem)

    def __str__(self) -> str:
        return self.message

    def format_message(self) -> str:
        """What the CLI prints: names in the message shown literally (no newline, escape or
        right-to-left override from a folder name reaches the terminal)."""
        return literal(self.message)
