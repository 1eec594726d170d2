"""What to do next when no checkpoint is eligible, stated from the sweep's own measurements.

The seed's two remedies are exactly the advice: save (and evaluate) more often where the model
goes from "learned" to "collapsed", and dilute the identity data with general chat. This module
reads the judged checkpoints of one run and says where that window is, whether a save fell inside
it, and the command that re-trains just the window.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from diag.diagnostics.checks import keyword_progress, pct
from diag.diagnostics.judged import taught_name

# checks whose failure means the model got worse than its base (collapse), not "not learned yet"
from diag.diagnostics.onset import COLLAPSE_CHECKS

from diag.metrics import taught
from diag.records import Check, RunRecord

SAVES_IN_WINDOW = 10  # how many saves to ask for between the last unlearned and the collapse


def _fails(checks: list[Check], names) -> list[str]:
    return [c.name for c in checks if c.blocking and not c.passed and c.name in names]


def _learned(checks: list[Check]) -> bool:
    """Every taught check (identity recall; a task score) passes."""
    mine = [c for c in checks if c.name in taught()]
    return bool(mine) and all(c.passed for c in mine)


@dataclass(frozen=True)
class NextSteps:
    """Where a run stands (``window``: between which saves learning and collapse happened, or how
    far it learned) and what to do, first things first. ``steps()`` is the list users read."""

    window: str | None = None
    actions: tuple[str, ...] = ()
    joined: bool = False  # the window and the first action read as one sentence

    def steps(self) -> list[str]:
        if self.joined and self.window and self.actions:
            return [f"{self.window}: {self.actions[0]}", *self.actions[1:]]
        return [s for s in (self.window, *self.actions) if s]


def run_next_steps(
    name: str,
    judged: list,
    run: RunRecord,
    onset,
    policy,
    healthy: dict[str, tuple[int, RunRecord]],
) -> NextSteps:
    """Next steps for one run without an eligible checkpoint; ``judged`` (the recommendation's
    judged checkpoints: ``.record``, ``.checks``, ``.progress``) sorted by step, those that could
    not be probed left out.

    healthy: the other runs that have an eligible pick, ``{name: (step, run record)}``: a diluted
    one among them is measured evidence for the dilution advice.
    """
    if not judged:
        return NextSteps()
    if not any(j.measures_learning for j in judged):  # taught no identity: damage only
        first_bad = judged[0]
        return NextSteps(
            f"every checkpoint of run {name} is damaged from step {first_bad.record.step} on "
            f"({', '.join(_fails(first_bad.checks, COLLAPSE_CHECKS)) or 'see its checks'})",
            (
                "save earlier and more often, lower the learning rate, or dilute the data with "
                "general chat",
                "if the run did teach an identity, pass --identity FILE or the data it trained "
                "on with --data FILE",
            ),
        )
    what = taught_name([j.record for j in judged])
    first = next((j for j in judged if _learned(j.checks)), None)
    if first is None:
        last = judged[-1]
        progress = keyword_progress(last.record, policy.identity_min_low)
        detail = f" ({progress})" if progress else ""
        step = last.record.step
        if not any(j.progress > 0 for j in judged):
            return NextSteps(
                f"nothing was learned by step {step}{detail}{_style_only(last)}",
                (f"train longer, or check that the {what} data reach the model",),
                joined=True,
            )
        if onset is not None:  # collapsing before it learned: more saves would not help
            return NextSteps(
                f"the {what} was only partly learned by step {step}{detail}, and collapse "
                f"began between {onset.healthy_until} and {onset.collapsing_from}",
                (_dilution(run, healthy, what),),
            )
        return NextSteps(
            f"the {what} was partly learned by step {step}{detail}", ("train longer",), True
        )
    before = [j for j in judged if j.record.step < first.record.step]
    if onset is not None and before and onset.collapsing_from <= before[-1].record.step:
        # the damage began saves before anything was learned: more saves in between find no
        # good checkpoint; the data or the learning rate has to change
        return NextSteps(
            f"the {what} was learned between steps {before[-1].record.step} and "
            f"{first.record.step}, but collapse had begun earlier, between "
            f"{onset.healthy_until} and {onset.collapsing_from}: no save can be both",
            (
                _dilution(run, healthy, what),
                "or lower the learning rate, so the model learns before it forgets",
            ),
        )
    window, start, end = _learning_window(judged, first, onset, what)
    return NextSteps(window, (_save_often(name, run, start, end), _dilution(run, healthy, what)))


def _style_only(j) -> str:
    """', though its answers took the task's style (task chrF 4% → 31%) but not its facts' when
    similarity rose without the facts: style is not knowledge."""
    value = j.record.metric("task_similarity")
    before = j.record.base_metric("task_similarity", j.base)
    if value is None or before is None or value - before < 0.05:
        return ""
    return (
        f", though its answers took the task's style (task chrF {pct(before)} → {pct(value)}) "
        "but not its facts"
    )


def _learning_window(judged: list, first, onset, what: str = "identity") -> tuple[str, int, int]:
    """(where learning and collapse happened, in words; the window's first and last step)."""
    before = [j for j in judged if j.record.step < first.record.step]
    start = before[-1].record.step if before else 0
    learned_at = first.record.step
    collapse = onset.collapsing_from if onset else None
    failing = _fails(first.checks, COLLAPSE_CHECKS)
    also = f" (step {learned_at} already fails {', '.join(failing)})" if failing else ""
    learned = f"the {what} was learned between steps {start} and {learned_at}"
    if collapse is not None and collapse > learned_at:
        text = f"{learned}; collapse began between {onset.healthy_until} and {collapse}{also}"
        return text, start, collapse
    if failing:
        text = (
            f"{learned}, and collapse began in the same interval: no checkpoint was saved "
            f"between learning and collapse{also}"
        )
        return text, start, learned_at
    return learned, start, judged[-1].record.step


def _save_often(name: str, run: RunRecord, start: int, end: int) -> str:
    """Save about SAVES_IN_WINDOW times between ``start`` and ``end``: how, and the command."""
    every = max(1, (end - start) // SAVES_IN_WINDOW)
    saved_every = (run.training or {}).get("save_every")
    steps = [x for x in (run.training or {}).get("save_steps") or () if start <= x <= end]
    if len(steps) > 1:  # saved at listed steps: their spacing in the window
        saved_every = min(b - a for a, b in zip(steps, steps[1:]))
    if saved_every and every >= saved_every:
        every = max(1, saved_every // 2)
    often = "every step" if every == 1 else f"every {every} steps"
    return f"save {often} between {start} and {end}: " + _retrain(name, run, start, end, every)


def _dilution(run: RunRecord, healthy: dict[str, tuple[int, RunRecord]], what="identity") -> str:
    """Dilute: cite a run with more general data that has an eligible pick, else the next ratio."""
    ratio = (run.training or {}).get("general_ratio")
    diluted = [
        (other, step, (info.training or {}).get("general_ratio"))
        for other, (step, info) in sorted(healthy.items())
        if ((info.training or {}).get("general_ratio") or 0) > (ratio or 0)
    ]
    if diluted:
        other, step, more = diluted[0]
        return (
            f"dilute: run '{other}' (general_ratio {more:g}) learned the {what} without "
            f"collapse (step {step} is eligible); this run used {ratio or 0:g}"
        )
    if ratio is not None:
        more = 0.5 if not ratio else min(0.9, round(ratio + 0.3, 1))
        return (
            f"dilute: this run mixed {pct(ratio)} general chat; try mix.general_ratio={more:g} "
            f"(general chat slows the {what} down and keeps the model chatting)"
        )
    return (
        f"dilute: mix general chat into the {what} data (about half of the examples, e.g. "
        f"mix.general_ratio=0.5 with diag train), so the model keeps chatting while it learns "
        f"the {what}"
    )


def _retrain(name: str, run: RunRecord, start: int, end: int, every: int) -> str:
    """The command that trains just the window again, saving often."""
    path = run.path
    if run.trainer == "diag" and path:
        folder = Path(path)
        out = folder.with_name(f"{folder.name}-{start}-{end}")
        args = ["diag", "train", str(folder)]
        if start:
            args.append(f"resume_from={folder / f'checkpoint-{start}'}")
        args += [f"save_every={every}", f"max_steps={end}", f"output_dir={out}"]
        if (run.training or {}).get("save_steps"):
            args.append("save_steps=null")  # the run's listed saves, replaced by save_every
        return " ".join(shlex.quote(a) for a in args)
    trainer = run.trainer or "your trainer"
    resume = f"resume from checkpoint-{start} and " if start else ""
    often = "every step" if every == 1 else f"every {every} steps"
    return f"with {trainer}, {resume}save {often} (save_steps={every}) up to step {end}"
