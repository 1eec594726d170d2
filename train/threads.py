"""How many CPU threads training uses: one when other processes keep the cores busy.

OpenMP threads spin-wait on each other when the cores are shared, so a busy machine trains
faster on one thread than on all of them (measured figures in :func:`set_cpu_threads`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("diag")


def set_cpu_threads(requested: int | None) -> int:
    """Pick torch's CPU thread count; returns it.

    On a busy CPU (other processes using about all cores) OpenMP threads spin-wait on each other:
    measured here, a LoRA step on SmolLM2-135M took ~120 s with 2 threads and ~12 s with 1 while
    other jobs ran. So ``None`` means 1 thread when busy, torch's default otherwise. "Busy" is
    what other processes use *now* (see :func:`cpu_used_by_others`), not the load average, which
    still counts this process's own previous stage for a minute (the demo's second run saw load
    2.1 from its first and would have trained on 1 of 2 idle cores).
    """
    import torch

    if requested is None:
        cores = os.cpu_count() or 1
        used = cpu_used_by_others()
        busy = used is not None and used >= cores - 0.5
        requested = 1 if busy else torch.get_num_threads()
        if busy and cores > 1:
            log.info(
                "CPU busy (other processes use %.1f of %d cores): training with 1 thread",
                used,
                cores,
            )
    torch.set_num_threads(requested)
    return requested


def cpu_used_by_others(seconds: float = 0.5) -> float | None:
    """Cores kept busy by other processes over the next ``seconds`` (None where unknown).

    Whole-machine busy time from ``/proc/stat`` minus this process's own CPU time, over a short
    window: a current figure, unlike the 1-minute load average.
    """

    def machine_busy() -> float | None:
        try:
            fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")

    own = os.times()
    before, start = machine_busy(), time.perf_counter()
    if before is None:
        return None
    time.sleep(seconds)
    after, wall = machine_busy(), time.perf_counter() - start
    mine = sum(os.times()[:2]) - sum(own[:2])
    return max(0.0, ((after or before) - before - mine) / wall)
