"""Probing in several worker processes on this machine (``diag sweep --workers N``): each holds
its own copy of the base, loads it once and swaps adapters, exactly as a local sweep does.

Why processes on one CPU: a small model's decode steps are bound by memory and per-operation
overhead, not arithmetic, so a second thread in one process adds little (measured on 2 cores,
SmolLM2-135M: 16 answers of 48 tokens took 4.0 s with 2 threads and 4.4 s with 1), while two
single-thread processes each answering their own checkpoint finish both in 4.9 s. Each task gets
an equal share of the cores the driver's torch would use: a task that runs alone (the bare base,
which every checkpoint waits for) gets all of them.

The driver keeps the cache, the results and every decision, as with Ray
(:mod:`diag.diagnostics.ray_workers`): workers get :class:`~diag.diagnostics.workers.ProbeTask` s
by pickle and send back :class:`~diag.diagnostics.workers.Outcome` s. A worker that dies
mid-checkpoint (killed, out of memory) is replaced and the checkpoint tried once more; a
checkpoint whose worker dies twice becomes an error row.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import statistics
import time
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import wait

from diag.diagnostics.workers import LocalPool, Outcome, ProbeTask, execute

from diag.errors import DiagError

log = logging.getLogger("diag")

RETRIES = 1  # a checkpoint whose worker died is tried once more, in a new worker


def cpu_threads() -> int:
    """The threads torch would use in this process (its physical cores, or OMP_NUM_THREADS)."""
    import torch

    return torch.get_num_threads()


class ProcessPool(LocalPool):
    """``workers`` processes per base on this machine's CPU, started on the first task that needs
    a model (a sweep that is all cache hits starts none)."""

    def __init__(self, load, device: str | None, workers: int):
        super().__init__(load, device)
        self.workers = workers
        try:
            pickle.dumps(load)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise DiagError(
                f"--workers {workers}: the model loader cannot be sent to a worker process ({exc})",
                fix="pass a module-level function (or a functools.partial of one) as load_model",
            ) from None

    def for_base(self, base: str, bar, tasks: int) -> ProcessWorkers:
        return ProcessWorkers(base, self.load, bar, min(self.workers, max(1, tasks)))

    def device_memory(self) -> tuple[str, int | None]:
        device, memory = super().device_memory()
        if device != "cpu":
            raise DiagError(
                f"--workers {self.workers} runs copies of the model on this machine's CPU, "
                f"not on {device}",
                fix="drop --workers (one process uses the GPU), or use --ray with one actor per "
                "GPU",
            )
        return device, memory


class ProcessWorkers:
    """The worker processes for one base: replaced when one dies, stopped by :meth:`close`."""

    def __init__(self, base: str, load, bar, count: int):
        self.base, self.load, self.bar, self.count = base, load, bar, count
        self.threads = 0  # the cores the tasks share, read when the first worker starts
        self.idle: list = []  # connections of workers waiting for a task
        self.loading: dict = {}  # connection -> process, loading the base
        self.processes: dict = {}  # connection -> process, every live worker
        self.busy: set = set()  # connections of workers with a task in flight
        self.load_deaths = 0

    def _start(self) -> None:
        self.threads = cpu_threads()
        self.bar.note(
            f"starting {self.count} worker processes for base {self.base} "
            f"({self.threads} threads shared)"
        )
        for _ in range(self.count):
            self._spawn()

    def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")  # no forked copy of the driver's torch
        mine, theirs = context.Pipe()
        share = max(1, self.threads // self.count)
        process = context.Process(
            target=_serve, args=(theirs, self.base, self.load, share), daemon=True
        )
        process.start()
        theirs.close()  # so a worker that dies reads as end-of-file here
        self.loading[mine] = self.processes[mine] = process

    def _share(self, waiting: int, running: int) -> int:
        """Threads for the next task: the cores split over the tasks that will run beside it."""
        together = min(len(self.processes), waiting + running + 1)
        return max(1, self.threads // max(1, together))

    def run(self, tasks: list[ProbeTask]) -> Iterator[tuple[ProbeTask, Outcome]]:
        if not tasks:
            return
        if not self.processes:
            self._start()
        queue, attempts, running = deque(tasks), {}, {}  # running: connection -> task
        started, took = {}, []  # when each running task started; how long finished ones took
        self.bar.start(f"{len(tasks)} on {len(self.processes)} worker processes")
        while queue or running:
            hold = 0.0
            while queue and self.idle and not (hold := self._hold(queue, running, started, took)):
                conn, task = self.idle.pop(0), queue.popleft()
                conn.send((task, self._share(len(queue), len(running))))
                running[conn], started[conn] = task, time.perf_counter()
                self.busy.add(conn)
            if not running and not self.loading:
                self._spawn()  # every worker died: start another
            for conn in wait([*running, *self.loading], timeout=hold or None):
                if conn in self.loading:
                    self._loaded(conn)
                    continue
                task = running.pop(conn)
                self.busy.discard(conn)
                message = _receive(conn)
                if message is None:  # the process died (killed, out of memory)
                    self._bury(conn)
                    attempts[task] = attempts.get(task, 0) + 1
                    if attempts[task] > RETRIES:
                        yield (
                            task,
                            Outcome(
                                error=f"its worker process died {attempts[task]} times while probing "
                                "it (fix: check the memory each worker needs; fewer --workers)",
                                error_type="WorkerDied",
                            ),
                        )
                    else:
                        self.bar.note(f"{task.label}: its worker process died; trying it again")
                        queue.appendleft(task)
                    if queue:
                        self._spawn()  # a replacement, while there is work left
                    continue
                kind, payload = message
                if kind == "failed":  # the bare base could not be probed: nothing to compare
                    raise DiagError(*payload)
                self.idle.append(conn)
                took.append(payload.seconds)
                yield task, payload

    def _hold(self, queue, running: dict, started: dict, took: list) -> float:
        """Seconds to keep the last task back (0: start it now). When one task is left and the
        one other task running is in the last quarter of what finished tasks took, the last task
        started after it on all the cores ends sooner than started now beside it on a share (a
        demo full suite took 53 s on 1 of 2 cores, ~40 s on both). Held at most until the
        running task is a quarter over that time: one that runs long holds nothing back."""
        if len(queue) != 1 or len(running) != 1 or not took or self.threads < 2:
            return 0.0
        typical = statistics.median(took)
        [conn] = running
        ran = time.perf_counter() - started[conn]
        return typical * 1.25 - ran if typical * 0.75 <= ran < typical * 1.25 else 0.0

    def _loaded(self, conn) -> None:
        del self.loading[conn]
        message = _receive(conn)
        if message is None:
            self._bury(conn)
            self.load_deaths += 1
            if self.load_deaths >= max(2, self.count):
                raise DiagError(
                    f"worker processes keep dying while loading base {self.base}",
                    fix="check the memory: each worker holds its own copy of the model "
                    "(fewer --workers)",
                )
            self._spawn()
            return
        kind, payload = message
        if kind == "failed":  # the base does not load: the same error a local sweep gives
            raise DiagError(*payload)
        self.idle.append(conn)

    def _bury(self, conn) -> None:
        process = self.processes.pop(conn)
        process.join(timeout=5)
        conn.close()

    def close(self) -> None:
        """Stop every worker: an idle one when told to, a busy one (the sweep was interrupted, or
        failed, while it worked on a task nobody will read) at once."""
        for conn, process in self.processes.items():
            if conn in self.busy:
                process.terminate()
            else:
                with contextlib.suppress(OSError, ValueError):
                    conn.send(None)  # stop
        for conn, process in self.processes.items():
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
            conn.close()
        self.processes, self.idle, self.loading, self.busy = {}, [], {}, set()


def _receive(conn):
    """The worker's next message, or None where it died before sending it."""
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _serve(conn, base: str, load, threads: int) -> None:
    """A worker process: load ``base``, then probe each task received until told to stop.

    Messages back: ("ready", None) once loaded; ("done", Outcome) per task; ("failed",
    (problem, fix)) where the base does not load or cannot be probed (a DiagError in the driver).
    """
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's; it stops the workers
    torch.set_num_threads(threads)
    try:
        lm = load(base)
    except DiagError as exc:
        conn.send(("failed", (exc.problem, exc.fix)))
        return
    except Exception as exc:  # noqa: BLE001 -- the worker's boundary: one line to the driver
        conn.send(("failed", _one_line(f"base {base} could not be loaded", exc)))
        return
    conn.send(("ready", None))
    while (message := _receive(conn)) is not None:
        task, threads = message
        torch.set_num_threads(threads)
        try:
            conn.send(("done", execute(lm, task)))  # a checkpoint's failure is its error row
        except DiagError as exc:  # the bare base cannot be probed
            conn.send(("failed", (exc.problem, exc.fix)))
        except Exception as exc:  # noqa: BLE001 -- the worker's boundary: one line to the driver
            conn.send(("failed", _one_line(f"{task.label} could not be probed", exc)))


def _one_line(what: str, exc: BaseException) -> tuple[str, str]:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    log.debug("%s", what, exc_info=True)
    return f"{what}: {type(exc).__name__}: {first}", "run the sweep without --workers to see more"
