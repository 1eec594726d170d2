"""Sweep planning: which base model and which prompt format each discovered checkpoint gets.

Pure (no model loaded): the base comes from --base, the adapter's own config, the run's manifest,
or the default; the chat format from the checkpoint's run (manifest, XTuner config) with --system /
--template on top. ``diag merge`` uses the same base choice, so a merge and its sweep agree.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from diag.diagnostics.discover import Checkpoint, Discovery

from diag.errors import DiagError
from diag.models import DEFAULT_BASE, resolve_base
from diag.types import ChatFormat

log = logging.getLogger("diag")


def override_chat(system: str | None, template: str | None) -> dict:
    """ChatFormat fields set by --system / --template (an XTuner template name or a format string)."""
    from diag.formats.xtuner import PROMPT_TEMPLATES

    fields: dict = {}
    if system is not None:
        fields["system"] = system
    if template is not None:
        if template in PROMPT_TEMPLATES:  # an XTuner template name
            fields["template"] = PROMPT_TEMPLATES[template]["INSTRUCTION"]
            fields["system_template"] = PROMPT_TEMPLATES[template]["SYSTEM"]
        elif "{input}" in template:
            fields["template"] = template
        else:
            raise DiagError(
                f"--template {template!r} has no '{{input}}' and is not a known template name",
                fix=f"use a format string with {{input}} or one of {sorted(PROMPT_TEMPLATES)}",
            )
    return fields


def choose_base(ckpt: Checkpoint, flag, run_base: str | None) -> str:
    """--base, else the adapter's own base if it is here, else the run's, else the default."""
    if flag is not None:
        return resolve_base(flag).name
    for hint in (ckpt.base_hint, run_base):
        if not hint:
            continue
        if str(hint).lower().rstrip("/").endswith(DEFAULT_BASE):  # e.g. HuggingFaceTB/SmolLM2-...
            return DEFAULT_BASE
        try:
            return resolve_base(hint).name
        except DiagError:
            continue
    if ckpt.base_hint or run_base:
        log.warning(
            "%s: base '%s' is not available locally; using the default %s (pass --base)",
            ckpt.path,
            ckpt.base_hint or run_base,
            DEFAULT_BASE,
        )
    return DEFAULT_BASE


class Plan:
    """Which base model, prompt format and target (what the run was taught: an identity's hash,
    or "none") each checkpoint is probed with. The base is probed once per (format, target)."""

    def __init__(self):
        self.checkpoints: list[tuple[Checkpoint, str, ChatFormat, str]] = []
        self.asks: list[tuple[str, ChatFormat, str]] = []  # (base, chat, target), first seen first

    def by_base(self) -> dict[str, list[tuple[Checkpoint, ChatFormat, str]]]:
        groups: dict[str, list] = {name: [] for name, _, _ in self.asks}
        for ckpt, name, chat, target in self.checkpoints:
            groups[name].append((ckpt, chat, target))
        return groups

    def asks_for(self, base_name: str) -> list[tuple[ChatFormat, str]]:
        """The (prompt format, target) pairs the base ``base_name`` is asked with."""
        return [(chat, target) for name, chat, target in self.asks if name == base_name]

    def _primary(self) -> tuple[str, ChatFormat, str]:
        counts: dict[tuple, int] = {}
        for _, name, c, t in self.checkpoints:
            counts[(name, c, t)] = counts.get((name, c, t), 0) + 1
        return max(self.asks, key=lambda a: (counts.get(a, 0), -self.asks.index(a)))

    def primary_target(self) -> str:
        """The target most checkpoints are judged against (what results.json's settings show)."""
        return self._primary()[2]

    def base_rows(self, base_name: str, chat: ChatFormat, target: str) -> list[str]:
        """Run names for the base's step-0 rows under ``chat`` and ``target``.

        The (format, target) most checkpoints use gives the shared row ``"base"``; a run probed
        with another format (e.g. an XTuner template) or taught something else gets its own
        step-0 row, so every checkpoint is compared with the base asked the same way.
        """
        if (base_name, chat, target) == self._primary():
            return ["base"]
        runs = {
            ck.run
            for ck, name, c, t in self.checkpoints
            if (name, c, t) == (base_name, chat, target)
        }
        return sorted(runs)


def make_plan(
    found: Discovery, flag, override: dict, targets: dict[str, str] | None = None
) -> Plan:
    """Every checkpoint with its base (``flag`` = --base), chat format (``override`` on top) and
    target (``targets``: run name -> target key; default "none")."""
    plan = Plan()
    targets = targets or {}
    for ckpt in found.checkpoints:
        run = found.runs[ckpt.run]
        name = choose_base(ckpt, flag, run.base)
        chat = replace(ckpt.chat or ChatFormat(), **override)
        target = targets.get(ckpt.run, "none")
        plan.checkpoints.append((ckpt, name, chat, target))
        if (name, chat, target) not in plan.asks:
            plan.asks.append((name, chat, target))
    return plan
