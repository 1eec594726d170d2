"""The ways a sweep asks a checkpoint: the staged sweep's screen and the full suite, and the cache
key that goes with each (everything that decides what the model is asked and how it answers).

Stages depend on what a run was taught: a run with another identity is asked other identity
prompts, and a run that taught none is asked no identity prompts at all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from diag.errors import DiagError
from diag.identity import IdentitySpec
from diag.task import TaskSpec


@dataclass(frozen=True)
class Stage:
    """One way of probing a checkpoint: which prompts (``sets``) and the cache key that goes with
    them (``settings``, see :func:`generation_settings`). ``name``: "full" or "screen"."""

    name: str
    settings: dict
    sets: dict


def make_stages(
    spec: IdentitySpec | None,
    probes,
    size: str,
    generation,
    probe_files,
    languages,
    task: TaskSpec | None = None,
    weights: dict | None = None,
) -> list[Stage]:
    """``size`` "full": the full suite; "quick": the screen only; "staged": the screen, then the
    full suite where the decision is made. The screen asks a fixed subset of prompts in the
    identity's languages (of ``languages``, when given; all asked languages without identity).
    ``weights``: what the key says of the dtype models run in (:func:`diag.backend.loading.dtype_key`)."""
    from diag.probes.items import parse_languages
    from diag.probes.suite import prepare_sets

    if size not in ("staged", "full", "quick"):
        raise DiagError(f"unknown sweep size '{size}'", fix="use --size staged, full or quick")
    stages = []
    if size in ("staged", "quick"):
        asked = parse_languages(languages)
        own = spec.languages if spec is not None else (task.languages if task else ())
        if (size == "quick" and asked) or not own:
            screen_langs = list(asked) if asked else None
        else:
            screen_langs = [x for x in own if asked is None or x in asked] or list(asked)
        sets = prepare_sets(spec, "quick", probe_files, screen_langs, task)
        settings = generation_settings(
            spec, probes, "quick", generation, probe_files, screen_langs, sets, task
        ) | (weights or {})
        stages.append(Stage("screen", settings, sets))
    if size in ("staged", "full"):
        sets = prepare_sets(spec, "full", probe_files, languages, task)
        settings = generation_settings(
            spec, probes, "full", generation, probe_files, languages, sets, task
        ) | (weights or {})
        stages.append(Stage("full", settings, sets))
    return stages


def sweep_settings(stages: list[Stage], size: str) -> dict:
    """The settings results.json records: the widest stage's, with the screen's beside them."""
    settings = dict(stages[-1].settings, size=size)
    if len(stages) > 1:
        screen = stages[0].settings
        settings["screen"] = {k: screen[k] for k in ("languages", "probe_sets")}
    return settings


def generation_settings(
    identity: IdentitySpec | None,
    probes,
    size: str,
    generation,
    probe_files=(),
    languages=None,
    sets=None,
    task: TaskSpec | None = None,
) -> dict:
    """Everything that decides what the model is asked and how it answers: the cache key.

    Scores are not part of it: cached entries hold the raw generations and are re-scored with
    the current probe code and the current version of every item's grading on every sweep
    (generate once, score many times). ``sets``: :func:`prepare_sets`' answer, if already made.
    ``identity`` None: the run taught no identity ("none" in the key); ``task``: the narrow task
    it teaches (its hash is in the key, and its questions are a probe set).
    """
    from diag.probes.items import parse_languages
    from diag.probes.reference import REFERENCE_VERSION
    from diag.probes.registry import resolve_probes
    from diag.probes.suite import DEFAULT_GENERATION, prepare_sets

    names = resolve_probes(probes, identity, task)
    prompts = {
        name: "sha256:"
        + hashlib.sha256(
            json.dumps([i.asked() for i in probe_set.items], sort_keys=True).encode()
        ).hexdigest()[:16]
        for name, probe_set in (
            sets or prepare_sets(identity, size, probe_files, languages, task)
        ).items()
    }
    return {
        "probes": names,
        "size": size,
        "languages": list(parse_languages(languages) or ()) or None,
        "probe_sets": prompts,
        "generation": (generation or DEFAULT_GENERATION).to_dict(),
        "reference_version": REFERENCE_VERSION,
        "identity": identity.hash if identity is not None else "none",
        "probe_files": [str(Path(p).resolve()) for p in probe_files],
        **({"task": task.hash} if task is not None else {}),
    }
