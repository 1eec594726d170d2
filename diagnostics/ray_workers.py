"""Probing on a Ray cluster: actors that each hold one model replica (one per GPU where the
cluster has GPUs), load their base once and swap adapters, exactly as a local sweep does.

The driver (the ``diag sweep`` process) keeps the cache, the results and every decision; actors
get :class:`~diag.diagnostics.workers.ProbeTask` s and send back
:class:`~diag.diagnostics.workers.Outcome` s, so a Ray sweep writes the files a local sweep
writes. An actor that dies mid-checkpoint is replaced and its checkpoint is tried again on
another actor; a checkpoint whose worker dies twice becomes an error row. Runs and results must
be on a file system every node sees at the same path (docs/scale.md).

Ray is an optional extra (``pip install 'diag[ray]'``), imported only here and only for ``--ray``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator

from diag.diagnostics.workers import Outcome, ProbeTask, execute

from diag.errors import DiagError

log = logging.getLogger("diag")

RETRIES = 1  # a checkpoint whose worker died is tried once more, on another actor
CPUS_PER_ACTOR = 4  # on a cluster without GPUs, the default: one replica per 4 CPUs


def import_ray():
    """The ``ray`` module, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise DiagError(
            "--ray needs Ray, which is not installed", fix="pip install 'diag[ray]'"
        ) from None
    return ray


class ProbeWorker:
    """The actor: one loaded base answering tasks (Ray wraps this class in ``ray.remote``)."""

    def __init__(self, base: str, load: Callable[[str], object]):
        self.base, self.load = base, load
        self.lm = None

    def ready(self) -> str:
        """Load the base; says where it runs."""
        self.lm = self.load(self.base)
        return f"{socket.gethostname()} pid {os.getpid()} on {getattr(self.lm, 'device', '?')}"

    def probe(self, task: ProbeTask) -> Outcome:
        return execute(self.lm, task)


class RayCluster:
    """A connection to Ray, made on first use; ``address``: "auto" (a running cluster if there
    is one, else a new local one), "local" (always a new local one) or a cluster address
    (``HOST:6379`` or ``ray://HOST:10001``). ``actors``: model replicas per base (default: one
    per GPU, or one per 4 CPUs on a cluster without GPUs)."""

    def __init__(self, address: str, actors: int | None, load):
        self.ray = import_ray()
        self.load = load  # name -> backend, run in each actor
        if actors is not None and actors < 1:
            raise DiagError(f"--actors {actors}: need at least 1", fix="pass --actors 1 or more")
        self.address, self.actors = address, actors
        self.connected = False
        self.started = False  # this sweep started the Ray instance, and shuts it down

    @classmethod
    @contextlib.contextmanager
    def connect(cls, address: str, actors: int | None, load) -> Iterator[RayCluster]:
        cluster = cls(address, actors, load)
        try:
            yield cluster
        finally:
            if cluster.started:
                cluster.ray.shutdown()

    def start(self) -> None:
        """Connect, or start a local instance, once; an explicit address is checked even when
        this process already runs Ray."""
        if self.connected:
            return
        address = None if self.address == "auto" else self.address
        if address not in (None, "local"):
            _check_reachable(address)  # Ray itself retries an unreachable address for minutes
        if not self.ray.is_initialized():  # else: the caller's own ray.init() (a notebook, a test)
            try:
                self.ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,  # workers' logs stay in Ray's session folder
                    logging_level=logging.WARNING,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise DiagError(
                    f"--ray {self.address}: cannot connect to a Ray cluster ({first})",
                    fix="start one with `ray start --head` (docs/scale.md), or use --ray local",
                ) from None
            self.started = True
        self.connected = True

    def placement(self, most: int) -> tuple[int, dict]:
        """How many actors (at most ``most``), and the resources each asks for: a GPU each where
        there are GPUs (a share of one when asked for more actors than GPUs), else an equal share
        of the CPUs. Never more than the cluster has, so no actor waits for resources forever."""
        resources = self.ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0), max(1.0, resources.get("CPU", 1))
        if gpus >= 1:
            count = min(most, self.actors or int(gpus))
            return count, {"num_gpus": min(1.0, gpus / count), "num_cpus": min(1.0, cpus / count)}
        count = min(most, self.actors or max(1, int(cpus // CPUS_PER_ACTOR)))
        share = cpus / count
        return count, {"num_cpus": int(share) if share >= 1 else share}

    def for_base(self, base: str, bar, tasks: int) -> RayWorkers:
        return RayWorkers(self, base, self.load, bar, tasks)

    def device_memory(self) -> tuple[str, int | None]:
        """("cuda", one GPU's memory) on a cluster with GPUs (read by a task on one), else
        ("cpu", None): what ``--batch-size auto`` sizes for."""
        self.start()
        if self.ray.cluster_resources().get("GPU", 0) < 1:
            return "cpu", None
        return "cuda", self.ray.get(self.ray.remote(num_gpus=1)(_gpu_memory).remote())


class RayWorkers:
    """The actors for one base, started on the first task (a sweep that is all cache hits
    starts none), replaced when one dies."""

    def __init__(self, cluster: RayCluster, base: str, load, bar, tasks: int):
        self.cluster, self.base, self.load, self.bar = cluster, base, load, bar
        self.most = tasks  # no more replicas than there are models to probe
        self.idle: list = []
        self.loading: dict = {}  # ready() ref -> actor
        self.options: dict | None = None
        self.load_deaths = 0
        self.count = 0

    def _start(self) -> None:
        self.cluster.start()
        ray = self.cluster.ray
        self.count, self.options = self.cluster.placement(self.most)
        self.remote = ray.remote(ProbeWorker).options(**self.options)
        self.bar.note(
            f"starting {self.count} Ray actor(s) for base {self.base} "
            f"({', '.join(f'{k}={v:g}' for k, v in self.options.items())} each)"
        )
        for _ in range(self.count):
            self._spawn()

    def _spawn(self) -> None:
        actor = self.remote.remote(self.base, self.load)
        self.loading[actor.ready.remote()] = actor

    def run(self, tasks: list[ProbeTask]) -> Iterator[tuple[ProbeTask, Outcome]]:
        if not tasks:
            return
        if self.options is None:
            self._start()
        ray = self.cluster.ray
        queue, attempts, running = deque(tasks), {}, {}  # running: probe ref -> (actor, task)
        self.bar.start(f"{len(tasks)} on {self.count} Ray actor(s)")
        while queue or running:
            while queue and self.idle:
                actor, task = self.idle.pop(0), queue.popleft()
                running[actor.probe.remote(task)] = (actor, task)
            if not running and not self.loading:
                self._spawn()  # every actor died: start another
            [ref], _ = ray.wait([*running, *self.loading], num_returns=1)
            if ref in self.loading:
                self._loaded(ref)
                continue
            actor, task = running.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # the process died (killed, OOM, node lost)
                attempts[task] = attempts.get(task, 0) + 1
                reason = _first_line(exc)
                if attempts[task] > RETRIES:
                    yield (
                        task,
                        Outcome(
                            error=f"its Ray worker died {attempts[task]} times while probing it "
                            f"({reason}) (fix: check the memory per actor, and Ray's worker logs)",
                            error_type="WorkerDied",
                        ),
                    )
                else:
                    self.bar.note(f"{task.label}: its Ray worker died; trying it on another one")
                    queue.appendleft(task)
                if queue:
                    self._spawn()  # a replacement for the dead one, while there is work left
                continue
            except ray.exceptions.RayTaskError as exc:
                raise _cause(exc) from None  # a base that cannot be probed: nothing to compare
            self.idle.append(actor)
            yield task, outcome

    def _loaded(self, ref) -> None:
        ray = self.cluster.ray
        actor = self.loading.pop(ref)
        try:
            where = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the base does not load (DiagError, ...)
            raise _cause(exc) from None
        except ray.exceptions.RayActorError as exc:
            self.load_deaths += 1
            if self.load_deaths >= max(2, self.count):
                raise DiagError(
                    f"Ray actors keep dying while loading base {self.base}: {_first_line(exc)}",
                    fix="give each actor more memory (fewer --actors per node), and see Ray's "
                    "worker logs",
                ) from None
            self._spawn()
            return
        log.debug("Ray actor ready: %s", where)
        self.idle.append(actor)

    def close(self) -> None:
        ray = self.cluster.ray
        for actor in [*self.idle, *self.loading.values()]:
            with contextlib.suppress(ray.exceptions.RayError):
                ray.kill(actor)
        self.idle, self.loading = [], {}


def _check_reachable(address: str) -> None:
    """A one-line error, within seconds, when nothing listens at a cluster address
    (``HOST:PORT``, ``HOST`` for Ray's default 6379, or ``ray://HOST[:10001]``)."""
    client = address.startswith("ray://")
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":") if ":" in where else (where, "", "")
    port = port or ("10001" if client else "6379")
    if not port.isdigit():
        raise DiagError(
            f"--ray {address}: not a cluster address", fix="use HOST:6379 or ray://HOST:10001"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise DiagError(
            f"--ray {address}: no Ray cluster answers at {host}:{port} ({exc.strerror or exc})",
            fix="start one there with `ray start --head` (docs/scale.md), or use --ray local",
        ) from None


def _gpu_memory() -> int:
    import torch

    return torch.cuda.get_device_properties(0).total_memory


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _cause(exc) -> BaseException:
    """The exception raised inside the actor (a DiagError keeps its one line and fix)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, DiagError):
        return cause
    return DiagError(
        f"a Ray worker failed: {_first_line(cause or exc)}", fix="see Ray's worker logs"
    )
