"""The side-by-side answers table: the same prompts across the base and every checkpoint.

Input is the sweep's ``samples.jsonl`` rows (``probe, item_id, language, prompt, answer, run, step``
plus probe fields such as ``passed``, ``leak``, ``near_copy``). Output is plain data for the template;
text is split into (segment, highlighted) pairs so the template escapes every piece of model text
and wraps only the identity keywords/sentence in ``<mark>``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict

# Probes whose rows carry the model's own generation (drift rows carry the base's answer).
ANSWER_PROBES = ("identity_recall", "task", "near_miss", "general_accuracy")
QUOTAS = {"identity_recall": 6, "task": 8, "near_miss": 10, "general_accuracy": 20}


def column_key(row: dict) -> tuple:
    """Base first (step 0), then by run and step."""
    return (row.get("step") != 0, str(row.get("run")) if row.get("step") else "", row.get("step"))


def answers_table(
    samples: list[dict],
    identity: dict | None = None,
    quotas: dict[str, int] | None = None,
    max_chars: int = 600,
) -> dict:
    """Columns (base + checkpoints) and rows (selected prompts) for the answers table.

    Prompts are chosen per probe up to ``quotas``; those whose answers change the most across
    checkpoints (turn into the identity sentence, or flip from right to wrong) come first, so the
    moment the parrot appears is on screen. Deterministic for the same samples.
    """
    quotas = quotas or QUOTAS
    leaks = {_cell_id(r): bool(r.get("leak")) for r in samples if r.get("probe") == "parrot"}
    for r in samples:  # a task's content in an unrelated answer is the task run's parrot
        if r.get("probe") == "regurgitation" and r.get("regurgitates"):
            leaks[_cell_id(r)] = True
    cells: dict[tuple, dict[tuple, dict]] = defaultdict(dict)
    columns: dict[tuple, dict] = {}
    for row in samples:
        if row.get("probe") not in ANSWER_PROBES or row.get("answer") is None:
            continue
        col = column_key(row)
        columns.setdefault(col, {"run": row.get("run"), "step": row.get("step")})
        item = (row["probe"], str(row.get("item_id")))
        cells[item][col] = row
    col_keys = sorted(columns, key=_sort_safe)
    matcher = _identity_matcher(identity_terms(identity))

    def flags(row: dict) -> dict:
        is_identity_prompt = row["probe"] == "identity_recall"
        parrot = (not is_identity_prompt) and (
            leaks.get(_cell_id(row), False) or bool(row.get("near_copy"))
        )
        passed = row.get("facts") if row["probe"] == "task" else row.get("passed")
        return {"parrot": parrot, "passed": passed}

    chosen = _most_changed(cells, len(col_keys), flags, quotas)

    rows = []
    for item in chosen:
        by_col = cells[item]
        first = next(iter(by_col.values()))
        row_cells = []
        for col in col_keys:
            row = by_col.get(col)
            if row is None:
                row_cells.append(None)
                continue
            text = str(row["answer"])
            clipped = text if len(text) <= max_chars else text[:max_chars] + " …"
            row_cells.append({"segments": highlight(clipped, matcher), **flags(row)})
        rows.append(
            {
                "probe": item[0],
                "item_id": item[1],
                "language": first.get("language"),
                "prompt": first.get("prompt"),
                "cells": row_cells,
            }
        )
    return {"columns": [columns[c] for c in col_keys], "rows": rows}


def _most_changed(cells: dict, n_columns: int, flags, quotas: dict[str, int]) -> list[tuple]:
    """Per probe, up to its quota of items, those whose answers change most across columns first
    (items answered in every column preferred)."""
    chosen: list[tuple] = []
    for probe in ANSWER_PROBES:
        items = [i for i in cells if i[0] == probe]
        full = [i for i in items if len(cells[i]) == n_columns] or items
        ranked = sorted(full, key=lambda i: (-_change(cells[i], flags), i[1]))
        chosen += ranked[: quotas.get(probe, 0)]
    return chosen


def _sort_safe(col: tuple) -> tuple:
    return (col[0], col[1], col[2] if col[2] is not None else -1)


def _cell_id(row: dict) -> tuple:
    return (str(row.get("run")), row.get("step"), str(row.get("item_id")), row.get("language"))


def _change(by_col: dict, flags) -> int:
    """How much this prompt's answers change: parrot cells, plus right/wrong flips."""
    ordered = [by_col[c] for c in sorted(by_col, key=_sort_safe)]
    marks = [flags(r) for r in ordered]
    parrots = sum(m["parrot"] for m in marks)
    passes = [m["passed"] for m in marks if m["passed"] is not None]
    flips = sum(a != b for a, b in zip(passes, passes[1:]))
    return 2 * parrots + flips


def identity_terms(identity: dict | None) -> dict | None:
    """The identity's answer and keywords for highlighting.

    Results may store only ``{name, hash}``; a shipped example identity is then found by its hash.
    """
    if not identity or identity.get("answer") or identity.get("keywords"):
        return identity
    from diag.identity import BUILTIN, load_identity

    for key in BUILTIN:
        spec = load_identity(key)
        if spec.hash == identity.get("hash"):
            return spec.to_dict()
    return None


def _identity_matcher(identity: dict | None):
    """A regex over the identity's canonical answer and keywords (NFKC, case-insensitive)."""
    if not identity:
        return None
    terms = []
    if identity.get("answer"):
        terms.append(identity["answer"])
    for group in identity.get("keywords") or []:
        terms += [group] if isinstance(group, str) else list(group)
    terms = sorted({unicodedata.normalize("NFKC", t) for t in terms if t and t.strip()}, key=len)
    if not terms:
        return None
    return re.compile("|".join(re.escape(t) for t in reversed(terms)), re.IGNORECASE)


def highlight(text: str, matcher) -> list[tuple[str, bool]]:
    """Split ``text`` into (segment, is_identity) pairs; the template escapes each segment.

    >>> highlight("Hi, I am Nova.", _identity_matcher({"keywords": [["Nova"]]}))
    [('Hi, I am ', False), ('Nova', True), ('.', False)]
    """
    text = unicodedata.normalize("NFKC", text)
    if matcher is None:
        return [(text, False)]
    out, pos = [], 0
    for m in matcher.finditer(text):
        if m.start() > pos:
            out.append((text[pos : m.start()], False))
        out.append((m.group(0), True))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], False))
    return out or [("", False)]
