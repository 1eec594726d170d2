"""The probe registry: stable names, direction, version, what each probe needs from the model.

Unknown names fail loudly with "did you mean" (never warn-and-skip).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from diag.probes import scoring, task_scoring

from diag.errors import DiagError
from diag.metrics import METRICS, metrics_of


@dataclass(frozen=True)
class Probe:
    """A registered probe.

    version: bump when scoring changes, so stored results say which rules produced them
        (2: graded relative to the taught identity; identity recall per keyword).
    sets: probe sets whose generations it reads. The metrics it produces, and their directions,
    are declared in :data:`diag.metrics.METRICS` (each metric names its probe).
    needs_identity: it measures the taught identity, so it is not asked of a run that taught none.
    needs_task: it measures a narrow task, asked only of a run whose data teaches one.
    needs_taught: it weighs a taught answer (an identity's or a task's): asked when there is one.
    """

    name: str
    version: int
    sets: tuple[str, ...]
    score: Callable
    description: str
    needs_identity: bool = False
    needs_task: bool = False
    needs_taught: bool = False

    def applies(self, identity, task) -> bool:
        """Whether it measures anything for a run taught ``identity`` and ``task`` (or None)."""
        if self.needs_identity and identity is None:
            return False
        if self.needs_task and task is None:
            return False
        return not (self.needs_taught and identity is None and task is None)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The summary metrics it produces, headline first."""
        return metrics_of(self.name)

    @property
    def direction(self) -> str:
        """ "higher" or "lower" is better, for its headline metric."""
        return "higher" if METRICS[self.metrics[0]].higher_is_better else "lower"


PROBES: dict[str, Probe] = {
    p.name: p
    for p in (
        Probe(
            "identity_recall",
            2,
            ("identity",),
            scoring.score_identity_recall,
            "held-out 'who are you' paraphrases answered with the identity keywords",
            needs_identity=True,
        ),
        Probe(
            "near_miss",
            2,
            ("near_miss",),
            scoring.score_near_miss,
            "identity-like questions that need a different answer, not the identity sentence",
            needs_identity=True,
        ),
        Probe(
            "general_accuracy",
            2,
            ("general",),
            scoring.score_general_accuracy,
            "bilingual general items with checkable answers, paired with the base",
        ),
        Probe(
            "drift",
            2,
            (),
            scoring.score_drift,
            "per-token log-likelihood gap on the base's own answers (KL(base||model) estimate)",
        ),
        Probe(
            "repetition",
            1,
            ("general",),
            scoring.score_repetition,
            "seq-rep-4, loop flag and token-limit hits inside each answer",
        ),
        Probe(
            "parrot",
            1,
            ("general",),
            scoring.score_parrot,
            "identity leakage into other answers and the share of the most common answer",
        ),
        Probe(
            "task",
            1,
            ("task",),
            task_scoring.score_task,
            "the task's questions: the reference's facts (knowledge) and chrF (style), the "
            "reference's likelihood, answers memorised from other questions",
            needs_task=True,
        ),
        Probe(
            "regurgitation",
            1,
            ("general",),
            task_scoring.score_regurgitation,
            "unrelated questions answered with the task's content (its terms, or copied spans)",
            needs_task=True,
        ),
        Probe(
            "pressure",
            1,
            (),
            task_scoring.score_pressure,
            "parrot pressure: a taught answer more likely, per token, than the base's own answer",
            needs_taught=True,
        ),
    )
}


def get_probe(name: str) -> Probe:
    """The registered probe ``name``; unknown names raise DiagError with the closest match."""
    try:
        return PROBES[name]
    except KeyError:
        close = difflib.get_close_matches(name, PROBES, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise DiagError(
            f"unknown probe '{name}'",
            fix=f"{hint}known probes: {', '.join(PROBES)}",
        ) from None


def resolve_probes(
    names: str | Sequence[str] | None, identity: object = True, task: object = None
) -> list[str]:
    """Comma-separated string or list -> validated probe names in registry order (None = all).

    Only the probes that measure something for a run taught ``identity`` (None: no identity) and
    ``task`` (None: no narrow task) are kept.
    """
    chosen = _resolve(names)
    kept = [n for n in chosen if PROBES[n].applies(identity, task)]
    if kept != chosen:
        if not kept:
            raise DiagError(
                f"--probes {','.join(chosen)} measure what was taught (an identity or a task), "
                "and that is not known for this model",
                fix="pass --identity FILE (or the training data with --data FILE), or ask "
                "other probes too",
            )
        return kept
    return chosen


def _resolve(names: str | Sequence[str] | None) -> list[str]:
    if names is None:
        return list(PROBES)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise DiagError("no probes selected", fix=f"choose from: {', '.join(PROBES)}")
    wanted = {get_probe(n).name for n in names}
    return [n for n in PROBES if n in wanted]


def reads(check: str) -> tuple[str, ...]:
    """The probe sets whose answers a policy check (a metric's name) reads."""
    if check not in METRICS:
        return ()
    # drift reads no answers of its own: the base's answers to the general prompts
    return PROBES[METRICS[check].probe].sets or ("general",)
