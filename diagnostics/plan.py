"""Sweep planning: which base model and which prompt format each discovered checkpoint gets.

Pure (no model loaded): the base comes from --base, the adapter's own config, the run's manifest,
or the default; the chat format from the checkpoint's run (manifest, XTuner config) with --system /
--template on top. ``diag merge`` uses the same base choice, so a merge and its sweep agree.
"""

from __future__ import annotations

from dataclasses import replace

from diag.diagnostics.discover import Checkpoint, Discovery

from diag.display import shown
from diag.errors import DiagError
from diag.models import DEFAULT_BASE, resolve_base
from diag.types import ChatFormat


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
            _check_fields(template)
            fields["template"] = template
        else:
            raise DiagError(
                f"--template {shown(template)} has no '{{input}}' and is not a known template name",
                fix=f"use a format string with {{input}} or one of {sorted(PROMPT_TEMPLATES)}",
            )
    return fields


def _check_fields(template: str) -> None:
    """A --template format string may name ``{input}`` and ``{system}`` only (``{{`` for a brace):
    checked here, before any model loads, not when the first prompt is rendered."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        unknown = next((f for f in fields if f not in ("input", "system")), None)
        if unknown is None:
            return
        problem = f"names the field {{{unknown}}}" if unknown else "has an empty field {}"
    except ValueError as exc:  # a lone brace
        problem = f"is not a format string ({exc})"
    raise DiagError(
        f"--template {shown(template)} {problem}: only {{input}} and {{system}} are filled in",
        fix="write {{ and }} for literal braces",
    )


def choose_base(ckpt: Checkpoint, flag, run_base: str | None) -> str:
    """--base, else the adapter's own base, else the run's, else the default. A base the
    checkpoint or its run names that is not here (a hub id not in the local cache, a folder of
    another machine) is a one-line DiagError: probing it on another base would only measure
    that base, after minutes of probing."""
    if flag is not None:
        return resolve_base(flag).name
    hints = [h for h in (ckpt.base_hint, run_base) if h]
    if not hints:
        return DEFAULT_BASE
    first = None
    for hint in hints:  # the adapter's own, then the run's (ms-swift: a path, then a hub id)
        if str(hint).lower().rstrip("/").endswith(DEFAULT_BASE):  # HuggingFaceTB/SmolLM2-...
            return DEFAULT_BASE
        try:
            return resolve_base(hint).name
        except DiagError as exc:
            first = first or exc
    whose = "its adapter_config.json" if ckpt.base_hint else "its run"
    raise DiagError(
        f"'{ckpt.path}' was trained on '{hints[0]}' ({whose} says so), which is not available "
        "here (not a local folder, not in the local Hugging Face cache)",
        fix=first.fix or "pass --base with a local copy of it",
    )


class Plan:
    """Which base model, prompt format and target (what the run was taught: an identity's hash,
    or "none") each checkpoint is probed with. The base is probed once per (format, target)."""

    def __init__(self):
        self.checkpoints: list[tuple[Checkpoint, str, ChatFormat, str]] = []
        self.asks: list[tuple[str, ChatFormat, str]] = []  # (base, chat, target), first seen first
        self.unavailable: list[tuple[Checkpoint, str]] = []  # base not here: error rows at once

    def by_base(self) -> dict[str, list[tuple[Checkpoint, ChatFormat, str]]]:
        groups: dict[str, list] = {name: [] for name, _, _ in self.asks}
        for ckpt, name, chat, target in self.checkpoints:
            groups[name].append((ckpt, chat, target))
        return groups

    def asks_for(self, base_name: str) -> list[tuple[ChatFormat, str]]:
        """The (prompt format, target) pairs the base ``base_name`` is asked with."""
        return [(chat, target) for name, chat, target in self.asks if name == base_name]

    def _primary(self) -> tuple[str, ChatFormat, str] | None:
        counts: dict[tuple, int] = {}
        for _, name, c, t in self.checkpoints:
            counts[(name, c, t)] = counts.get((name, c, t), 0) + 1
        if not self.asks:
            return None
        return max(self.asks, key=lambda a: (counts.get(a, 0), -self.asks.index(a)))

    def primary_target(self, default: str) -> str:
        """The target most checkpoints are judged against (what results.json's settings show);
        ``default`` when no checkpoint can be probed."""
        primary = self._primary()
        return primary[2] if primary is not None else default

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
        try:
            name = choose_base(ckpt, flag, run.base)
        except DiagError as exc:
            if flag is not None:  # --base itself is wrong: nothing can be probed
                raise
            plan.unavailable.append((ckpt, str(exc)))
            continue
        chat = replace(ckpt.chat or ChatFormat(), **override)
        target = targets.get(ckpt.run, "none")
        plan.checkpoints.append((ckpt, name, chat, target))
        if (name, chat, target) not in plan.asks:
            plan.asks.append((name, chat, target))
    return plan
