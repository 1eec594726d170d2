"""``diag merge``: choose a checkpoint, ask the gate, and only then merge it into its base.

Data flow: SOURCE (a sweep's results dir, a run folder or one checkpoint) -> the checkpoint to
merge -> the gate's verdict on it (the sweep's evidence, same policy) -> refuse unless it passes or
``force`` -> :func:`diag.backend.merge_weights.merge_adapter` (torch, imported only here, lazily).

XTuner ``iter_N.pth`` files and ``.pth/`` DeepSpeed folders are converted in memory with the
sweep's reader (:mod:`diag.backend.checkpoints`), so XTuner users skip ``pth_to_hf`` + ``merge``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from diag.diagnostics.discover import Checkpoint, discover
from diag.diagnostics.verdict import (
    GateResult,
    current_fingerprint,
    gate,
    load_results,
    record_path,
)

from diag.errors import DiagError
from diag.records import CheckpointRecord, SweepRecord

log = logging.getLogger("diag")

RESULTS_FILE = "results.json"


@dataclass
class MergePlan:
    """What would be merged, into which base, and what the gate said about it (None: no sweep
    results cover the checkpoint, so there is no evidence at all)."""

    checkpoint: Checkpoint
    base: str | None
    gate: GateResult | None
    results_dir: Path | None
    record: CheckpointRecord | None  # the sweep's record of it

    @property
    def approved(self) -> bool:
        return self.gate is not None and self.gate.verdict == "pass"

    def refusal(self) -> str:
        """Why the gate does not approve, in one sentence with the numbers."""
        where = f"{self.checkpoint.run} step {self.checkpoint.step}"
        if self.gate is None:
            return f"no sweep results cover {where} ('{self.checkpoint.path}'), so it is ungated"
        if self.gate.failed:
            details = "; ".join(f"{c.name}: {c.detail}" for c in self.gate.failed)
            return f"the gate fails {where}: {details}"
        return f"the gate could not decide on {where}: {'; '.join(self.gate.problems) or 'no evidence'}"


def plan_merge(
    source: str | os.PathLike,
    checkpoint: str | int = "best",
    *,
    policy=None,
    base: str | None = None,
) -> MergePlan:
    """Find the checkpoint ``source`` + ``checkpoint`` name and the gate's verdict on it.

    source: a sweep's results dir (or its results.json), a run folder, or a checkpoint.
    checkpoint: ``best`` (the policy's recommendation), a STEP, or a checkpoint PATH.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise DiagError(
            f"'{source}' does not exist",
            fix="pass a sweep's results dir, a run folder or a checkpoint",
        )
    results_dir = _results_dir_of(path)
    if results_dir is not None:
        verdict = gate(results_dir, policy=policy, checkpoint=checkpoint)
        record = _record_for(verdict, results_dir)
        if record is None:
            raise DiagError(
                f"nothing to merge from '{source}': {verdict.headline}",
                fix="pass --checkpoint STEP to choose one (and --force if the gate fails it)",
            )
        sweep = SweepRecord.coerce(load_results(results_dir)[0])
        where = record_path(record, sweep, str(results_dir))
        ckpt = _discover_one(Path(where or record.path))
        return _plan(ckpt, verdict, results_dir, record, base)
    ckpt = _select_in_run(path, checkpoint, policy)
    results_dir = _results_covering(ckpt.path)
    if results_dir is None:
        return MergePlan(ckpt, _fallback_base(ckpt, base), None, None, None)
    verdict = gate(results_dir, policy=policy, checkpoint=str(ckpt.path.resolve()))
    return _plan(ckpt, verdict, results_dir, _record_for(verdict, results_dir), base)


def _plan(ckpt, verdict, results_dir, record, base_flag) -> MergePlan:
    probed_base = record.base if record is not None else None
    if base_flag and probed_base and _same_base(base_flag, probed_base) is False:
        raise DiagError(
            f"--base '{base_flag}' is not the base '{probed_base}' the sweep probed this checkpoint "
            "with, so the gate's evidence would not hold for the merge",
            fix="drop --base, or sweep again with --base",
        )
    return MergePlan(
        ckpt, probed_base or _fallback_base(ckpt, base_flag), verdict, results_dir, record
    )


def _same_base(a: str, b: str) -> bool | None:
    from diag.models import resolve_base

    try:
        return resolve_base(a).name == resolve_base(b).name
    except DiagError:
        return None


def _fallback_base(ckpt: Checkpoint, flag: str | None) -> str:
    """No sweep record: --base, else what the checkpoint or its run names (as the sweep chooses)."""
    from diag.diagnostics.plan import choose_base

    return choose_base(ckpt, flag, None)


def _results_dir_of(path: Path) -> Path | None:
    if path.is_file() and path.name == RESULTS_FILE:
        return path.parent
    if path.is_dir() and (path / RESULTS_FILE).is_file():
        return path
    return None


def _results_covering(ckpt_path: Path, levels: int = 4) -> Path | None:
    """The nearest sweep results in a folder above the checkpoint that list this checkpoint:
    ``<dir>/diag/`` (the sweep's default ``--out``), ``<dir>/results/`` (``diag demo``) or
    ``<dir>/`` itself."""
    target = str(ckpt_path.resolve())
    folder = ckpt_path.resolve()
    for _ in range(levels):
        folder = folder.parent
        for candidate in (folder / "diag", folder / "results", folder):  # sweep, demo layouts
            if not (candidate / RESULTS_FILE).is_file():
                continue
            data, _, problem = load_results(candidate)
            if problem:
                continue
            sweep = SweepRecord.coerce(data)
            for record in sweep.checkpoints:
                if record.step and record_path(record, sweep, str(candidate)) == target:
                    return candidate
    return None


def _record_for(verdict: GateResult, results_dir: Path) -> CheckpointRecord | None:
    if verdict.checkpoint is None:
        return None
    sweep = SweepRecord.coerce(load_results(results_dir)[0])
    ck = verdict.checkpoint
    wanted = (ck["run"], ck["step"], ck["path"])
    return next((r for r in sweep.checkpoints if (r.run, r.step, r.path) == wanted), None)


def _discover_one(path: Path) -> Checkpoint:
    """The checkpoint at ``path``, with its run's settings (LoRA alpha, chat format)."""
    target = path.resolve()
    for root in (target.parent, target):
        if not root.exists():
            continue
        found = discover(root, settle_seconds=0).checkpoints
        match = next((c for c in found if c.is_at(target)), None)
        if match is not None:
            return match
    raise DiagError(
        f"checkpoint '{path}' is not there any more (or not a checkpoint diag recognises)",
        fix="run the merge where the checkpoints are",
    )


def _select_in_run(path: Path, checkpoint: str | int, policy=None) -> Checkpoint:
    """A checkpoint under a run folder (or the checkpoint ``path`` itself)."""
    found = discover(path, settle_seconds=0).checkpoints
    if not found:
        raise DiagError(
            f"no checkpoints found under '{path}'", fix="pass a run folder or a checkpoint"
        )
    if len(found) == 1 and found[0].path.resolve() == path.resolve():
        return _discover_one(path)  # found from its run folder: the run's manifest and settings
    wanted = str(checkpoint).strip()
    if wanted == "best":
        if len(found) == 1:
            return found[0]
        results = _results_covering(found[0].path)
        if results is None:
            raise DiagError(
                f"--checkpoint best needs sweep results, and none cover '{path}'",
                fix=f"run `diag sweep {path}` first, or pass --checkpoint STEP",
            )
        verdict = gate(results, policy=policy, checkpoint="best")
        if verdict.checkpoint is None:
            raise DiagError(f"nothing to merge from '{path}': {verdict.headline}")
        wanted = str(verdict.checkpoint["step"])
        found = [c for c in found if c.run == verdict.checkpoint["run"]] or found
    if wanted.isdigit():
        matches = [c for c in found if c.step == int(wanted)]
    else:
        target = Path(wanted).expanduser().resolve()
        matches = [c for c in found if c.is_at(target)]
    if len(matches) > 1:
        runs = ", ".join(sorted(c.run for c in matches))
        raise DiagError(f"step {wanted} exists in several runs ({runs})", fix="pass the run folder")
    if not matches:
        steps = ", ".join(str(c.step) for c in found[:20])
        raise DiagError(f"no checkpoint '{wanted}' under '{path}' (steps: {steps})")
    return matches[0]


def merge(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    checkpoint: str | int = "best",
    policy=None,
    force: bool = False,
    base: str | None = None,
    allow_pickle: bool = False,
    lora_alpha: float | None = None,
    trust_remote_code: bool = False,
) -> tuple[Path, MergePlan]:
    """Merge the chosen checkpoint into its base if the gate passes it (or ``force``).

    Raises :class:`DiagError` naming the failed checks when the gate does not approve.

    >>> merge("runs/diag", "merged/")                                    # doctest: +SKIP
    """
    plan = plan_merge(source, checkpoint, policy=policy, base=base)
    if not plan.approved and not force:
        raise DiagError(
            f"refusing to merge: {plan.refusal()}",
            fix=(
                "run `diag sweep` over its run first, or pass --force to merge it ungated"
                if plan.gate is None
                else "merge the recommended checkpoint, or pass --force to merge it anyway"
            ),
        )
    if not plan.approved:
        log.warning("merging anyway (--force): %s", plan.refusal())
    from diag.backend.merge_weights import merge_adapter

    adapter = adapter_source(plan.checkpoint, allow_pickle=allow_pickle, lora_alpha=lora_alpha)
    record = provenance(plan, force)
    out_path = merge_adapter(
        adapter,
        out,
        base=plan.base,
        provenance=record,
        chat=record["chat"],
        trust_remote_code=trust_remote_code,
    )
    return out_path, plan


def adapter_source(
    ckpt: Checkpoint, *, allow_pickle: bool = False, lora_alpha: float | None = None
):
    """The LoRA adapter of ``ckpt``: its folder, or XTuner/DeepSpeed weights converted in memory.

    The sweep's own :func:`~diag.backend.checkpoints.apply_checkpoint` does the reading (pickle
    refusal, key renaming, LoRA alpha), handing the adapter to a :class:`_AdapterSink` instead of a
    model, so merge converts checkpoints exactly as the sweep probed them.
    """
    from diag.backend.checkpoints import apply_checkpoint

    if ckpt.format == "full-model":
        raise DiagError(
            f"'{ckpt.path}' is a full model, not a LoRA adapter: nothing to merge",
            fix="load that folder directly with transformers",
        )
    sink = _AdapterSink(ckpt)
    apply_checkpoint(sink, ckpt, allow_pickle=allow_pickle, lora_alpha=lora_alpha)
    return sink.source


class _AdapterSink:
    """Stands where apply_checkpoint expects a backend and keeps the adapter it is given."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt, self.source, self.name = ckpt, None, "merge"

    def use_adapter(self, adapter_dir) -> None:
        from diag.backend.merge_weights import AdapterSource

        self.source = AdapterSource(str(self.ckpt.path), adapter_dir=Path(adapter_dir))

    def use_adapter_weights(self, key: str, lora_config: dict, state_dict: dict) -> None:
        from diag.backend.merge_weights import AdapterSource

        self.source = AdapterSource(key, lora_config=lora_config, state_dict=state_dict)

    @property
    def model(self):  # only asked for when the checkpoint holds full weights
        raise DiagError(
            f"'{self.ckpt.path}' holds full weights, not LoRA weights: nothing to merge",
            fix="convert it with your trainer's own tool (e.g. xtuner convert pth_to_hf)",
        )


def provenance(plan: MergePlan, forced: bool) -> dict:
    """What ``diag-merge.json`` records besides the backend's own fields."""
    ckpt = plan.checkpoint
    record = plan.record or CheckpointRecord()
    chat = record.chat or (ckpt.chat.to_dict() if ckpt.chat else None)
    gate_block = None
    if plan.gate is not None:
        g = plan.gate.to_dict()
        gate_block = {
            k: g[k]
            for k in (
                "verdict",
                "exit_code",
                "headline",
                "failed",
                "warnings",
                "problems",
                "policy",
            )
        }
        gate_block["results_dir"] = str(plan.results_dir)
    return {
        "source": {
            "checkpoint": str(ckpt.path),
            "run": ckpt.run,
            "step": ckpt.step,
            "format": ckpt.format,
            "fingerprint": current_fingerprint(ckpt.path),
            "probed_fingerprint": record.fingerprint,
        },
        "gate": gate_block or {"verdict": "ungated", "problems": [plan.refusal()]},
        "forced": bool(forced and not plan.approved),
        "chat": chat,
    }
