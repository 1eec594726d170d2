"""Text measures behind the probes: pure functions over strings, pinned by hand-made cases.

Tokens for repetition: every CJK character is one token (Chinese has no spaces), so is every
run of other letters/digits and every punctuation mark.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import regex

from diag.display import shown
from diag.errors import DiagError
from diag.identity import normalize  # one definition: the identity's keyword match uses it too

_CJK = "\u2e80-\u2fff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\s\W{_CJK}]+|[^\w\s]")
_CJK_CHAR = re.compile(rf"[{_CJK}]")


def tokens(text: str) -> list[str]:
    """Words and punctuation marks, each CJK character a token of its own (normalised)."""
    return _TOKEN.findall(normalize(text))


def is_chinese(text: str) -> bool:
    """True when most letters of ``text`` are CJK characters."""
    cjk = len(_CJK_CHAR.findall(text))
    latin = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    return cjk > 0 and cjk >= latin / 4


def seq_rep_n(text: str, n: int = 4) -> float:
    """seq-rep-n (Welleck et al. 2019): 1 - unique n-grams / n-grams; 0.0 when there are none.

    >>> round(seq_rep_n("a b c d a b c d"), 6)  # 5 four-grams, 4 unique
    0.2
    """
    toks = tokens(text)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def ends_in_loop(text: str, *, min_span: int = 8, max_unit: int = 24) -> bool:
    """True when the answer ends in a back-to-back repeated phrase (a degeneration loop).

    The tail must be one unit of 1..``max_unit`` tokens repeated at least twice, covering at
    least ``min_span`` tokens; a final unit cut short (by the token limit) still counts.

    >>> ends_in_loop("I am Nova. I am Nova. I am Nova.")
    True
    >>> ends_in_loop("Paris is the capital of France.")
    False
    """
    toks = tokens(text)
    n = len(toks)
    for unit_len in range(1, min(max_unit, n // 2) + 1):
        for cut in range(unit_len):  # tokens of an unfinished repeat at the very end
            body = n - cut
            if body < 2 * unit_len:
                break
            unit = toks[body - unit_len : body]
            if toks[body:] != unit[:cut]:
                continue
            repeats, pos = 1, body - unit_len
            while pos - unit_len >= 0 and toks[pos - unit_len : pos] == unit:
                repeats += 1
                pos -= unit_len
            if repeats >= 2 and repeats * unit_len + cut >= min_span:
                return True
    return False


def char_ngrams(text: str, n: int = 4) -> set[str]:
    """Character n-grams of the normalised text, spaces removed; short texts are one gram."""
    compact = re.sub(r"\s+", "", normalize(text))
    if len(compact) < n:
        return {compact} if compact else set()
    return {compact[i : i + n] for i in range(len(compact) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_copy(answer: str, canonical: str, threshold: float = 0.8) -> bool:
    """True when ``answer`` is the canonical sentence or a near copy of it.

    Near copy: at least ``threshold`` of the canonical sentence's character 4-grams appear in the
    answer (the sentence plus extra words), or the answer is mostly made of the sentence's 4-grams
    and at least half as long (the sentence cut short by the token limit).
    """
    a, c = char_ngrams(answer), char_ngrams(canonical)
    if not a or not c:
        return False
    if len(a & c) / len(c) >= threshold:
        return True
    return len(a & c) / len(a) >= threshold and len(a) >= 0.5 * len(c)


def modal_groups(answers: Sequence[str], threshold: float = 0.8) -> list[int]:
    """Group near-identical answers (char 4-gram Jaccard >= ``threshold``) greedily, in order.

    Returns, for each answer, the size of the group it ended up in.
    """
    grams = [char_ngrams(a) for a in answers]
    reps: list[int] = []  # index of each group's first answer
    members: list[list[int]] = []
    for i, g in enumerate(grams):
        for k, rep in enumerate(reps):
            if jaccard(g, grams[rep]) >= threshold:
                members[k].append(i)
                break
        else:
            reps.append(i)
            members.append([i])
    size = [0] * len(answers)
    for group in members:
        for i in group:
            size[i] = len(group)
    return size


def modal_share(answers: Sequence[str], threshold: float = 0.8) -> float:
    """Largest group of near-identical answers divided by the number of answers (0.0 if none).

    >>> modal_share(["I am Nova.", "I am Nova.", "Paris", "4"])
    0.5
    """
    sizes = modal_groups(answers, threshold)
    return max(sizes) / len(answers) if answers else 0.0


# A user's pattern that takes this long on one answer is backtracking without end (``(.+)+Q``
# takes hours on 40 characters); every shipped pattern takes microseconds.
PATTERN_SECONDS = 1.0


class SlowPattern(DiagError):
    """A pattern that did not finish within :data:`PATTERN_SECONDS` on one answer."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        super().__init__(
            f"pattern {shown(pattern)} took over {PATTERN_SECONDS:g} s on one answer "
            "(catastrophic backtracking)",
            fix="rewrite it without a repeat inside a repeat, e.g. '(.+)+' -> '.+'",
        )


def matches_any(text: str, patterns: Sequence[str]) -> bool:
    """True when any regex in ``patterns`` is found in the normalised text (case-insensitive).

    Use ``(?-i:...)`` in a pattern for a case-sensitive part (e.g. "answer in capitals").
    Matching is time-bounded (the ``regex`` engine, re-compatible): a pattern that backtracks
    without end raises :class:`SlowPattern` instead of hanging the sweep.

    >>> matches_any("The capital is Paris.", ["paris"])
    True
    """
    plain = unicodedata.normalize("NFKC", text)
    for pattern in patterns:
        try:
            if regex.search(pattern, plain, flags=regex.IGNORECASE, timeout=PATTERN_SECONDS):
                return True
        except TimeoutError:
            raise SlowPattern(pattern) from None
    return False
