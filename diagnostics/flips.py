"""Verdict flips: every graded item whose verdict differs between the base and a checkpoint.

A person checks a probe set's grading by reading the answers where the verdict changed, side by
side: if the checkpoint's "wrong" answer is in fact right (or the base's "right" one wrong), the
item's patterns need fixing. Pure: stored samples in, rows out (``diag audit`` prints them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

GRADED = ("near_miss", "general_accuracy")  # plus every custom:<set>


@dataclass
class Flip:
    """One item whose verdict on some checkpoints differs from the base's."""

    probe: str
    item_id: str
    prompt: str
    base_answer: str
    base_passed: bool
    # (run, step, answer, passed): the checkpoints whose verdict differs from the base's
    changes: list[tuple[str, int, str, bool]] = field(default_factory=list)


def verdict_flips(samples: list[dict], probes: tuple[str, ...] | None = None) -> list[Flip]:
    """Items graded on the base and on checkpoints whose verdicts differ, in item order."""

    def wanted(probe: str) -> bool:
        return probe in probes if probes else (probe in GRADED or probe.startswith("custom:"))

    graded = [s for s in samples if wanted(str(s.get("probe"))) and "passed" in s]
    base = {(s["probe"], s["item_id"]): s for s in graded if s.get("step") == 0}
    flips: dict[tuple[str, str], Flip] = {}
    for s in graded:
        key = (s["probe"], s["item_id"])
        b = base.get(key)
        if s.get("step") == 0 or b is None or bool(s["passed"]) == bool(b["passed"]):
            continue
        flip = flips.setdefault(
            key,
            Flip(s["probe"], s["item_id"], s["prompt"], b.get("answer") or "", bool(b["passed"])),
        )
        flip.changes.append(
            (str(s.get("run")), int(s["step"]), s.get("answer") or "", bool(s["passed"]))
        )
    return sorted(flips.values(), key=lambda f: (f.probe, f.item_id))


def format_flips(flips: list[Flip], width: int = 100) -> str:
    """Plain text: per item the prompt, the base's answer and each distinct checkpoint answer."""
    if not flips:
        return "no graded item changes its verdict between the base and any checkpoint"

    def clip(text: str) -> str:
        one_line = " ".join(text.split())
        return one_line if len(one_line) <= width else one_line[: width - 1] + "…"

    lines = []
    for f in flips:
        lines.append(f"{f.probe} {f.item_id}: {clip(f.prompt)}")
        lines.append(
            f"  base          {'right' if f.base_passed else 'WRONG'}  {clip(f.base_answer)}"
        )
        seen: dict[tuple[str, bool], list[str]] = {}
        for run, step, answer, passed in sorted(f.changes, key=lambda c: (c[0], c[1])):
            seen.setdefault((answer, passed), []).append(f"{run}:{step}")
        for (answer, passed), where in seen.items():
            steps = (
                ",".join(where) if len(where) <= 4 else f"{where[0]}..{where[-1]} ({len(where)})"
            )
            lines.append(f"  {steps:<13} {'right' if passed else 'WRONG'}  {clip(answer)}")
    right = sum(1 for f in flips for c in f.changes if c[3])
    wrong = sum(1 for f in flips for c in f.changes if not c[3])
    lines.append(
        f"{len(flips)} items change verdict: {wrong} answers right on the base and wrong on a "
        f"checkpoint, {right} the other way"
    )
    return "\n".join(lines)
