"""Names from the file system or a model, shown literally wherever they are shown.

A folder may be called ``run[/]x`` (rich markup), ``\\x1b[2J`` (a terminal escape) or hold bytes
that are not UTF-8 (``checkpoint-\\xff``, kept by Python as surrogates). None of them may style,
move or crash the output: HTML goes through Jinja's autoescape, rich output through
:func:`markup_literal`, plain logs and click output through :func:`literal`.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def literal(text: object) -> str:
    """``text`` with control characters and undecodable bytes written as escapes.

    >>> literal("run\\x1b[31m")
    'run\\\\x1b[31m'
    >>> literal("checkpoint-\\udcff")
    'checkpoint-\\\\xff'
    """
    value = str(text)
    try:  # a file name's undecodable bytes, kept by Python as U+DC80..U+DCFF
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # any other lone surrogate
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def markup_literal(text: object) -> str:
    """:func:`literal`, and rich markup (``[bold]``, ``[/]``) escaped so it prints as typed."""
    from rich.markup import escape

    return escape(literal(text))


def shown(value: object, limit: int = 80) -> str:
    """The repr of a value read from a user's file, for an error message: built by ``reprlib``
    (a few items per level, a few levels deep), so even a value with millions of parts costs
    nothing to show, and cut to ``limit`` characters.

    >>> shown(["lol"] * 10**6)
    "['lol', 'lol', 'lol', 'lol', 'lol', 'lol', ...]"
    >>> shown("x" * 1000, limit=12)
    "'xxx...xxxx'"
    """
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, limit, limit
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = short.maxfrozenset = 6
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
