"""Who answers the probes: the sweep's driver decides what to ask and keeps every file; a worker
only holds a loaded base and answers one :class:`ProbeTask` at a time.

:class:`LocalWorkers` is this process (the default). :class:`diag.diagnostics.ray_workers.RayWorkers`
is a pool of Ray actors, one model replica each. Both run the same :func:`execute`, so a sweep's
numbers do not depend on where it ran; the driver alone reads the cache, writes results and
decides what comes next (one-way data flow: tasks out, outcomes back).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from diag.errors import DiagError
from diag.types import ChatFormat, GenerationConfig

log = logging.getLogger("diag")


@dataclass(frozen=True, eq=False)  # eq=False: each task is its own dict key
class ProbeTask:
    """One model to probe, with everything a worker needs and nothing it must look up.

    ckpt: the checkpoint (None: the bare base). settings: the stage's settings (what is asked and
    how it is generated, see ``sweeper.generation_settings``). reference: the base's answers to
    compare with (None for the base itself). reuse: records of this checkpoint's screen, not asked
    again. enough: the sequential-stopping rule, or None. options: ``apply_checkpoint``'s.
    """

    label: str
    ckpt: object | None
    chat: ChatFormat
    identity: object
    settings: dict
    reference: object | None = None
    reuse: tuple = ()
    enough: Callable | None = None
    options: dict = field(default_factory=dict)
    task: object | None = None  # the narrow task the run teaches (diag.task.TaskSpec)


@dataclass(frozen=True)
class Outcome:
    """What a worker sends back: the probe run, or the one-line error that replaces it."""

    run: object | None = None
    error: str | None = None
    error_type: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def execute(lm, task: ProbeTask, say: Callable[[str], None] | None = None) -> Outcome:
    """Probe ``task`` on ``lm`` (a loaded base). A checkpoint that cannot be read or probed is an
    error outcome and the base is left clean for the next one; a failing base raises (nothing
    can be compared with it)."""
    started = time.perf_counter()
    if task.ckpt is None:
        if hasattr(lm, "use_adapter"):
            lm.use_adapter(None)
        run = _run(lm, task, say)
        return Outcome(run=run, seconds=time.perf_counter() - started)
    try:
        run = _probe_checkpoint(lm, task, say)
    except DiagError as exc:  # does not fit the base, refused pickle, non-finite, ...
        return _failed(lm, task, str(exc), "DiagError", started)
    except Exception as exc:  # noqa: BLE001 -- the per-checkpoint boundary: a corrupt or foreign
        # file in one checkpoint (SafetensorError, PytorchStreamReader failures, UnpicklingError,
        # ...) becomes that checkpoint's error row; the sweep goes on
        log.debug("%s failed", task.ckpt.path, exc_info=True)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        message = (
            f"'{task.ckpt.path}' could not be read or probed: {type(exc).__name__}: {first} "
            "(fix: if the file is truncated or corrupt, copy it again or remove it)"
        )
        return _failed(lm, task, message, type(exc).__name__, started)
    return Outcome(run=run, seconds=time.perf_counter() - started)


def _probe_checkpoint(base_lm, task: ProbeTask, say):
    from diag.backend.checkpoints import apply_checkpoint

    lm = None
    try:
        lm = apply_checkpoint(base_lm, task.ckpt, **task.options)
        return _run(lm, task, say)
    finally:
        if lm is not None and lm is not base_lm:  # full weights: a second model, freed now
            del lm
            gc.collect()


def _failed(lm, task: ProbeTask, message: str, kind: str, started: float) -> Outcome:
    log.warning("%s: %s", task.ckpt.path, message)
    if hasattr(lm, "use_adapter"):
        lm.use_adapter(None)  # whatever half-loaded adapter there was, the base is back
    return Outcome(error=message, error_type=kind, seconds=time.perf_counter() - started)


def _run(lm, task: ProbeTask, say):
    from diag.probes.suite import run_probes

    settings = task.settings
    return run_probes(
        lm,
        task.identity,
        chat=task.chat,
        probes=settings["probes"],
        size=settings["size"],
        languages=settings.get("languages"),
        reference=task.reference,
        generation=generation_config(settings),
        probe_files=settings["probe_files"],
        progress=say,
        reuse=task.reuse,
        enough=task.enough,
        task=task.task,
    )


def generation_config(settings: dict) -> GenerationConfig:
    """The GenerationConfig a stage's settings describe."""
    data = dict(settings["generation"])
    data["chat"] = ChatFormat.from_dict(data.get("chat"))
    return GenerationConfig(**data)


class LocalPool:
    """Workers in this process: one :class:`LocalWorkers` per base, on ``device``."""

    def __init__(self, load: Callable[[str], object], device: str | None):
        self.load, self.device = load, device

    def for_base(self, base: str, bar, tasks: int) -> LocalWorkers:
        return LocalWorkers(base, self.load, bar)

    def device_memory(self) -> tuple[str, int | None]:
        """(the device models load on, its memory where it is a GPU, else None)."""
        from diag.backend.loading import check_device

        return check_device(self.device), None  # None: auto_batch_size reads a GPU's own


class LocalWorkers:
    """This process: loads the base on the first task that needs a model, answers in order."""

    def __init__(self, base: str, load: Callable[[str], object], bar):
        self.base, self.load, self.bar = base, load, bar
        self.lm = None

    def model(self):
        if self.lm is None:
            self.bar.note(f"loading base {self.base}")
            self.lm = self.load(self.base)
        return self.lm

    def run(self, tasks: Iterable[ProbeTask]) -> Iterator[tuple[ProbeTask, Outcome]]:
        for task in tasks:
            self.bar.start(task.label)
            lm = self.model()
            yield task, execute(lm, task, self.bar.probe_callback(task.label))

    def close(self) -> None:
        self.lm = None
        gc.collect()
