"""What each run of a sweep was taught (:mod:`diag.data.teaching`), resolved before any model loads.

A run whose target cannot be known (its trainer records no data and none was given, or its data
is not on this machine) stops the sweep at once with every such run named and the fix: judging
it against a guess is what this module exists to prevent.
"""

from __future__ import annotations

import logging
from pathlib import Path

from diag.diagnostics.discover import Discovery

from diag.data.teaching import Taught, what_was_taught
from diag.display import literal
from diag.errors import DiagError
from diag.identity import IdentitySpec, load_identity

log = logging.getLogger("diag")

NOTHING = "none"  # the target key of a run that taught neither an identity nor a task


def target_key(taught: Taught) -> str:
    """What a checkpoint is judged against, as a key: the identity's hash, the task's (both,
    joined by "+"), or "none"."""
    parts = [x.hash for x in (taught.spec, taught.task) if x is not None]
    if taught.task is not None and taught.spec is None:
        parts = [f"task:{taught.task.hash}"]
    return "+".join(parts) or NOTHING


def judged_on(taught: Taught) -> list[str]:
    """What the checks of a run's checkpoints measure: "identity", "task", both or neither."""
    return [name for name, x in (("identity", taught.spec), ("task", taught.task)) if x]


def resolve_targets(
    found: Discovery, identity=None, data_files=(), eval_files=(), *, announce: bool = True
) -> dict[str, Taught]:
    """Every run's :class:`Taught`. ``identity``: ``--identity`` (a spec, a YAML path or
    "en"/"zh"; None: each run's own); ``data_files``: ``--data`` for runs that record none;
    ``eval_files``: ``--eval-data``, rows no run trained on, for the task."""
    spec = None
    if identity is not None:
        spec = identity if isinstance(identity, IdentitySpec) else load_identity(identity)
    files = tuple(Path(p) for p in data_files)
    held = tuple(Path(p) for p in eval_files)
    targets: dict[str, Taught] = {}
    problems: list[DiagError] = []
    for name, run in sorted(found.runs.items()):
        try:
            targets[name] = what_was_taught(
                name, run.path, run.data, identity=spec, data_files=files, eval_files=held
            )
        except DiagError as exc:
            problems.append(exc)
    if problems:
        more = f" (and {len(problems) - 1} more run(s) like it)" if len(problems) > 1 else ""
        first = problems[0]
        raise DiagError(f"{first.problem}{more}", fix=first.fix)
    if announce:
        for name, taught in targets.items():
            log.info(literal(f"taught: {name}: {taught.summary()}"))
            for f in taught.files:
                role = "" if f.get("role") == "train" else f", {f.get('role')}"
                log.info(literal(f"  data: {f['path']} ({f['rows']} rows, {f['format']}{role})"))
            for part, how in taught.task_parts.items():
                log.info(literal(f"  {part}: {how}"))
            for warning in taught.warnings:
                log.warning(literal(f"warning: {warning}"))
    return targets


def taught_for_model(model, identity=None, data_files=(), eval_files=()) -> Taught:
    """What the checkpoint (or model folder) ``model`` was taught, for ``diag probe``: the run
    folder holding it (or ``model`` itself) says, as for a sweep. Unlike a sweep, nothing known
    is not an error here: the identity probes are left out, and the summary says why."""
    from diag.formats.trainers import read_run

    spec = None
    if identity is not None:
        spec = identity if isinstance(identity, IdentitySpec) else load_identity(identity)
        return Taught(spec, f"--identity {spec.source or identity}")
    files = tuple(Path(p) for p in data_files)
    folders = []
    if model is not None:
        path = Path(model).expanduser()
        folders = [path, path.parent] if path.is_dir() else [path.parent]
    for folder in folders:
        facts = read_run(folder)
        if facts.data is not None and not facts.data.empty:
            return what_was_taught(
                folder.name, folder, facts.data, data_files=files, eval_files=tuple(eval_files)
            )
    if files:
        return what_was_taught(str(model or "model"), Path.cwd(), None, data_files=files)
    return Taught(
        None,
        "nothing (no --identity, no --data, and no run record beside the model)",
        known=False,
        why_none="what the model was taught is unknown: identity probes left out; pass "
        "--identity FILE or --data FILE to measure them",
    )
