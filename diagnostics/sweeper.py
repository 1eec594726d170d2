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
from dataclasses import replace
from pathlib import Path

from diag.diagnostics.cache import Fingerprinter, ResultCache
from diag.diagnostics.collected import CollectedResults, as_policy
from diag.diagnostics.discover import Discovery, discover
from diag.diagnostics.outdir import check_writable, exclusive, remove_stale_temp_files, writing
from diag.diagnostics.plan import make_plan, override_chat
from diag.diagnostics.progress import SweepProgress
from diag.diagnostics.runner import BaseRunner, checkpoint_record
from diag.diagnostics.stages import make_stages, sweep_settings
from diag.diagnostics.stored import SweepResult
from diag.diagnostics.targets import judged_on, resolve_targets, target_key
from diag.diagnostics.workers import LocalPool

from diag.backend import load_backend
from diag.errors import DiagError
from diag.models import DEFAULT_BASE
from diag.types import GenerationConfig

log = logging.getLogger("diag")


def sweep(
    runs_dir,
    *,
    base=None,
    identity=None,
    data=(),
    eval_data=(),
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
    trust_remote_code: bool = False,
    full_for=(),
    ray: str | None = None,
    actors: int | None = None,
    workers: int = 1,
    full_suites: bool = True,
) -> SweepResult:
    """Probe every checkpoint under ``runs_dir``; write results.json, scores.csv, samples.jsonl.

    base: ``--base`` (overrides what checkpoints name). probes/probe_files/languages: as ``diag probe``;
    size: "staged" (screen every checkpoint, then the full suite where the decision is made),
    "full" (the full suite everywhere) or "quick" (the screen only). identity: ``--identity`` for every
    run (an IdentitySpec, a YAML path or "en"/"zh"); None: what each run was taught, from its own
    records (:mod:`diag.diagnostics.targets`), with ``data`` (``--data`` files) for runs that record
    none; ``eval_data`` (``--eval-data``): rows no run trained on, for task runs. out: result folder (default ``runs_dir/diag``). system/template: override
    the prompt format of every checkpoint. progress: "auto" (rich on a terminal), "rich", "plain"
    (one log line per checkpoint, for CI) or "quiet". load_model: ``name -> backend`` (tests).
    trust_remote_code: run the code a base model ships (``--trust-remote-code``).
    full_for: steps or paths a staged sweep measures with the full suite whatever the decision
    (``--full``: e.g. a checkpoint the gate is asked to judge). ray: probe on a Ray cluster
    ("auto", "local" or an address, see :mod:`diag.diagnostics.ray_workers`) with ``actors``
    model replicas (default: one per GPU, or one per 4 CPUs); the driver writes the same files.
    workers: probe in that many processes on this machine's CPU, each with its own copy of the
    base and a share of the cores (:mod:`diag.diagnostics.process_workers`); same files.
    full_suites: False: a staged sweep stops after the screen (the bare base still gets the full
    suite); a later sweep of the same folder reads all of it from the cache and goes on (the demo
    screens its first run this way while the second one trains).

    >>> result = sweep("runs/", identity="zh", size="quick")        # doctest: +SKIP
    >>> result.scores().pivot_table(index="step", columns="metric", values="value")  # doctest: +SKIP
    """
    started = time.perf_counter()
    root = Path(runs_dir).expanduser()
    out = Path(out) if out else root / "diag"
    chat_override = override_chat(system, template)  # a bad --template fails before any model
    found = _discover(root, out, settle_seconds)
    taught = resolve_targets(found, identity, data, eval_data, announce=progress != "quiet")
    check_writable(out)
    if device is not None and load_model is None and ray is None:
        from diag.backend.loading import check_device

        check_device(device)  # before any model is loaded or any checkpoint probed
    # a partial of a module-level function, not a closure: a Ray sweep sends it to every actor
    load = load_model or functools.partial(
        load_backend, device=device, trust_remote_code=trust_remote_code
    )
    policy = as_policy(policy)
    if full_for and size != "staged":
        raise DiagError(
            f"--full applies to the staged sweep, not --size {size}",
            fix="drop --size (a staged sweep is the default) or drop --full",
        )
    with exclusive(out), _workers(ray, actors, load, device, workers) as pool:
        remove_stale_temp_files(out)
        keys = {run: target_key(t) for run, t in taught.items()}
        plan = make_plan(found, base, chat_override, keys)
        # the device decides the batch size (--batch-size auto) and the dtype the key names
        device, memory = pool.device_memory()
        generation = _sized(generation, next(iter(plan.by_base()), DEFAULT_BASE), device, memory)
        weights = _weights_dtype(device)
        specs = {target_key(t): (t.spec, t.task) for t in taught.values()}
        stages_for = functools.cache(
            lambda key: make_stages(
                specs[key][0], probes, size, generation, probe_files, languages, specs[key][1],
                weights,
            )
        )  # fmt: skip
        primary = plan.primary_target(next(iter(specs)))
        state = CollectedResults(
            root, out, found, taught, sweep_settings(stages_for(primary), size)
        )
        for ckpt, message in plan.unavailable:  # its base is not here: nothing to probe it on
            record = checkpoint_record(ckpt, None, None)
            state.add_error(record, message, ckpt=ckpt, error_type="DiagError")
        fingerprints = Fingerprinter(out / "cache" / "fingerprints.json")
        runner_options = dict(
            cache=ResultCache(out / "cache"),
            fingerprints=fingerprints,
            targets=specs,
            stages_for=stages_for,
            judged_on={target_key(t): judged_on(t) for t in taught.values()},
            trust_remote_code=trust_remote_code,
        )
        options = dict(allow_pickle=allow_pickle, lora_alpha=lora_alpha)
        forced = _forced(found, full_for)
        _probe_plan(
            plan, state, pool, runner_options, progress, options, policy, forced, full_suites
        )
        with writing(out):
            fingerprints.save()
            return state.finish(policy, time.perf_counter() - started)


@contextlib.contextmanager
def _workers(ray: str | None, actors: int | None, load, device: str | None, workers: int = 1):
    """Who probes: this process, worker processes on this machine, or actors on a Ray cluster (a
    Ray instance the sweep started is shut down after it). Yields a pool with
    ``for_base(base, bar, tasks)`` and ``device_memory()``."""
    if workers < 1:
        raise DiagError(f"--workers {workers}: need at least 1", fix="pass --workers 1 or more")
    if ray is not None and workers > 1:
        raise DiagError(
            "--workers runs processes on this machine; a Ray sweep places --actors",
            fix="drop --workers, or drop --ray",
        )
    if ray is None:
        if actors is not None:
            raise DiagError("--actors applies to a Ray sweep", fix="add --ray, or drop --actors")
        if workers > 1:
            from diag.diagnostics.process_workers import ProcessPool

            yield ProcessPool(load, device, workers)
        else:
            yield LocalPool(load, device)
        return
    from diag.diagnostics.ray_workers import RayCluster

    with RayCluster.connect(ray, actors, load) as cluster:  # a one-line error before probing
        yield cluster


def _weights_dtype(device: str) -> dict:
    """What the cache key says of the dtype models run in on ``device`` (nothing for fp32)."""
    from diag.backend.loading import dtype_key

    return dtype_key(device)


def _sized(
    generation: GenerationConfig | None, base: str, device: str, memory: int | None
) -> GenerationConfig:
    """``generation`` with ``--batch-size auto`` (None) sized to the device and the first base."""
    from diag.probes.suite import DEFAULT_GENERATION

    from diag.backend.loading import auto_batch_size

    generation = generation or replace(DEFAULT_GENERATION, batch_size=None)
    if generation.batch_size is not None:
        return generation
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
    plan,
    state,
    pool,
    runner_options: dict,
    progress,
    options: dict,
    policy,
    forced,
    full_suites: bool = True,
) -> None:
    """Per base, on ``pool``'s workers for it: load it once, probe the base per prompt format and
    target, then every checkpoint on it (the first stage: the screen of a staged sweep); a staged
    sweep then measures with the full suite the checkpoints its decision rests on
    (:mod:`diag.diagnostics.staging`). The partial results and the fingerprint memo are written
    after each checkpoint."""
    total = len(plan.checkpoints) + len(plan.asks)
    with SweepProgress(progress, total=total) as bar:
        for base_name, items in plan.by_base().items():
            asks = plan.asks_for(base_name)
            workers = pool.for_base(base_name, bar, len(items) + len(asks))
            runner = BaseRunner(
                base_name, state, bar=bar, policy=policy, workers=workers, **runner_options
            )
            try:
                for chat, target in asks:
                    runner.probe_base(chat, target, plan.base_rows(base_name, chat, target))
                staged = full_suites and any(runner.staged(target) for _, _, target in items)
                early = functools.partial(_screened, runner, items, state) if staged else None
                runner.probe_all(
                    items, runner.stages_for(items[0][2])[0].name, options, early=early
                )
                if staged:
                    _promote(runner, items, state, forced, bar, options)
            finally:
                runner.close()


def _by_key(items) -> dict:
    """(checkpoint, chat, target) items by the staged sweep's key (run, step, path)."""
    return {(str(c.run), c.step, str(c.path)): (c, chat, t) for c, chat, t in items}


def _screened(runner, items, state, waiting: set[str]) -> list:
    """What the first round of promotion will measure in the runs that are screened already (every
    checkpoint in the cache: ``waiting`` names the runs still to screen), so their full suites
    run beside the other runs' screens. A run's promotions rest on its own checkpoints and the
    base alone (:func:`diag.diagnostics.staging.to_promote`), so they are the same as after all
    screens; :func:`_promote` then judges everything again."""
    from diag.diagnostics.staging import key, to_promote

    by_key = _by_key(items)
    named = to_promote(state.record(False), runner.policy)
    return [
        by_key[key(r)]
        for r in named
        if r.screened_only and str(r.run) not in waiting and key(r) in by_key
    ]


def _promote(runner, items, state, forced: set[tuple], bar, options: dict) -> None:
    """Measure with the full suite what the decision rests on (and what ``--full`` names), judge
    again, until the decision rests on full-suite checkpoints only."""
    from diag.diagnostics.staging import key, to_promote

    policy = runner.policy
    by_key = _by_key(items)
    first = sorted(k for k in forced if k in by_key)
    while True:
        named = to_promote(state.record(False), policy)
        promoted = [key(r) for r in named if r.screened_only]
        again = [by_key[key(r)] for r in named if not r.screened_only and key(r) in by_key]
        wanted = [by_key[k] for k in dict.fromkeys(first + promoted) if k in by_key]
        first = []
        if not wanted and not again:
            return
        count = len(wanted) + len(again)
        bar.add(count, f"full suite for {count} checkpoint(s) the decision rests on")
        runner.probe_all(wanted, "full", options)
        runner.probe_all(again, "full", options, exhaustive=True)  # stopped early; ask everything
