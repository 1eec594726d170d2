"""A backend whose process dies mid-checkpoint, for the Ray fault tests.

The real transformers backend, except that generating as a marked checkpoint ends the process at
once (``os._exit``, as the kernel's OOM killer or a lost node would end it): the worker is gone
mid-checkpoint, with half of its answers generated and nothing sent back.
"""

from __future__ import annotations

import os
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
