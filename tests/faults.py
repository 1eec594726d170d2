"""Faults for tests: a backend whose process dies mid-checkpoint (the Ray fault tests), and a
command run under a memory and time bound (memory and time bombs).

:class:`DyingBackend` is the real transformers backend, except that generating as a marked checkpoint ends the process at
once (``os._exit``, as the kernel's OOM killer or a lost node would end it): the worker is gone
mid-checkpoint, with half of its answers generated and nothing sent back.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from diag.backend.hf import HFBackend


class DyingBackend(HFBackend):
    dies_once: tuple[str, ...] = ()  # checkpoint folder names: the first worker to ask dies
    dies_always: tuple[str, ...] = ()  # every worker that asks dies
    marks: Path | None = None  # where "already died once" is remembered, across processes

    def generate(self, prompts, config):
        name = Path(self.active_adapter or "").name
        if name in self.dies_always:
            os._exit(3)
        if name in self.dies_once:
            mark = self.marks / name
            if not mark.exists():
                mark.touch()
                os._exit(3)
        return super().generate(prompts, config)


def load_dying(name, *, marks: str, dies_once=(), dies_always=()):
    lm = DyingBackend.load(name, device="cpu")
    lm.marks, lm.dies_once, lm.dies_always = Path(marks), tuple(dies_once), tuple(dies_always)
    return lm


class StuckBackend(HFBackend):
    """Answers the bare base; with an adapter active, it never finishes (a checkpoint that takes
    far longer than anyone waits, for Ctrl-C tests). Each stuck process leaves a file in
    ``marks`` named by its pid."""

    marks: Path | None = None

    def generate(self, prompts, config):
        if self.active_adapter:
            (self.marks / str(os.getpid())).touch()
            time.sleep(3600)
        return super().generate(prompts, config)


def load_stuck(name, *, marks: str):
    lm = StuckBackend.load(name, device="cpu")
    lm.marks = Path(marks)
    return lm


# A command run with its memory and time bounded, for memory and time bombs: the bomb is refused
# or the child dies at the bound -- never allowed to take the machine. The child reports its own
# peak RSS on its last line of stderr ("peak_rss_mb=N").
_BOUNDED = """
import resource, runpy, sys
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    if sys.argv[1] == "-m":
        del sys.argv[1]
        runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
    else:
        code = sys.argv.pop(2)
        del sys.argv[1]
        exec(compile(code, "<bounded>", "exec"), {"__name__": "__main__"})
finally:
    # VmHWM is this process's own high-water mark; ru_maxrss also counts the parent's, which
    # Linux carries into a child across fork/vfork + exec (a test process holding models)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
    peak = int(hwm[0].split()[1]) // 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"peak_rss_mb={peak}", file=sys.stderr)
"""


def run_bounded(
    command: list[str], *, memory_mb: int = 3000, timeout: float = 120, env: dict | None = None
):
    """Run ``python *command`` (``["-m", "diag", ...]`` or ``["-c", CODE, ...]``) with its address
    space limited to ``memory_mb`` and a ``timeout`` in seconds; returns (exit code, stdout,
    stderr, peak RSS in MB). Running past the timeout fails the test. ``env``: added to this
    process's environment."""
    import os
    import subprocess
    import sys

    limit = str(memory_mb * 1024 * 1024)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _BOUNDED, limit, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{command[:2]} ran past {timeout} s: {exc.stderr!r:.2000}") from exc
    peak = [line for line in proc.stderr.splitlines() if line.startswith("peak_rss_mb=")]
    return proc.returncode, proc.stdout, proc.stderr, int(peak[-1].split("=")[1]) if peak else None
