"""``diag sweep``: probe every checkpoint under a folder against its base, cached and resumable.

Data flow: discover -> (per base: load once, probe the bare base as step 0 and build the Reference)
-> per checkpoint: fingerprint -> cache hit, or swap the adapter in and run the probes -> results.
The probing itself is done by workers (:mod:`diag.diagnostics.workers`: this process, or Ray
actors with ``--ray``); this module alone reads the cache, writes results and decides.

Every finished checkpoint is cached at once (atomic files keyed by content), and ``results.json``
is rewritten after each one, so Ctrl-C or kill -9 loses at most the checkpoint being probed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from diag.diagnostics.cache import Fingerprinter, ResultCache, cache_key
from diag.diagnostics.collected import CollectedResults, as_policy
from diag.diagnostics.discover import Checkpoint, Discovery, discover
from diag.diagnostics.outdir import check_writable, exclusive, remove_stale_temp_files, writing
from diag.diagnostics.plan import make_plan, override_chat
from diag.diagnostics.progress import SweepProgress
from diag.diagnostics.stored import SweepResult
from diag.diagnostics.workers import LocalPool, Outcome, ProbeTask

from diag.backend import load_backend
from diag.errors import DiagError
from diag.formats.layouts import shards
from diag.formats.safetensors_header import check_header, widest_dimension
from diag.identity import IdentitySpec, load_identity
from diag.models import DEFAULT_BASE, resolve_base
from diag.records import (
    CheckpointRecord,
)
from diag.types import ChatFormat, GenerationConfig

log = logging.getLogger("diag")


def sweep(
    runs_dir,
    *,
    base=None,
    identity=None,
    out=None,
    probes=None,
    probe_files=(),
    size: str = "staged",
    languages=None,
    generation: GenerationConfig | None = None,
    system: str | None = None,
    template: str | None = None,
    lora_alpha: float | None = None,
    allow_pickle: bool = False,
    settle_seconds: float = 5.0,
    device: str | None = None,
    policy=None,
    progress: str = "auto",
    load_model=None,
    full_for=(),
    ray: str | None = None,
    actors: int | None = None,
) -> SweepResult:
    """Probe every checkpoint under ``runs_dir``; write results.json, scores.csv, samples.jsonl.

    base: ``--base`` (overrides what checkpoints name). probes/probe_files/languages: as ``diag probe``;
    size: "staged" (screen every checkpoint, then the full suite where the decision is made),
    "full" (the full suite everywhere) or "quick" (the screen only). identity: an IdentitySpec, a YAML path,
    "en"/"zh" or None. out: result folder (default ``runs_dir/diag``). system/template: override
    the prompt format of every checkpoint. progress: "auto" (rich on a terminal), "rich", "plain"
    (one log line per checkpoint, for CI) or "quiet". load_model: ``name -> backend`` (tests).
    full_for: steps or paths a staged sweep measures with the full suite whatever the decision
    (``--full``: e.g. a checkpoint the gate is asked to judge). ray: probe on a Ray cluster
    ("auto", "local" or an address, see :mod:`diag.diagnostics.ray_workers`) with ``actors``
    model replicas (default: one per GPU, or one per 4 CPUs); the driver writes the same files.

    >>> result = sweep("runs/", identity="zh", size="quick")        # doctest: +SKIP
    >>> result.scores().pivot_table(index="step", columns="metric", values="value")  # doctest: +SKIP
    """
    started = time.perf_counter()
    root = Path(runs_dir).expanduser()
    out = Path(out) if out else root / "diag"
    spec = identity if isinstance(identity, IdentitySpec) else load_identity(identity)
    chat_override = override_chat(system, template)  # a bad --template fails before any model
    found = _discover(root, out, settle_seconds)
    check_writable(out)
    if device is not None and load_model is None and ray is None:
        from diag.backend.loading import check_device

        check_device(device)  # before any model is loaded or any checkpoint probed
    # a partial of a module-level function, not a closure: a Ray sweep sends it to every actor
    load = load_model or functools.partial(load_backend, device=device)
    policy = as_policy(policy)
    if full_for and size != "staged":
        raise DiagError(
            f"--full applies to the staged sweep, not --size {size}",
            fix="drop --size (a staged sweep is the default) or drop --full",
        )
    with exclusive(out), _workers(ray, actors, load, device) as pool:
        remove_stale_temp_files(out)
        plan = make_plan(found, base, chat_override)
        generation = _sized(generation, next(iter(plan.by_base()), DEFAULT_BASE), pool)
        stages = make_stages(spec, probes, size, generation, probe_files, languages)
        state = CollectedResults(root, out, found, spec, sweep_settings(stages, size))
        for ckpt, message in plan.unavailable:  # its base is not here: nothing to probe it on
            state.add_error(_record(ckpt, None, None), message, ckpt=ckpt, error_type="DiagError")
        fingerprints = Fingerprinter(out / "cache" / "fingerprints.json")
        runner_options = dict(
            cache=ResultCache(out / "cache"),
            fingerprints=fingerprints,
            stages=stages,
        )
        options = dict(allow_pickle=allow_pickle, lora_alpha=lora_alpha)
        forced = _forced(found, full_for)
        _probe_plan(plan, state, pool, runner_options, progress, options, policy, forced)
        with writing(out):
            fingerprints.save()
            return state.finish(policy, time.perf_counter() - started)


@contextlib.contextmanager
def _workers(ray: str | None, actors: int | None, load, device: str | None):
    """Who probes: this process, or actors on a Ray cluster (a Ray instance the sweep started is
    shut down after it). Yields a pool with ``for_base(base, bar, tasks)`` and
    ``device_memory()``."""
    if ray is None:
        if actors is not None:
            raise DiagError("--actors applies to a Ray sweep", fix="add --ray, or drop --actors")
        yield LocalPool(load, device)
        return
    from diag.diagnostics.ray_workers import RayCluster

    with RayCluster.connect(ray, actors, load) as cluster:  # a one-line error before probing
        yield cluster


def _sized(generation: GenerationConfig | None, base: str, pool) -> GenerationConfig:
    """``generation`` with ``--batch-size auto`` (None) sized to the device and the first base."""
    from diag.probes.suite import DEFAULT_GENERATION

    from diag.backend.loading import auto_batch_size

    generation = generation or replace(DEFAULT_GENERATION, batch_size=None)
    if generation.batch_size is not None:
        return generation
    device, memory = pool.device_memory()
    size = auto_batch_size(device, base, generation.max_new_tokens, memory)
    return replace(generation, batch_size=size)


def _discover(root: Path, out: Path, settle_seconds: float) -> Discovery:
    """Every checkpoint under ``root``; none found is an error that says what was seen."""
    # diag's own cache is never a checkpoint; anything else under --out is swept like the rest
    found = discover(root, settle_seconds=settle_seconds, exclude=(out / "cache",))
    if not found.checkpoints:
        raise DiagError(
            found.describe_nothing_found(root),
            fix="point at a folder holding checkpoint-N/, iter_N.pth, global_stepN/, epoch_N/ or "
            "an adapter folder (adapter_config.json + adapter_model.safetensors); "
            "docs/formats.md lists every layout",
        )
    return found


def _forced(found: Discovery, wanted) -> set[tuple]:
    """The checkpoints ``--full`` names (a step, or a path), as (run, step, path) keys."""
    keys = set()
    for item in wanted:
        text = str(item).strip()
        target = None if text.isdigit() else Path(text).expanduser().resolve()
        hits = [
            c
            for c in found.checkpoints
            if (c.step == int(text) if target is None else c.is_at(target))
        ]
        if not hits:
            raise DiagError(
                f"--full {text}: no checkpoint found with that step or path",
                fix="pass a step or a checkpoint path the sweep finds (see `diag sweep` output)",
            )
        keys.update((str(c.run), c.step, str(c.path)) for c in hits)
    return keys


def _probe_plan(
    plan, state, pool, runner_options: dict, progress, options: dict, policy, forced
) -> None:
    """Per base, on ``pool``'s workers for it: load it once, probe the base per prompt format,
    then every checkpoint on it (the first stage: the screen of a staged sweep); a staged sweep
    then measures with the full suite the checkpoints its decision rests on
    (:mod:`diag.diagnostics.staging`). The partial results and the fingerprint memo are written
    after each checkpoint."""
    stages = runner_options["stages"]
    total = len(plan.checkpoints) + len(plan.bases_chats)
    with SweepProgress(progress, total=total) as bar:
        for base_name, items in plan.by_base().items():
            workers = pool.for_base(base_name, bar, len(items) + len(plan.chats_for(base_name)))
            runner = _BaseRunner(
                base_name, state, bar=bar, policy=policy, workers=workers, **runner_options
            )
            try:
                for chat in plan.chats_for(base_name):
                    runner.probe_base(chat, plan.base_rows(base_name, chat))
                runner.probe_all(items, stages[0], options)
                if runner.staged:
                    _promote(runner, items, state, forced, bar, options)
            finally:
                runner.close()


def _promote(runner, items, state, forced: set[tuple], bar, options: dict) -> None:
    """Measure with the full suite what the decision rests on (and what ``--full`` names), judge
    again, until the decision rests on full-suite checkpoints only."""
    from diag.diagnostics.staging import key, to_promote

    policy = runner.policy
    full = runner.stages[-1]
    by_key = {(str(c.run), c.step, str(c.path)): (c, chat) for c, chat in items}
    first = sorted(k for k in forced if k in by_key)
    while True:
        promoted = [key(r) for r in to_promote(state.record(False), policy)]
        wanted = [by_key[k] for k in dict.fromkeys(first + promoted) if k in by_key]
        first = []
        if not wanted:
            return
        bar.add(len(wanted), f"full suite for {len(wanted)} checkpoint(s) the decision rests on")
        runner.probe_all(wanted, full, options)


def _save_partial(state, fingerprints) -> None:
    with writing(state.out):
        state.write_partial()
        fingerprints.save()


@dataclass(frozen=True)
class Stage:
    """One way of probing a checkpoint: which prompts (``sets``) and the cache key that goes with
    them (``settings``, see :func:`generation_settings`). ``name``: "full" or "screen"."""

    name: str
    settings: dict
    sets: dict


def make_stages(spec, probes, size: str, generation, probe_files, languages) -> list[Stage]:
    """``size`` "full": the full suite; "quick": the screen only; "staged": the screen, then the
    full suite where the decision is made. The screen asks a fixed subset of prompts in the
    identity's languages (of ``languages``, when given)."""
    from diag.probes.items import parse_languages
    from diag.probes.suite import prepare_sets

    if size not in ("staged", "full", "quick"):
        raise DiagError(f"unknown sweep size '{size}'", fix="use --size staged, full or quick")
    stages = []
    if size in ("staged", "quick"):
        asked = parse_languages(languages)
        if size == "quick" and asked:
            screen_langs = list(asked)  # a screen-only sweep asks the languages it is told to
        else:
            screen_langs = [x for x in spec.languages if asked is None or x in asked]
            screen_langs = screen_langs or list(asked)
        sets = prepare_sets(spec, "quick", probe_files, screen_langs)
        settings = generation_settings(
            spec, probes, "quick", generation, probe_files, screen_langs, sets
        )
        stages.append(Stage("screen", settings, sets))
    if size in ("staged", "full"):
        sets = prepare_sets(spec, "full", probe_files, languages)
        settings = generation_settings(
            spec, probes, "full", generation, probe_files, languages, sets
        )
        stages.append(Stage("full", settings, sets))
    return stages


def sweep_settings(stages: list[Stage], size: str) -> dict:
    """The settings results.json records: the widest stage's, with the screen's beside them."""
    settings = dict(stages[-1].settings, size=size)
    if len(stages) > 1:
        screen = stages[0].settings
        settings["screen"] = {k: screen[k] for k in ("languages", "probe_sets")}
    return settings


def generation_settings(
    identity, probes, size: str, generation, probe_files=(), languages=None, sets=None
) -> dict:
    """Everything that decides what the model is asked and how it answers: the cache key.

    Scores are not part of it: cached entries hold the raw generations and are re-scored with
    the current probe code and the current version of every item's grading on every sweep
    (generate once, score many times). ``sets``: :func:`prepare_sets`' answer, if already made.
    """
    import hashlib
    import json

    from diag.probes.items import parse_languages
    from diag.probes.reference import REFERENCE_VERSION
    from diag.probes.registry import resolve_probes
    from diag.probes.suite import DEFAULT_GENERATION, prepare_sets

    names = resolve_probes(probes)
    prompts = {
        name: "sha256:"
        + hashlib.sha256(
            json.dumps([i.asked() for i in probe_set.items], sort_keys=True).encode()
        ).hexdigest()[:16]
        for name, probe_set in (
            sets or prepare_sets(identity, size, probe_files, languages)
        ).items()
    }
    return {
        "probes": names,
        "size": size,
        "languages": list(parse_languages(languages) or ()) or None,
        "probe_sets": prompts,
        "generation": (generation or DEFAULT_GENERATION).to_dict(),
        "reference_version": REFERENCE_VERSION,
        "identity": identity.hash,
        "probe_files": [str(Path(p).resolve()) for p in probe_files],
    }


def base_fingerprint(name: str, fingerprints: Fingerprinter) -> str:
    """Content fingerprint of a base model's weights (the GGUF until it has been converted)."""
    source = resolve_base(name)
    if source.gguf_file and not (source.cache_dir and (source.cache_dir / "config.json").is_file()):
        return fingerprints.fingerprint([source.path / source.gguf_file])
    files, _ = shards(source.path)
    return fingerprints.fingerprint(files or [source.path / "config.json"], root=source.path)


def _record(ckpt: Checkpoint, base: str | None, chat: ChatFormat | None) -> CheckpointRecord:
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
    )


def base_widest(name: str) -> int | None:
    """The widest dimension of a base model (from its config.json; None before the embedded
    GGUF is converted): no tensor of a checkpoint of it is wider."""
    source = resolve_base(name)
    folder = source.cache_dir if source.gguf_file else source.path
    return widest_dimension(folder / "config.json") if folder else None


# ------------------------------------------------------------------------------------- probing
class _BaseRunner:
    """Probes one base and its checkpoints through ``workers`` (this process or Ray actors),
    which load the model only when a cache miss needs it. The runner alone reads the cache and
    adds to the results: workers get tasks and send back outcomes.

    The base is probed with the widest stage; each narrower stage compares checkpoints with the
    base's answers to that stage's own prompts (its reference is cut from the same records).
    """

    def __init__(self, name, state, *, cache, fingerprints, workers, bar, stages, policy):
        self.name, self.state, self.cache, self.fp = name, state, cache, fingerprints
        self.workers, self.bar, self.stages, self.policy = workers, bar, stages, policy
        self.base_fp = base_fingerprint(name, fingerprints)
        self.widest = base_widest(name)
        self.references: dict[tuple[str, ChatFormat], object] = {}  # (stage, chat) -> Reference
        self.screened: dict[tuple, list[dict]] = {}  # a screen's records, reused by the full suite

    @property
    def staged(self) -> bool:
        """A screen first, then the full suite where the decision is made."""
        return len(self.stages) > 1

    def _key(self, fingerprint: str, chat: ChatFormat, stage: Stage, **more) -> str:
        """The cache key; ``sequential``: the policy that stopped a run early, when one did."""
        return cache_key(
            weights=fingerprint,
            base=self.name,
            base_weights=self.base_fp,
            chat=chat.to_dict(),
            **stage.settings,
            **more,
        )

    def _stopping(self, stage: Stage):
        """The policy that stops asking a set once its checks are settled: a staged sweep's
        full suite only (the exhaustive sweep and the screen ask everything)."""
        return self.policy if self.staged and stage is self.stages[-1] else None

    def probe_base(self, chat: ChatFormat, rows: list[str]) -> None:
        from diag.probes.suite import rescore, subset_records

        widest = self.stages[-1]
        key = self._key("base", chat, widest)
        entry = self.cache.get("base", key)
        cached = entry is not None
        label = f"base {self.name}"
        seconds = None
        if entry is None:
            task = ProbeTask(label, None, chat, self.state.identity, widest.settings)
            [(_, outcome)] = self.workers.run([task])
            if not outcome.ok:  # its Ray workers died: nothing can be compared with this base
                raise DiagError(f"base {self.name} could not be probed: {outcome.error}")
            run, seconds = outcome.run, outcome.seconds
            with writing(self.state.out):
                self.cache.put("base", key, {"records": run.records})
        else:
            run = rescore(entry["records"], self.state.identity, None, widest.sets)
        self.references[(widest.name, chat)] = run.reference
        for stage in self.stages[:-1]:
            size = stage.settings["size"]
            part = subset_records(run.records, stage.sets, size, stage.settings["languages"])
            screen = rescore(part, self.state.identity, None, stage.sets)
            self.references[(stage.name, chat)] = screen.reference
        for row in rows:
            record = CheckpointRecord(
                run=row,
                step=0,
                path=self.name,
                format="base",
                fingerprint=self.base_fp,
                base=self.name,
                chat=chat.to_dict(),
            )
            self.state.add(record, run, cached=cached, cache_key=key, stage=widest.name)
        self.bar.done(label, cached, seconds=seconds)

    def probe_all(self, items, stage: Stage, options: dict) -> None:
        """Probe ``items`` ((checkpoint, chat) pairs) with ``stage``: cache hits at once, the rest
        through the workers; the partial results are written after each checkpoint."""
        jobs: dict[ProbeTask, tuple] = {}
        keys: set[str] = set()
        copies = []  # the same weights as a checkpoint already being probed: read from the cache
        for ckpt, chat in items:
            job = self._prepare(ckpt, chat, stage, options)
            if job is not None and job[2] in keys:
                copies.append((ckpt, chat))
            elif job is not None:
                jobs[job[0]] = job
                keys.add(job[2])
        if len(jobs) < len(items):  # cache hits (or unreadable weights) to keep at once
            _save_partial(self.state, self.fp)
        for task, outcome in self.workers.run(list(jobs)):
            self._finish(*jobs[task], outcome)
            _save_partial(self.state, self.fp)
        if copies:  # cache hits now, or probed themselves where their original failed
            self.probe_all(copies, stage, options)

    def _prepare(self, ckpt: Checkpoint, chat: ChatFormat, stage: Stage, options: dict):
        """A cache hit is added at once (None); a miss becomes (task, record, key, stage)."""
        label = f"{ckpt.run} step {ckpt.step}" + (f" ({ckpt.label})" if ckpt.label else "")
        if stage is not self.stages[0]:
            label += f" ({stage.name} suite)"
        record = _record(ckpt, self.name, chat)
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
        key = self._key(record.fingerprint, chat, stage)
        reference = self.references[(stage.name, chat)]
        entry = self.cache.get("checkpoint", key)
        stopping = self._stopping(stage)
        if entry is None and stopping is not None:  # no exhaustive entry: one that stopped early?
            key = self._key(record.fingerprint, chat, stage, sequential=stopping.hash)
            entry = self.cache.get("checkpoint", key)
        if entry is not None:
            from diag.probes.suite import rescore

            run = rescore(entry["records"], self.state.identity, reference, stage.sets)
            self._keep(record.fingerprint, chat, stage, run)
            self.state.add(record, run, cached=True, cache_key=key, ckpt=ckpt, stage=stage.name)
            self.bar.done(label, True)
            return None
        task = ProbeTask(
            label,
            ckpt,
            chat,
            self.state.identity,
            stage.settings,
            reference=reference,
            reuse=tuple(self.screened.get((record.fingerprint, chat), ())),
            enough=self._stop_rule(stage, chat, stopping),
            options=options,
        )
        return task, record, key, stage

    def _stop_rule(self, stage: Stage, chat: ChatFormat, stopping):
        if stopping is None:
            return None
        from diag.diagnostics.staging import stop_rule

        sizes = {name: len(probe_set.items) for name, probe_set in stage.sets.items()}
        return stop_rule(self.state.base_record(self.name, chat), stopping, sizes)

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
        self._keep(record.fingerprint, task.chat, stage, run)
        self.state.add(record, run, cached=False, cache_key=key, ckpt=ckpt, stage=stage.name)
        self.bar.done(task.label, False, seconds=outcome.seconds)

    def _keep(self, fingerprint: str, chat: ChatFormat, stage: Stage, run) -> None:
        """A screen's answers, for the full suite to reuse if this checkpoint is promoted."""
        if self.staged and stage is self.stages[0]:
            self.screened[(fingerprint, chat)] = run.records

    def close(self) -> None:
        self.workers.close()
