"""The staged sweep's second stage: which screened checkpoints the full probe suite must measure.

A staged sweep screens every checkpoint (a fixed subset of prompts in the identity's languages),
then spends the full suite only where the decision is made. Pure: records in, checkpoints out.

The rule, applied per run to the current mix of screened and fully measured checkpoints, and
repeated (the sweep measures what it names, judges again, asks again) until it names nothing new:

1. **Decisive**: the run's pick (or its nearest miss when nothing is eligible), the checkpoints
   just before and after it (not one whose screen shows for certain it has not learned the
   identity), and the two checkpoints either side of the onset.
2. **Not told apart from the pick**: a screened checkpoint whose screen verdict the full suite
   could overturn in a way that changes the decision:
   - before the pick, one that is eligible on the screen, or whose every failed blocking check is
     *unsettled* (it could be the earliest eligible checkpoint);
   - after the pick and before the onset, one that could be eligible with an identity recall
     above the plateau the pick was chosen on (it could move the plateau);
   - in the failing tail, one whose every failed collapse check is unsettled (it could be
     healthy, which moves the onset).

3. **Nothing eligible**: what the nearest miss (or the headline without one) rests on: the
   screen's two nearest contenders and their neighbours when every checkpoint is screened; a
   screened contender that looks nearer even on the screen than the fully measured miss; the
   window's edges (the first checkpoint that learned, and the one before); the run's last
   checkpoint. A contender whose full suite stopped early is measured again, asking everything:
   the nearest miss is chosen on exact numbers (``diagnostics/nearest.py``).

A check is *settled* when the prompts not yet asked cannot overturn it (:func:`settled`). Only
full-suite checkpoints can be picked in the end: a screened pick is decisive and gets measured,
and the loop judges again. :func:`stop_rule` is the sequential stopping inside one checkpoint's
full suite. ``docs/sweep.md`` says all of this for users.
"""

from __future__ import annotations

from collections import defaultdict

from diag.diagnostics.checks import evaluate_checkpoint
from diag.diagnostics.judged import Judged
from diag.diagnostics.nearest import contenders, miss_order
from diag.diagnostics.policy import Policy
from diag.diagnostics.recommend import judge_sweep
from diag.probes.registry import reads

from diag.metrics import taught, with_symptom
from diag.records import Check, CheckpointRecord, SweepRecord, find_base
from diag.stats import wilson_interval

COLLAPSE = set(with_symptom("parrot", "forgetting"))


def key(record: CheckpointRecord) -> tuple[str, int, str]:
    return (str(record.run), record.step, str(record.path))


def to_promote(sweep: SweepRecord, policy: Policy) -> list[CheckpointRecord]:
    """The checkpoints of ``sweep`` that the full suite must measure next, in run and step order
    (empty: the decision rests on full-suite checkpoints only): screened-only ones, and, where
    nothing is eligible, nearest-miss contenders whose full suite stopped early (their exact
    numbers decide the nearest miss, so they are asked everything)."""
    judged = judge_sweep(sweep, policy)
    checks = {(str(j.run), j.step, str(j.path)): j.checks for j in judged.checks}
    by_run: dict[str, list[CheckpointRecord]] = defaultdict(list)
    for record in sweep.checkpoints:
        if record.step and record.ok:
            by_run[str(record.run)].append(record)
    wanted: list[CheckpointRecord] = []
    for run, records in sorted(by_run.items()):
        records.sort(key=lambda r: (r.step, str(r.path)))
        pick = judged.runs.get(run)
        if pick is None:
            continue
        base = find_base(sweep.checkpoints, run)
        chosen = _decisive(records, pick, checks, policy, base)
        chosen |= _undecided(records, pick, checks, policy)
        chosen |= _unlearned_after_learning(records, checks)
        again: set[tuple] = set()
        if pick.step is None:
            judged_run = [Judged(r, base, checks.get(key(r), []), False) for r in records]
            chosen |= _nothing_eligible(judged_run, pick, policy)
            again = _stopped_contenders(judged_run, policy)
        wanted += [r for r in records if (key(r) in chosen and r.screened_only) or key(r) in again]
    return wanted


def _decisive(records: list, pick, checks: dict, policy: Policy, base=None) -> set[tuple]:
    """The pick (or nearest miss), its two neighbours and the checkpoints either side of the onset.

    A neighbour of the pick whose screen already fails identity recall for certain (however the
    full suite's other identity prompts were answered) cannot be eligible and is not measured: its
    screen says all the pick's reasons need ("earlier, step 30 (screen only): ... not yet
    learned"). Every other neighbour is, as a margin where the screen's intervals could mislead.
    ``base``: the run's base record (probed with the full suite: how many identity prompts it has).
    """
    steps = [r.step for r in records]
    anchor = pick.step if pick.step is not None else getattr(pick.nearest_miss, "step", None)
    out: set[tuple] = set()
    if anchor in steps:
        i = steps.index(anchor)
        measured = [r for r in [base, *records] if r is not None and not r.screened_only]
        full_n = full_counts(measured).get("identity_recall", 0)
        for r in records[max(0, i - 1) : i + 2]:
            skip = (
                r.step != anchor
                and pick.step is not None
                and _surely_unlearned(r, checks, policy, full_n)
            )
            if not skip:
                out.add(key(r))
    if pick.onset is not None:
        edges = (pick.onset.healthy_until, pick.onset.collapsing_from)
        out.update(key(r) for r in records if r.step in edges)
    return out


def _surely_unlearned(record: CheckpointRecord, checks: dict, policy: Policy, full_n: int) -> bool:
    """A screened checkpoint whose identity recall fails however the full suite's other identity
    prompts were answered (exact, not an interval: see :func:`recall_range`)."""
    failed = any(c.name == "identity_recall" and not c.passed for c in checks.get(key(record), []))
    return (
        record.screened_only
        and failed
        and _identity_settled(record, policy.identity_min_low, full_n)
    )


def _unlearned_after_learning(records: list[CheckpointRecord], checks: dict) -> set[tuple]:
    """Screens that stopped on "learned nothing yet" (:class:`ScreenStop`) after a checkpoint of
    the run that had learned: a run that unlearns what it was taught is collapsing or broken, and
    the screen did not ask what would say which; the full suite does."""
    learned = [r.step for r in records if Judged(r, None, checks.get(key(r), []), False).learned]
    if not learned:
        return set()
    return {
        key(r)
        for r in records
        if r.step > learned[0] and any(i.get("asked") == 0 for i in (r.stopped or {}).values())
    }


def _nothing_eligible(judged: list[Judged], pick, policy: Policy) -> set[tuple]:
    """Nothing eligible in the run: what its nearest miss, or the headline without one, rests on.

    - every screened checkpoint screened: the screen's two nearest contenders and their neighbours;
    - a screened contender that looks nearer even on the screen than the fully measured miss;
    - the window's edges: the first checkpoint that learned and the one before it;
    - the last checkpoint (the headline says how far the run had learned by then).
    """
    records = [j.record for j in judged]
    rivals = sorted(contenders(judged, policy), key=miss_order)
    out: set[tuple] = set()
    if all(r.screened_only for r in records):
        for j in rivals[:2]:
            i = records.index(j.record)
            out.update(key(r) for r in records[max(0, i - 1) : i + 2])
    miss = pick.nearest_miss
    named = next(
        (j for j in judged if miss and key(j.record) == (miss.run, miss.step, miss.path)), None
    )
    bar = miss_order(named) if named and not named.record.screened_only else None
    out.update(
        key(j.record)
        for j in rivals
        if j.record.screened_only and (bar is None or miss_order(j) < bar)
    )
    first = next((i for i, j in enumerate(judged) if j.learned), None)
    if first is not None:
        out.update(key(r) for r in records[max(0, first - 1) : first + 1])
    if records:
        out.add(key(records[-1]))
    return out


def _stopped_contenders(judged: list[Judged], policy: Policy) -> set[tuple]:
    """Fully measured contenders whose full suite stopped early: measured again, asking every
    prompt, so that the nearest miss is chosen on the numbers an exhaustive sweep would have."""
    return {
        key(j.record)
        for j in contenders(judged, policy)
        if not j.record.screened_only and j.record.stopped
    }


def _undecided(records, pick, checks: dict, policy: Policy) -> set[tuple]:
    """Screened checkpoints whose screen verdict could be overturned where it would matter."""
    anchor = pick.step
    onset = pick.onset.collapsing_from if pick.onset is not None else None
    full = full_counts([r for r in records if not r.screened_only])
    full_n = full.get("identity_recall", 0)
    floor = top = None  # the recall a checkpoint needs to be on the pick's plateau, and above it
    if anchor is not None:
        chosen = next(r for r in records if r.step == anchor)
        recall = chosen.metric("identity_recall") or 0.0
        floor, top = recall - policy.plateau_tolerance, recall + policy.plateau_tolerance
    out: set[tuple] = set()
    for record in records:
        if not record.screened_only:
            continue
        mine = checks.get(key(record), [])
        failed = [c for c in mine if c.blocking and not c.passed]
        open_ = all(not settled(c, record, policy, full) for c in failed)  # could pass them all
        _, high = recall_range(record, full_n)
        if anchor is not None and record.step < anchor:
            if open_ and high is not None and high >= floor - 1e-12:
                out.add(key(record))  # it could be the earliest checkpoint on the plateau
        elif anchor is not None and (onset is None or record.step < onset):
            if open_ and high is not None and high > top + 1e-12:
                out.add(key(record))  # it could raise the plateau
        elif onset is not None and record.step >= onset:
            collapse = [c for c in failed if c.name in COLLAPSE]
            if collapse and all(not settled(c, record, policy, full) for c in collapse):
                out.add(key(record))
        elif anchor is None and open_ and failed:
            out.add(key(record))  # nothing eligible and no onset: any that could pass
    return out


def full_counts(measured: list[CheckpointRecord]) -> dict[str, int]:
    """How many prompts each metric rests on in the full suite, read off fully measured records."""
    counts: dict[str, int] = {}
    for record in measured:
        for name, st in (record.stats or {}).items():
            counts[name] = max(counts.get(name, 0), st.n or 0)
    return counts


def recall_range(record: CheckpointRecord, full_n: int) -> tuple[float | None, float | None]:
    """The identity recall the full suite could find for a screened checkpoint.

    The screen's identity prompts are a subset of the full suite's: with k of n screened prompts
    answered and N asked in full, the full recall lies in [k/N, (k + N - n)/N] exactly. Without a
    full-suite count to go by, the screen's own 95 % interval.
    """
    st = record.stat("identity_recall")
    if st.n and st.successes is not None and full_n >= st.n:
        return st.successes / full_n, (st.successes + full_n - st.n) / full_n
    return st.low, st.high


def settled(
    check: Check, record: CheckpointRecord, policy: Policy, full: dict[str, int] | None = None
) -> bool:
    """Whether the verdict on ``check``, measured on fewer prompts than the full suite asks,
    stands however the rest would answer. ``full``: each metric's full-suite prompt count.

    - identity recall: the screen's prompts are a subset of the full suite's, so the full recall
      lies in a known range; settled when the Wilson lower bound is on one side at both ends;
    - loop rate (fails only when its lower bound is above the limit): settled when the rest
      answering at either end of the 95 % interval leaves the lower bound on the same side;
    - retention (a paired test): a significant loss stands; a pass stands when the point value
      itself clears the margin;
    - every other check: the threshold lies outside the metric's 95 % interval.
    """
    full = full or {}
    if check.name == "status" or check.value is None or check.threshold is None:
        return True
    if check.name == "retention":
        return not check.passed or check.value >= check.threshold
    st = record.stat(check.name)
    if check.name == "identity_recall":  # the check compares the Wilson lower bound
        return _identity_settled(record, check.threshold, full.get(check.name, 0))
    if st.low is None or st.high is None:
        return False
    rest = full.get(check.name, 0) - (st.n or 0)
    if check.name == "loop_rate" and rest > 0 and st.successes is not None:
        total = st.n + rest
        if check.passed:
            low, _ = wilson_interval(st.successes + st.high * rest, total)
            return low <= check.threshold
        low, _ = wilson_interval(st.successes + st.low * rest, total)
        return low > check.threshold
    return not (st.low <= check.threshold <= st.high)


def _identity_settled(record: CheckpointRecord, limit: float, full_n: int) -> bool:
    st = record.stat("identity_recall")
    if not (st.n and st.successes is not None and full_n >= st.n):
        return st.low is not None and st.high is not None and not (st.low < limit <= st.high)
    deff = float(st.extra.get("design_effect") or 1.0)
    worst, _ = wilson_interval(st.successes / deff, full_n / deff)
    best, _ = wilson_interval((st.successes + full_n - st.n) / deff, full_n / deff)
    return worst >= limit or best < limit


def stop_rule(
    base: CheckpointRecord | None,
    policy: Policy,
    sizes: dict[str, int],
    judged_on: list[str] | None = None,
) -> SetStop:
    """The full suite's sequential stopping rule for a checkpoint (:class:`SetStop`)."""
    return SetStop(base, policy, sizes, judged_on)


class SetStop:
    """Sequential stopping for the full suite: ``enough(run so far)`` -> {set: checks}.

    Only a checkpoint that already fails a blocking check on settled evidence stops early (it
    cannot be eligible; a checkpoint that may still ship is asked every prompt, so its intervals
    are the full suite's). Then a probe set needs no more prompts once every blocking check that
    reads it is settled, pass or fail: its verdict stands however the rest would answer.
    ``sizes``: how many prompts each probe set has in full; ``judged_on``: what the run taught
    (the record's, see :func:`diag.diagnostics.checks.applies`). A class, not a closure: a task
    that carries it is sent to worker processes by plain pickle.
    """

    def __init__(self, base, policy: Policy, sizes: dict[str, int], judged_on: list | None):
        self.base, self.policy, self.sizes, self.judged_on = base, policy, sizes, judged_on

    def __call__(self, run) -> dict[str, list[str]]:
        record, blocking = _judge_so_far(run, self.base, self.policy, self.judged_on)
        # a metric over a set's answers rests on all of them when the set is asked in full
        general = self.sizes.get("general", 0)
        full = {c.name: general for c in blocking if reads(c.name) == ("general",)}
        if not any(not c.passed and settled(c, record, self.policy, full) for c in blocking):
            return {}
        done = {}
        for set_name in run.summary.get("counts") or {}:
            readers = [c for c in blocking if set_name in reads(c.name)]
            if readers and all(settled(c, record, self.policy, full) for c in readers):
                done[set_name] = [c.name for c in readers]
        return done


def _judge_so_far(run, base, policy: Policy, judged_on) -> tuple[CheckpointRecord, list[Check]]:
    """A checkpoint's record from the answers asked so far, and its blocking checks."""
    from diag.diagnostics.collected import fill_record

    record = fill_record(CheckpointRecord(judged_on=judged_on), run.summary)
    return record, [c for c in evaluate_checkpoint(record, base, policy) if c.blocking]


class ScreenStop:
    """Sequential stopping for the screen: ``enough(run so far)`` -> {set: checks}.

    The sets that say whether the run has learned anything yet (identity; a task's questions) are
    asked first, alone (``first``). A checkpoint that has learned nothing yet is asked nothing
    else: its taught checks all fail on settled evidence (the full suite's remaining prompts
    could not make them pass) and none of its taught metrics is significantly above the base's
    (it is no nearest-miss contender either). Its other sets are recorded as stopped after 0
    prompts and their checks are not judged (:func:`diag.diagnostics.checks.applies`). Anything
    else gets the whole screen. ``screen``/``full``: prompts per set in the screen / full suite.
    """

    def __init__(self, base, policy: Policy, screen: dict, full: dict, judged_on: list | None):
        self.base, self.policy, self.screen, self.full = base, policy, screen, full
        self.judged_on = judged_on
        self.first = tuple(s for s in screen if any(s in reads(m) for m in taught()))

    def __call__(self, run) -> dict[str, list[str]]:
        from diag.diagnostics.distance import progress

        record, blocking = _judge_so_far(run, self.base, self.policy, self.judged_on)
        mine = [c for c in blocking if c.name in taught()]
        full = {c.name: self.full.get(reads(c.name)[0], 0) for c in mine if reads(c.name)}
        if not mine or any(c.passed or not settled(c, record, self.policy, full) for c in mine):
            return {}
        if progress(record, self.base) > 0:
            return {}  # learned part of it: a contender, screened in full
        return {s: [c.name for c in mine] for s in self.screen if s not in self.first}
