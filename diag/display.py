"""Names from the file system or a model, shown literally wherever they are shown.

A folder may be called ``run[/]x`` (rich markup), ``\\x1b[2J`` (a terminal escape), hold bytes
that are not UTF-8 (``checkpoint-\\xff``, kept by Python as surrogates), a newline, or a
right-to-left override (``rtl\\u202egnp.exe`` displays as "rtlexe.png"). None of them may style,
move, reorder, split or crash the output: HTML goes through Jinja's autoescape and
:func:`literal`, rich output through :func:`markup_literal`, plain logs and click output through
:func:`literal`.
"""

from __future__ import annotations

import re

# C0/C1 controls, tab and newline aside (``lines=True`` keeps the newline)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Characters that reorder, hide or break the text around them: bidi marks, embeddings, overrides
# and isolates, zero-width characters, line and paragraph separators, the byte-order mark.
_INVISIBLE = re.compile("[\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def literal(text: object, *, lines: bool = False) -> str:
    """``text`` with control characters, bidi and invisible formatting characters and
    undecodable bytes written as escapes; a newline too, unless ``lines`` (multi-line text such
    as a model's answer).

    >>> literal("run\\x1b[31m")
    'run\\\\x1b[31m'
    >>> literal("checkpoint-\\udcff")
    'checkpoint-\\\\xff'
    >>> literal("rtl\\u202egnp.exe"), literal("two\\nlines"), literal("two\\nlines", lines=True)
    ('rtl\\\\u202egnp.exe', 'two\\\\x0alines', 'two\\nlines')
    """
    value = str(text)
    try:  # a file name's undecodable bytes, kept by Python as U+DC80..U+DCFF
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # any other lone surrogate
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    value = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    if not lines:
        value = value.replace("\n", "\\x0a")
    return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)


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
