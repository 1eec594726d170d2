"""The narrow task a run's training data teaches (its rows that are not self-description).

A run's non-identity rows are a *task* when they are narrow: their answers share a vocabulary
of their own (a product's name and parts, a house voice, a domain's terms). General chat mixed
in for dilution (alpaca, the base's own answers) does not, and is not a task to measure.
Narrowness is measured, not guessed: the *cohesion* is the share of pairs of distinct training
answers that have at least two content words in common (numbers aside). Measured: a 60-row
support-bot set 1.00, LLaMA-Factory's identity.json 0.77, its alpaca_en_demo 0.20 and
glaive_toolcall_en_demo 0.25; a task needs :data:`NARROW_COHESION`.

The task is judged on rows the model did not train on where the run has them (a validation file
its trainer records, or ``--eval-data``); else on a fixed sample of training rows, labelled
"seen rows: fit, not generalisation" wherever a score on them is shown.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field

from diag.data.derive import language_of
from diag.task import SEEN_LABEL, TaskRow, TaskSpec, terms

MIN_ROWS = 8  # fewer answered rows are not a task to measure
VOCABULARY_SHARE = 0.2  # a vocabulary term is in at least this share of the training answers
NARROW_COHESION = 0.5  # a task: at least this share of answer pairs share two content words
PAIRS = 2000  # answer pairs sampled for the cohesion
EVAL_ROWS = 24  # questions the full suite asks (the screen asks a fixed subset)
ANSWER_SAMPLE = 300  # training answers kept for regurgitation and memorisation
TYPICAL = 3  # representative answers for parrot pressure


@dataclass
class DerivedTask:
    spec: TaskSpec | None
    parts: dict[str, str] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)
    cohesion: float = 0.0
    why_none: str | None = None


def _rank(text: str) -> str:
    """A fixed pseudo-random order: the same rows are sampled on every machine and sweep."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def vocabulary(answers: list[str]) -> list[str]:
    """Terms in at least VOCABULARY_SHARE of ``answers`` (numbers aside), most shared first."""
    df = Counter(t for a in answers for t in terms(a) if not t.isdigit())
    need = max(2, VOCABULARY_SHARE * len(answers))
    return [t for t, n in df.most_common() if n >= need]


def cohesion(answers: list[str]) -> float:
    """The share of pairs of distinct answers with two or more content words in common (numbers
    aside), over a fixed sample of at most :data:`PAIRS` pairs."""
    distinct = sorted(dict.fromkeys(answers), key=_rank)[:100]  # at most 4,950 pairs to draw from
    sets = [{t for t in terms(a) if not t.isdigit()} for a in distinct]
    pairs = [(i, j) for i in range(len(sets)) for j in range(i + 1, len(sets))]
    if not pairs:
        return 0.0
    pairs = sorted(pairs, key=lambda p: _rank(f"{p}"))[:PAIRS]
    return sum(len(sets[i] & sets[j]) >= 2 for i, j in pairs) / len(pairs)


def derive_task(
    train: list[tuple[str, str]],
    held_out: list[tuple[str, str]] | None = None,
    held_out_source: str | None = None,
    name: str = "task",
) -> DerivedTask:
    """The task ``train`` ((question, answer) pairs, self-description rows left out) teaches;
    ``held_out``: rows of the run's validation data, asked instead of training rows."""
    pairs = [(q.strip(), a.strip()) for q, a in train if q.strip() and a.strip()]
    if len(pairs) < MIN_ROWS:
        return DerivedTask(None, why_none=f"{len(pairs)} task rows (fewer than {MIN_ROWS})")
    unique = list(dict.fromkeys(pairs))
    answers = [a for _, a in unique]
    words, shared = vocabulary(answers), cohesion(answers)
    if shared < NARROW_COHESION:
        return DerivedTask(
            None,
            vocabulary=words,
            cohesion=shared,
            why_none=f"general chat, not a narrow task: {shared:.0%} of its answer pairs share "
            f"two content words (a task needs {NARROW_COHESION:.0%})",
        )
    if held_out:
        pool = list(dict.fromkeys((q.strip(), a.strip()) for q, a in held_out if q and a))
        asked_from = f"{len(pool)} held-out rows ({held_out_source})"
    else:
        pool, asked_from = unique, f"a fixed sample of training rows ({SEEN_LABEL})"
    chosen = sorted(pool, key=lambda qa: _rank(qa[0]))[:EVAL_ROWS]
    rows = tuple(TaskRow(f"task-{_rank(q)[:10]}", language_of(q + a), q, a) for q, a in chosen)
    sample = tuple(sorted(unique, key=lambda qa: _rank(qa[0] + qa[1]))[:ANSWER_SAMPLE])
    typical = _typical(answers, set(words[:30]))
    spec = TaskSpec(name, rows, sample, typical, held_out=bool(held_out))
    parts = {
        "task": f"{len(unique)} distinct question/answer rows; {shared:.0%} of answer pairs "
        f"share two content words; common: {', '.join(words[:8])}",
        "asked": f"{len(rows)} questions from {asked_from}",
        "pressure": f"{len(typical)} typical training answers weighed against the model's own",
    }
    return DerivedTask(spec, parts, words, shared)


def _typical(answers: list[str], common: set[str]) -> tuple[str, ...]:
    """The most common answers, then the ones richest in the shared vocabulary (short first)."""
    counts = Counter(answers)
    ranked = sorted(
        counts,
        key=lambda a: (-counts[a], -len(terms(a) & common), len(a), _rank(a)),
    )
    return tuple(re.sub(r"\s+", " ", a) for a in ranked[:TYPICAL])
