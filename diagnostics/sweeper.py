"""``diag sweep``: probe every checkpoint under a folder against its base, cached and resumable.

Data flow: discover -> (per base: load once, probe the bare base as step 0 and build the Reference)
-> per checkpoint: fingerprint -> cache hit, or swap the adapter in and run the probes -> results.

Every finished checkpoint is cached at once (atomic files keyed by content), and ``results.json``
is rewritten after each one, so Ctrl-C or kill -9 loses at most the checkpoint being probed.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from diag.diagnostics.cache import Fingerprinter, ResultCache, cache_key
from diag.diagnostics.collected import CollectedResults, as_policy
from diag.diagnostics.discover import Checkpoint, Discovery, discover
from diag.diagnostics.outdir import check_writable, exclusive, remove_stale_temp_files, writing
from diag.diagnostics.plan import make_plan, override_chat
from diag.diagnostics.progress import SweepProgress
from diag.diagnostics.stored import SweepResult

from diag.errors import DiagError
from diag.formats.layouts import shards
from diag.identity import IdentitySpec, load_identity
from diag.models import resolve_base
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
) -> SweepResult:
    """Probe every checkpoint under ``runs_dir``; write results.json, scores.csv, samples.jsonl.

    base: ``--base`` (overrides what checkpoints name). probes/probe_files/languages: as ``diag probe``;
    size: "staged" (screen every checkpoint, then the full suite where the decision is made),
    "full" (the full suite everywhere) or "quick" (the screen only). identity: an IdentitySpec, a YAML path,
    "en"/"zh" or None. out: result folder (default ``runs_dir/diag``). system/template: override
    the prompt format of every checkpoint. progress: "auto" (rich on a terminal), "rich", "plain"
    (one log line per checkpoint, for CI) or "quiet". load_model: ``name -> backend`` (tests).
    full_for: steps or paths a staged sweep measures with the full suite whatever the decision
    (``--full``: e.g. a checkpoint the gate is asked to judge).

    >>> result = sweep("runs/", identity="zh", size="quick")        # doctest: +SKIP
    >>> result.scores().pivot_table(index="step", columns="metric", values="value")  # doctest: +SKIP
    """
    started = time.perf_counter()
    root = Path(runs_dir).expanduser()
    out = Path(out) if out else root / "diag"
    spec = identity if isinstance(identity, IdentitySpec) else load_identity(identity)
    found = _discover(root, out, settle_seconds)
    check_writable(out)
    if device is not None and load_model is None:
        from diag.backend.loading import check_device

        check_device(device)  # before any model is loaded or any checkpoint probed
    policy = as_policy(policy)
    if full_for and size != "staged":
        raise DiagError(
            f"--full applies to the staged sweep, not --size {size}",
            fix="drop --size (a staged sweep is the default) or drop --full",
        )
    with exclusive(out):
        remove_stale_temp_files(out)
        stages = make_stages(spec, probes, size, generation, probe_files, languages)
        state = CollectedResults(root, out, found, spec, sweep_settings(stages, size))
        fingerprints = Fingerprinter(out / "cache" / "fingerprints.json")
        plan = make_plan(found, base, override_chat(system, template))
        runner_options = dict(
            cache=ResultCache(out / "cache"),
            fingerprints=fingerprints,
            load_model=load_model,
            device=device,
            stages=stages,
        )
        options = dict(allow_pickle=allow_pickle, lora_alpha=lora_alpha)
        forced = _forced(found, full_for)
        _probe_plan(plan, state, runner_options, progress, options, policy, forced)
        with writing(out):
            fingerprints.save()
            return state.finish(policy, time.perf_counter() - started)


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


def _probe_plan(plan, state, runner_options: dict, progress, options: dict, policy, forced) -> None:
    """Per base: load it once, probe the base per prompt format, then every checkpoint on it
    (the first stage: the screen of a staged sweep); a staged sweep then measures with the full
    suite the checkpoints its decision rests on (:mod:`diag.diagnostics.staging`). The partial
    results and the fingerprint memo are written after each checkpoint."""
    stages = runner_options["stages"]
    total = len(plan.checkpoints) + len(plan.bases_chats)
    with SweepProgress(progress, total=total) as bar:
        for base_name, items in plan.by_base().items():
            runner = _BaseRunner(base_name, state, bar=bar, policy=policy, **runner_options)
            for chat in plan.chats_for(base_name):
                runner.probe_base(chat, plan.base_rows(base_name, chat))
            for ckpt, chat in items:
                runner.probe_checkpoint(ckpt, chat, stages[0], **options)
                _save_partial(state, runner_options["fingerprints"])
            if len(stages) > 1:
                _promote(runner, items, state, forced, bar, options)
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
        for ckpt, chat in wanted:
            runner.probe_checkpoint(ckpt, chat, full, **options)
            _save_partial(state, runner.fp)


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


# ------------------------------------------------------------------------------------- probing
class _BaseRunner:
    """Probes one base and its checkpoints; loads the model only on the first cache miss.

    The base is probed with the widest stage; each narrower stage compares checkpoints with the
    base's answers to that stage's own prompts (its reference is cut from the same records).
    """

    def __init__(
        self, name, state, *, cache, fingerprints, load_model, device, bar, stages, policy
    ):
        self.name, self.state, self.cache, self.fp = name, state, cache, fingerprints
        self.load_model, self.device, self.bar, self.stages = load_model, device, bar, stages
        self.policy = policy
        self.lm = None
        self.base_fp = base_fingerprint(name, fingerprints)
        self.references: dict[tuple[str, ChatFormat], object] = {}  # (stage, chat) -> Reference
        self.screened: dict[tuple, list[dict]] = {}  # a screen's records, reused by the full suite

    def model(self):
        if self.lm is None:
            self.bar.note(f"loading base {self.name}")
            if self.load_model is not None:
                self.lm = self.load_model(self.name)
            else:
                from diag.backend.hf import HFBackend

                self.lm = HFBackend.load(self.name, device=self.device)
        return self.lm

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
        if entry is None:
            self.bar.start(label)
            lm = self.model()
            if hasattr(lm, "use_adapter"):
                lm.use_adapter(None)
            run = self._run(lm, chat, None, label, widest)
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
        self.bar.done(label, cached)

    def probe_checkpoint(self, ckpt: Checkpoint, chat: ChatFormat, stage: Stage, **options) -> None:
        label = f"{ckpt.run} step {ckpt.step}" + (f" ({ckpt.label})" if ckpt.label else "")
        if stage is not self.stages[0]:
            label += f" ({stage.name} suite)"
        record = CheckpointRecord(
            run=ckpt.run,
            step=ckpt.step,
            path=str(ckpt.path),
            format=ckpt.format,
            label=ckpt.label,
            also=[str(p) for p in ckpt.aliases],
            base=self.name,
            chat=chat.to_dict(),
        )
        try:
            record.fingerprint = self.fp.fingerprint(
                ckpt.files, root=ckpt.path if ckpt.path.is_dir() else None
            )
        except OSError as exc:  # vanished or unreadable mid-sweep
            self.state.add_error(record, f"cannot read weights: {exc}")
            self.bar.done(label, False, error=True)
            return
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
            return
        self.bar.start(label)
        base_lm = self.model()
        reuse = self.screened.get((record.fingerprint, chat), [])
        try:
            run = self._probe_one(base_lm, ckpt, chat, options, label, stage, reuse, stopping)
        except DiagError as exc:  # does not fit the base, refused pickle, non-finite, ...
            self._fail(record, ckpt, label, str(exc), "DiagError")
            return
        except Exception as exc:  # noqa: BLE001 -- the per-checkpoint boundary: a corrupt or
            # foreign file in one checkpoint (SafetensorError, PytorchStreamReader failures,
            # UnpicklingError, ...) becomes that checkpoint's error row; the sweep goes on
            log.debug("%s failed", ckpt.path, exc_info=True)
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            message = (
                f"'{ckpt.path}' could not be read or probed: {type(exc).__name__}: {first} "
                "(fix: if the file is truncated or corrupt, copy it again or remove it)"
            )
            self._fail(record, ckpt, label, message, type(exc).__name__)
            return
        if stopping is not None and not run.summary.get("stopped"):
            key = self._key(record.fingerprint, chat, stage)  # it asked everything after all
        with writing(self.state.out):
            self.cache.put("checkpoint", key, {"records": run.records})
        self._keep(record.fingerprint, chat, stage, run)
        self.state.add(record, run, cached=False, cache_key=key, ckpt=ckpt, stage=stage.name)
        self.bar.done(label, False)

    def _keep(self, fingerprint: str, chat: ChatFormat, stage: Stage, run) -> None:
        """A screen's answers, for the full suite to reuse if this checkpoint is promoted."""
        if self.staged and stage is self.stages[0]:
            self.screened[(fingerprint, chat)] = run.records

    def _probe_one(self, base_lm, ckpt, chat, options: dict, label: str, stage, reuse, stopping):
        from diag.diagnostics.staging import stop_rule

        from diag.backend.checkpoints import apply_checkpoint

        lm = None
        enough = None
        if stopping is not None:
            sizes = {name: len(probe_set.items) for name, probe_set in stage.sets.items()}
            enough = stop_rule(self.state.base_record(self.name, chat), stopping, sizes)
        try:
            lm = apply_checkpoint(base_lm, ckpt, **options)
            reference = self.references[(stage.name, chat)]
            return self._run(lm, chat, reference, label, stage, reuse, enough)
        finally:
            if lm is not None and lm is not base_lm:  # full weights: a second model, freed now
                del lm
                gc.collect()

    def _fail(
        self, record: CheckpointRecord, ckpt: Checkpoint, label: str, message: str, kind: str
    ) -> None:
        log.warning("%s: %s", ckpt.path, message)
        if hasattr(self.lm, "use_adapter"):
            self.lm.use_adapter(None)  # whatever half-loaded adapter there was, the base is back
        self.state.add_error(record, message, ckpt=ckpt, error_type=kind)
        self.bar.done(label, False, error=True)

    def _run(
        self, lm, chat: ChatFormat, reference, label: str, stage: Stage, reuse=(), enough=None
    ):
        from diag.probes.suite import run_probes

        settings = stage.settings
        return run_probes(
            lm,
            self.state.identity,
            chat=chat,
            probes=settings["probes"],
            size=settings["size"],
            languages=settings.get("languages"),
            reference=reference,
            generation=_generation(settings),
            probe_files=settings["probe_files"],
            progress=self.bar.probe_callback(label),
            reuse=reuse,
            enough=enough,
        )

    def close(self) -> None:
        self.lm = None
        gc.collect()


def _generation(settings: dict) -> GenerationConfig:
    data = dict(settings["generation"])
    data["chat"] = ChatFormat.from_dict(data.get("chat"))
    return GenerationConfig(**data)
