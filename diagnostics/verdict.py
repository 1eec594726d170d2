"""The pre-merge gate: does the chosen checkpoint pass every blocking policy check?

Fails closed. The verdict is one of

- ``pass`` (exit 0): every blocking check passed on evidence that is present and current;
- ``fail`` (exit 1): a blocking check failed, or no checkpoint is eligible for ``best``;
- ``undecided`` (exit 2): the evidence is missing or untrustworthy -- no results, unreadable or
  other-schema results, the probe errored or a blocking metric was not measured, or the checkpoint
  files changed after they were probed.

The checks come from :func:`diag.diagnostics.checks.evaluate_checkpoint` (the same ones the
recommendation uses); this module only chooses the checkpoint, checks that the evidence is
current, and renders the answer (Markdown for ``$GITHUB_STEP_SUMMARY``, JUnit XML, JSON).

>>> result = gate("runs/diag")                                  # doctest: +SKIP
>>> result.verdict, result.exit_code  # doctest: +SKIP
('pass', 0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from diag.diagnostics.checks import evaluate_checkpoint
from diag.diagnostics.policy import Policy, load_policy
from diag.diagnostics.recommend import judge_sweep, rule
from diag.diagnostics.stored import load_sweep

from diag.errors import DiagError
from diag.metrics import METRICS
from diag.records import (
    SCHEMA_VERSION,
    Check,
    CheckpointRecord,
    Recommendation,
    SweepRecord,
    tool_block,
)

EXIT_CODES = {"pass": 0, "fail": 1, "undecided": 2}
RESULTS_FILE = "results.json"


@dataclass
class GateResult:
    """The gate's answer. ``checks`` are the policy's checks for ``checkpoint``.

    problems: why the gate could not decide (undecided) or why nothing was eligible (fail).
    notes: context that does not change the verdict (e.g. the sweep used another policy).
    """

    verdict: str
    results_dir: str
    checkpoint: dict | None = None
    selected_by: str = "recommended"
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    policy_hash: str | None = None
    policy_source: str = "defaults"
    # nothing eligible: the checkpoint that came closest and its checks (it is not the one judged:
    # ``checkpoint`` stays None, so nothing downstream mistakes it for a pass candidate)
    nearest_miss: dict | None = None
    miss_checks: list[Check] = field(default_factory=list)
    # what the judged checkpoint measured: every metric of diag.metrics.METRICS it has a value for
    measured: list[dict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def failed(self) -> list[Check]:
        """Blocking checks that failed on evidence (the reasons for ``fail``)."""
        return [c for c in self.checks if c.blocking and not c.passed and not c.no_evidence]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if not c.blocking and not c.passed]

    @property
    def headline(self) -> str:
        """'PASS: run-a step 300' / 'FAIL: ...' / 'UNDECIDED: ...', one line."""
        where = checkpoint_name(self.checkpoint) if self.checkpoint else "no checkpoint"
        if self.verdict == "pass":
            return f"PASS: {where} passes every blocking check"
        if self.verdict == "fail" and self.failed:
            return f"FAIL: {where} fails {', '.join(c.name for c in self.failed)}"
        first = self.problems[0] if self.problems else "no evidence"
        if self.verdict == "fail" and not self.checkpoint:  # nothing eligible: its headline
            return f"FAIL: {first}"
        return f"{self.verdict.upper()}: {where}: {first}"

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": tool_block(),
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "headline": self.headline,
            "results_dir": self.results_dir,
            "checkpoint": self.checkpoint,
            "selected_by": self.selected_by,
            "checks": [c.to_dict() for c in self.checks],
            "failed": [c.name for c in self.failed],
            "warnings": [c.name for c in self.warnings],
            "problems": self.problems,
            "notes": self.notes,
            "policy": {"hash": self.policy_hash, "source": self.policy_source},
            "nearest_miss": None
            if self.nearest_miss is None
            else {**self.nearest_miss, "checks": [c.to_dict() for c in self.miss_checks]},
            "measured": self.measured,
        }


def measured_metrics(record: CheckpointRecord, base: CheckpointRecord | None) -> list[dict]:
    """Each metric ``record`` has a value for: value, 95 % interval and the base's value."""
    rows = []
    for name, metric in METRICS.items():
        value = record.metric(name)
        if value is None:
            continue
        st = record.stat(name)
        rows.append(
            {
                "metric": name,
                "label": metric.label,
                "value": value,
                "low": st.low,
                "high": st.high,
                "base": base.metric(name) if base is not None else None,
                "higher_is_better": metric.higher_is_better,
            }
        )
    return rows


def checkpoint_name(ckpt: dict) -> str:
    """'run step N': how the gate names a checkpoint in its sentences (``ckpt``: the gate's
    ``checkpoint`` or ``nearest_miss`` block)."""
    return f"{ckpt.get('run')} step {ckpt.get('step')}"


def gate(
    results_dir: str | os.PathLike,
    *,
    policy: Policy | str | os.PathLike | None = None,
    checkpoint: str | int = "best",
) -> GateResult:
    """Judge one checkpoint of a sweep (``best`` = the policy's recommendation, a STEP or a PATH).

    Never raises for missing or bad evidence (that is an ``undecided`` result, so CI still gets its
    summary and JUnit file); raises :class:`DiagError` only for a bad ``--checkpoint`` or policy.
    """
    if not isinstance(policy, Policy):
        source = f"policy file '{policy}'" if policy is not None else "defaults"
        policy = load_policy(policy)
    else:
        source = "given"
    result = GateResult(
        "undecided", str(results_dir), policy_hash=policy.hash, policy_source=source
    )
    data, results_file, problem = load_results(results_dir)
    if problem:
        result.problems.append(problem)
        return result
    sweep = SweepRecord.coerce(data)
    chosen = _choose(sweep, checkpoint, policy, result)
    if chosen is None:  # _choose set the verdict (nothing eligible) and said why ...
        if sweep.complete is False:  # ... but so far is not evidence of nothing
            result.verdict = "undecided"
            result.problems.insert(0, _unfinished(results_file))
        return result
    result.checkpoint = _identify(chosen, "fingerprint")
    base = sweep.base_for(chosen.run)
    result.checks = evaluate_checkpoint(chosen, base, policy)
    result.measured = measured_metrics(chosen, base)
    stale = _evidence_problems(chosen, sweep, results_file)
    missing = [f"{c.name}: {c.detail}" for c in result.checks if c.blocking and c.no_evidence]
    result.problems += stale + missing
    stored = sweep.recommendation.policy_hash
    if stored and stored != policy.hash:
        result.notes.append(
            f"the sweep recommended with policy {stored}; this gate uses {policy.hash}"
        )
    if chosen.screened_only:
        result.problems.append(screened_only_problem(chosen, sweep, results_file.parent))
    no_change = bool(chosen.no_change)
    if no_change:
        result.problems.append(NO_CHANGE)
    if stale:
        result.verdict = "undecided"  # scores of other (or unknown) weights decide nothing
    elif result.failed or no_change:
        result.verdict = "fail"  # a failure on current evidence decides, whatever else is missing
    elif result.problems:
        result.verdict = "undecided"
    else:
        result.verdict = "pass"
    return result


NO_CHANGE = "this adapter does not change the model: was it trained, and applied?"


def screened_only_problem(record: CheckpointRecord, sweep: SweepRecord, results: Path) -> str:
    """Why a checkpoint the staged sweep only screened cannot pass: the sentence and the fix."""
    import shlex

    asked = sum((record.prompts or {}).values())
    root = Path(sweep.root) if sweep.root else Path("RUNS")
    command = f"diag sweep {shlex.quote(str(root))} --full {shlex.quote(str(record.path))}"
    if results.resolve() != (root / "diag").resolve():
        command += f" --out {shlex.quote(str(results))}"
    return (
        f"only the screen measured it ({asked} prompts), not the full probe suite; measure it "
        f"fully first (with the sweep's --identity): `{command}`"
    )


def load_results(results_dir: str | os.PathLike) -> tuple[dict, Path, str | None]:
    """(results dict, results.json path, problem): the sweep's own loader, with its refusal
    (missing, invalid JSON, other schema version) turned into a sentence instead of an error."""
    path = Path(results_dir)
    file = path if path.suffix == ".json" else path / RESULTS_FILE
    try:
        data = load_sweep(path).data
    except DiagError as exc:
        return {}, file, exc.problem
    except OSError as exc:
        return {}, file, f"'{file}' is unreadable: {exc.strerror or exc}"
    if not isinstance(data.get("checkpoints"), list):
        return {}, file, f"'{file}' is not a diag sweep result (no checkpoints list)"
    return data, file, None


def _identify(record: CheckpointRecord, *extra: str) -> dict:
    """The gate's block naming a checkpoint: run, step, path, format (+ ``extra`` fields)."""
    return {k: getattr(record, k) for k in ("run", "step", "path", "format", *extra)}


def _choose(
    sweep: SweepRecord, checkpoint: str | int, policy: Policy, result: GateResult
) -> CheckpointRecord | None:
    """The record to judge; on ``None`` the verdict and problems are already set."""
    candidates = [r for r in sweep.checkpoints if r.step not in (None, 0)]
    wanted = str(checkpoint).strip()
    if wanted == "best":
        pick = _recommendation(sweep, policy)
        if pick.step is None:
            result.verdict = "fail"
            result.problems += [pick.verdict or "no checkpoint is eligible"]
            result.problems += list(pick.reasons)
            result.notes += [f"next: {step}" for step in pick.next_steps]
            _judge_nearest_miss(pick.nearest_miss, candidates, sweep, policy, result)
            return None
        result.selected_by = "recommended"
        return next(
            r for r in candidates if (r.run, r.step, r.path) == (pick.run, pick.step, pick.path)
        )
    if wanted.isdigit():
        matches = [r for r in candidates if r.step == int(wanted)]
        if len(matches) > 1:
            runs = ", ".join(sorted(str(r.run) for r in matches))
            raise DiagError(
                f"step {wanted} exists in several runs ({runs})",
                fix="pass --checkpoint PATH to say which one",
            )
        result.selected_by = f"--checkpoint {wanted}"
    else:
        target = _resolved(wanted)  # a path given here is relative to here
        matches = [
            r
            for r in candidates
            if r.path == wanted or record_path(r, sweep, result.results_dir) == target
        ]
        result.selected_by = "--checkpoint PATH"
    if not matches:
        known = ", ".join(f"{r.run}:{r.step}" for r in candidates[:12]) or "none"
        raise DiagError(
            f"checkpoint '{wanted}' is not in the sweep results (known: {known})",
            fix="pass best, a step the sweep probed, or a checkpoint path; re-run `diag sweep` "
            "if the checkpoint is new",
        )
    return matches[0]


def _recommendation(sweep: SweepRecord, policy: Policy) -> Recommendation:
    """The sweep's stored recommendation when it was made under this policy and choice rule;
    otherwise the recommendation this policy makes of the same stored scores."""
    stored = sweep.recommendation
    if (
        stored.policy_hash == policy.hash
        and stored.verdict is not None
        and stored.rule == rule(policy)
    ):
        return stored
    return judge_sweep(sweep, policy)  # another policy, or an older diag's rule


def _judge_nearest_miss(miss, candidates, sweep: SweepRecord, policy, result: GateResult) -> None:
    """Every policy check of the nearest miss, so CI shows which check kept it from shipping."""
    if not miss:
        return
    wanted = (miss.run, miss.step, miss.path)
    record = next((r for r in candidates if (r.run, r.step, r.path) == wanted), None)
    if record is None:
        return
    result.nearest_miss = _identify(record)
    result.miss_checks = evaluate_checkpoint(record, sweep.base_for(record.run), policy)


def _resolved(path: str | os.PathLike) -> str:
    return str(Path(path).expanduser().resolve())


def record_path(
    record: CheckpointRecord | dict, sweep: SweepRecord | dict, results_dir: str
) -> str | None:
    """Where a record's checkpoint lives on this machine.

    The sweep stores paths as it found them: absolute, or relative to where it ran. A relative
    path is tried from here, then re-rooted on the sweep's absolute ``root`` and on the folder
    above the results (``runs/diag`` -> ``runs``), dropping leading parts that name the root.
    """
    record, sweep = CheckpointRecord.coerce(record), SweepRecord.coerce(sweep)
    raw = record.path
    if not raw:
        return None
    path = Path(raw).expanduser()
    if path.is_absolute():
        return _resolved(path)
    if path.exists():
        return _resolved(path)
    roots = [Path(sweep.root)] if sweep.root else []
    roots += [Path(results_dir).parent, Path(results_dir)]
    for root in roots:
        for skip in range(len(path.parts)):
            candidate = root.joinpath(*path.parts[skip:])
            if candidate.exists():
                return _resolved(candidate)
    return _resolved(path)


def _evidence_problems(
    record: CheckpointRecord, sweep: SweepRecord, results_file: Path
) -> list[str]:
    """Reasons the stored scores may not describe the checkpoint's current files."""
    problems = []
    if sweep.complete is False:
        problems.append(_unfinished(results_file))
    where = record_path(record, sweep, str(results_file.parent))
    if where is None or not Path(where).exists():
        return problems + [
            f"checkpoint files '{record.path}' not found, so the results cannot be "
            "checked against them (run the gate where the checkpoints are)"
        ]
    stored = str(record.fingerprint or "")
    if stored.startswith(FINGERPRINT_PREFIX):
        current = current_fingerprint(Path(where))
        if current != stored:
            problems.append(
                f"checkpoint '{record.path}' changed after it was probed (fingerprint "
                f"{current or 'unavailable'} != {stored}; re-run `diag sweep`)"
            )
        return problems
    # No content fingerprint to compare: fall back to file times.
    files = [where] if Path(where).is_file() else sorted(Path(where).rglob("*"))
    newest = max((Path(f).stat().st_mtime for f in files if Path(f).is_file()), default=0.0)
    if newest > results_file.stat().st_mtime:
        changed = datetime.fromtimestamp(newest, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        problems.append(
            f"checkpoint '{record.path}' changed at {changed}, after the results were "
            "written (re-run `diag sweep`)"
        )
    return problems


def _unfinished(results_file: Path) -> str:
    return f"the sweep in '{results_file.parent}' did not finish (complete: false)"


FINGERPRINT_PREFIX = "blake2b:"  # diag.diagnostics.cache.Fingerprinter's content hashes


def current_fingerprint(path: Path) -> str | None:
    """The content fingerprint of the checkpoint at ``path`` now, computed as the sweep does.

    Re-hashes the weight files in full (no memo: a rewrite that keeps size and mtime must still be
    caught). None when ``path`` is no longer a recognisable checkpoint.
    """
    from diag.diagnostics.cache import Fingerprinter
    from diag.diagnostics.discover import discover

    target = path.resolve()
    match = None
    # The checkpoint alone first (cheap); its parent for formats recognised by their surroundings
    # (DeepSpeed's global_stepN next to a `latest` file).
    for root in (target, target.parent):
        found = discover(root, settle_seconds=0).checkpoints
        match = next((c for c in found if c.is_at(target)), None)
        if match is not None:
            break
    if match is None:
        return None
    return Fingerprinter(None).fingerprint(
        match.files, root=match.path if match.path.is_dir() else None
    )
