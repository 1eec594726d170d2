"""Probing one base and its checkpoints: cache hits at once, the rest through the workers.

The runner alone reads the cache and adds to the results; workers (this process or Ray actors)
get tasks and send back outcomes. The base is probed once per prompt format and per target (what
the runs on it were taught), with the widest stage; each narrower stage compares checkpoints with
the base's answers to that stage's own prompts (its reference is cut from the same records).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from diag.diagnostics.cache import Fingerprinter, cache_key
from diag.diagnostics.discover import Checkpoint
from diag.diagnostics.outdir import writing
from diag.diagnostics.stages import Stage
from diag.diagnostics.workers import Outcome, ProbeTask

from diag.backend.tokenizer_check import base_tokenizer_key
from diag.errors import DiagError
from diag.formats.layouts import shards
from diag.formats.safetensors_header import check_header, widest_dimension
from diag.models import resolve_base
from diag.records import CheckpointRecord
from diag.types import ChatFormat

log = logging.getLogger("diag")


def base_fingerprint(name: str, fingerprints: Fingerprinter) -> str:
    """Content fingerprint of a base model's weights (the GGUF until it has been converted)."""
    source = resolve_base(name)
    if source.gguf_file and not (source.cache_dir and (source.cache_dir / "config.json").is_file()):
        return fingerprints.fingerprint([source.path / source.gguf_file])
    files, _ = shards(source.path)
    return fingerprints.fingerprint(files or [source.path / "config.json"], root=source.path)


def base_widest(name: str) -> int | None:
    """The widest dimension of a base model (from its config.json; None before the embedded
    GGUF is converted): no tensor of a checkpoint of it is wider."""
    source = resolve_base(name)
    folder = source.cache_dir if source.gguf_file else source.path
    return widest_dimension(folder / "config.json") if folder else None


def checkpoint_record(ckpt: Checkpoint, base: str | None, chat: ChatFormat | None, **more):
    """A checkpoint's row, before anything is measured."""
    return CheckpointRecord(
        run=ckpt.run,
        step=ckpt.step,
        path=str(ckpt.path),
        format=ckpt.format,
        label=ckpt.label,
        also=[str(p) for p in ckpt.aliases],
        base=base,
        chat=chat.to_dict() if chat else None,
        **more,
    )


def save_partial(state, fingerprints) -> None:
    """Write the results so far and the fingerprint memo (after every checkpoint)."""
    with writing(state.out):
        state.write_partial()
        fingerprints.save()


class BaseRunner:
    """Probes one base and its checkpoints through ``workers``, which load the model only when a
    cache miss needs it.

    targets: target key -> (the identity, the task) judged against (None where there is none);
    stages_for: target key -> that target's stages (screen first when staged, the full suite
    last); judged_on: target key -> what its checks measure ("identity", "task").
    """

    def __init__(
        self,
        name,
        state,
        *,
        cache,
        fingerprints,
        workers,
        bar,
        targets: dict,
        stages_for: Callable[[str], list[Stage]],
        judged_on: dict,
        policy,
        trust_remote_code: bool = False,
    ):
        self.name, self.state, self.cache, self.fp = name, state, cache, fingerprints
        self.workers, self.bar, self.policy = workers, bar, policy
        self.targets, self.stages_for, self.judged_on = targets, stages_for, judged_on
        self.base_fp = base_fingerprint(name, fingerprints)
        self.widest = base_widest(name)
        # the tokenizer diag will use (checked, maybe the slow one): answers depend on it
        self.tokenizer = base_tokenizer_key(name, trust_remote_code)
        self._said_why = False
        self.references: dict[tuple, object] = {}  # (stage, chat, target) -> Reference
        self.screened: dict[tuple, list[dict]] = {}  # a screen's records, reused by the full suite

    def stage(self, target: str, name: str) -> Stage:
        return next(s for s in self.stages_for(target) if s.name == name)

    def staged(self, target: str) -> bool:
        """A screen first, then the full suite where the decision is made."""
        return len(self.stages_for(target)) > 1

    def _key(self, fingerprint: str, chat: ChatFormat, stage: Stage, **more) -> str:
        """The cache key; ``sequential``: the policy that stopped a run early, when one did."""
        return self._key_with(self.tokenizer, fingerprint, chat, stage, **more)

    def _key_with(self, tokenizer, fingerprint: str, chat: ChatFormat, stage: Stage, **more) -> str:
        tokenizer = {"tokenizer": tokenizer} if tokenizer is not None else {}
        return cache_key(
            weights=fingerprint,
            base=self.name,
            base_weights=self.base_fp,
            chat=chat.to_dict(),
            **stage.settings,
            **more,
            **tokenizer,
        )

    def _say_why_missed(self, kind: str, key_parts: tuple) -> None:
        """Once per base: where the miss is an entry keyed the way an older diag keyed it (the
        same key without the tokenizer, or without the dtype), say why it is probed again."""
        if self._said_why:
            return
        for legacy, why in self._legacy_keys(*key_parts):
            if (kind, legacy) in self.cache:
                self._said_why = True
                log.warning("cached results for %s %s: probing again", self.name, why)
                return

    def _legacy_keys(self, fingerprint: str, chat: ChatFormat, stage: Stage):
        """(key, why it changed) for each way an older diag keyed these settings."""
        unfolded = replace(
            stage, settings={k: v for k, v in stage.settings.items() if k != "dtype"}
        )
        if self.tokenizer is not None:
            why = (
                "predate diag's tokenizer check (the cache key now holds the tokenizer's class "
                "and vocabulary hash)"
            )
            yield self._key_with(None, fingerprint, chat, stage), why
        if unfolded.settings != stage.settings:
            why = (
                f"ran with LoRA adapters folded into {stage.settings['dtype']} weights, which "
                "rounds a small adapter's change away (they now stay beside the weights)"
            )
            for tokenizer in [self.tokenizer, None] if self.tokenizer is not None else [None]:
                yield self._key_with(tokenizer, fingerprint, chat, unfolded), why

    def _stopping(self, stage: Stage, target: str):
        """The policy that stops asking a set once its checks are settled: a staged sweep's
        stages only (the exhaustive sweep and a quick one ask everything)."""
        return self.policy if self.staged(target) else None

    def probe_base(self, chat: ChatFormat, target: str, rows: list[str]) -> None:
        from diag.probes.suite import rescore, subset_records

        spec, task = self.targets[target]
        stages = self.stages_for(target)
        widest = stages[-1]
        key = self._key("base", chat, widest)
        entry = self.cache.get("base", key)
        cached = entry is not None
        if not cached:
            self._say_why_missed("base", ("base", chat, widest))
        label = f"base {self.name}"
        seconds = None
        if entry is None:
            job = ProbeTask(label, None, chat, spec, widest.settings, task=task)
            [(_, outcome)] = self.workers.run([job])
            if not outcome.ok:  # its Ray workers died: nothing can be compared with this base
                raise DiagError(f"base {self.name} could not be probed: {outcome.error}")
            run, seconds = outcome.run, outcome.seconds
            with writing(self.state.out):
                self.cache.put("base", key, {"records": run.records})
        else:
            run = rescore(entry["records"], spec, None, widest.sets, task=task)
        self.references[(widest.name, chat, target)] = run.reference
        for stage in stages[:-1]:
            size = stage.settings["size"]
            part = subset_records(run.records, stage.sets, size, stage.settings["languages"])
            screen = rescore(part, spec, None, stage.sets, task=task)
            self.references[(stage.name, chat, target)] = screen.reference
        for row in rows:
            record = CheckpointRecord(
                run=row,
                step=0,
                path=self.name,
                format="base",
                fingerprint=self.base_fp,
                base=self.name,
                chat=chat.to_dict(),
                target=target,
                judged_on=self.judged_on[target],
            )
            self.state.add(record, run, cached=cached, cache_key=key, stage=widest.name)
        self.bar.done(label, cached, seconds=seconds)

    def probe_all(
        self, items, stage_name: str, options: dict, exhaustive: bool = False, early=None
    ) -> None:
        """Probe ``items`` ((checkpoint, chat, target) triples) with the stage named
        ``stage_name``: cache hits at once, the rest through the workers; the partial results
        are written after each checkpoint. ``exhaustive``: ask every prompt, even where the
        stage would stop early. ``early(runs still probed)``: once the cache hits are in, more
        items to measure with the full suite in the same batch (a staged sweep's promotions for
        the runs already screened in full), started first, as the longest tasks."""
        jobs, copies = self._jobs(items, stage_name, options, exhaustive)
        if early is not None:
            waiting = {str(job[0].ckpt.run) for job in jobs.values()}
            first, more = self._jobs(early(waiting), "full", options, False)
            jobs, copies = {**first, **jobs}, more + copies
            if first:
                self.bar.add(len(first), f"full suite for {len(first)} checkpoint(s) of runs "
                             "already screened, beside the other screens")  # fmt: skip
        if len(jobs) < len(items):  # cache hits (or unreadable weights) to keep at once
            save_partial(self.state, self.fp)
        for task, outcome in self.workers.run(list(jobs)):
            self._finish(*jobs[task], outcome)
            save_partial(self.state, self.fp)
        if copies:  # cache hits now, or probed themselves where their original failed
            self.probe_all(copies, stage_name, options, exhaustive)

    def _jobs(self, items, stage_name: str, options: dict, exhaustive: bool):
        """``items`` as probe jobs (task -> (task, record, key, stage)); cache hits are added at
        once, and a checkpoint with the same weights as one already among the jobs is left for
        later (``copies``), to be read from the cache."""
        jobs: dict[ProbeTask, tuple] = {}
        keys: set[str] = set()
        copies = []  # the same weights as a checkpoint already being probed: read from the cache
        for ckpt, chat, target in items:
            stage = self.stage(target, stage_name)
            job = self._prepare(ckpt, chat, target, stage, options, exhaustive)
            if job is not None and job[2] in keys:
                copies.append((ckpt, chat, target))
            elif job is not None:
                jobs[job[0]] = job
                keys.add(job[2])
        return jobs, copies

    def _prepare(
        self, ckpt: Checkpoint, chat: ChatFormat, target: str, stage: Stage, options, exhaustive
    ):
        """A cache hit is added at once (None); a miss becomes (task, record, key, stage)."""
        label = f"{ckpt.run} step {ckpt.step}" + (f" ({ckpt.label})" if ckpt.label else "")
        if stage is not self.stages_for(target)[0]:
            label += f" ({stage.name} suite)"
        record = checkpoint_record(
            ckpt, self.name, chat, target=target, judged_on=self.judged_on[target]
        )
        try:
            for weights in (f for f in ckpt.files if f.suffix == ".safetensors"):
                check_header(weights, self.widest)  # before minutes of hashing a 4 GB claim
            record.fingerprint = self.fp.fingerprint(
                ckpt.files, root=ckpt.path if ckpt.path.is_dir() else None
            )
        except (OSError, DiagError) as exc:  # vanished, unreadable, or a header that lies
            message = str(exc) if isinstance(exc, DiagError) else f"cannot read weights: {exc}"
            self.state.add_error(record, message, error_type=type(exc).__name__)
            self.bar.done(label, False, error=True)
            return None
        spec, task = self.targets[target]
        stages = self.stages_for(target)
        entry = None
        if stage is stages[0] and len(stages) > 1:  # a screen: the full suite may be cached
            widest = stages[-1]
            key, entry = self._cached(record.fingerprint, chat, target, widest, exhaustive)
            if entry is not None:  # an earlier sweep measured it fully: its numbers, not less
                stage, label = widest, label + f" ({widest.name} suite)"
        if entry is None:
            key, entry = self._cached(record.fingerprint, chat, target, stage, exhaustive)
        reference = self.references[(stage.name, chat, target)]
        stopping = None if exhaustive else self._stopping(stage, target)
        if entry is not None:
            from diag.probes.suite import rescore

            run = rescore(entry["records"], spec, reference, stage.sets, task=task)
            self._keep(record.fingerprint, chat, target, stage, run)
            self.state.add(record, run, cached=True, cache_key=key, ckpt=ckpt, stage=stage.name)
            self.bar.done(label, True)
            return None
        job = ProbeTask(
            label,
            ckpt,
            chat,
            spec,
            stage.settings,
            reference=reference,
            reuse=tuple(self.screened.get((record.fingerprint, chat, target), ())),
            enough=self._stop_rule(stage, chat, target, stopping),
            options=options,
            task=task,
        )
        return job, record, key, stage

    def _cached(self, fingerprint: str, chat: ChatFormat, target: str, stage: Stage, exhaustive):
        """(key, cache entry or None) of ``stage`` for these weights: the exhaustive entry, else
        one that stopped early under the stage's stopping rule (unless ``exhaustive``)."""
        key = self._key(fingerprint, chat, stage)
        entry = self.cache.get("checkpoint", key)
        stopping = None if exhaustive else self._stopping(stage, target)
        if entry is None and stopping is not None:  # no exhaustive entry: one that stopped early?
            key = self._key(fingerprint, chat, stage, sequential=stopping.hash)
            entry = self.cache.get("checkpoint", key)
        return key, entry

    def _stop_rule(self, stage: Stage, chat: ChatFormat, target: str, stopping):
        if stopping is None:
            return None
        from diag.diagnostics.staging import ScreenStop, stop_rule

        def sizes(stage: Stage) -> dict[str, int]:
            return {name: len(probe_set.items) for name, probe_set in stage.sets.items()}

        base = self.state.base_record(self.name, chat, target)
        widest = self.stages_for(target)[-1]
        if stage is not widest:  # the screen: a checkpoint that learned nothing yet stops early
            return ScreenStop(base, stopping, sizes(stage), sizes(widest), self.judged_on[target])
        return stop_rule(base, stopping, sizes(stage), self.judged_on[target])

    def _finish(self, task: ProbeTask, record, key: str, stage: Stage, outcome: Outcome) -> None:
        ckpt = task.ckpt
        if not outcome.ok:
            self.state.add_error(record, outcome.error, ckpt=ckpt, error_type=outcome.error_type)
            self.bar.done(task.label, False, error=True)
            return
        run = outcome.run
        if task.enough is not None and not run.summary.get("stopped"):
            key = self._key(record.fingerprint, task.chat, stage)  # it asked everything after all
        with writing(self.state.out):
            self.cache.put("checkpoint", key, {"records": run.records})
        self._keep(record.fingerprint, task.chat, record.target, stage, run)
        self.state.add(record, run, cached=False, cache_key=key, ckpt=ckpt, stage=stage.name)
        self.bar.done(task.label, False, seconds=outcome.seconds)

    def _keep(self, fingerprint: str, chat: ChatFormat, target: str, stage: Stage, run) -> None:
        """A screen's answers, for the full suite to reuse if this checkpoint is promoted."""
        if self.staged(target) and stage is self.stages_for(target)[0]:
            self.screened[(fingerprint, chat, target)] = run.records

    def close(self) -> None:
        self.workers.close()
