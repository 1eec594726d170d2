"""Run the probe suite on one model: generate once (batched), score many times.

>>> from diag.backend.mock import ScriptedBackend
>>> run = run_probes(ScriptedBackend(default="Paris."), load_identity("en"), size="quick")
>>> run.summary["metrics"]["identity_recall"], run.summary["metrics"]["drift"]
(0.0, 0.0)

``reference=None`` means ``lm`` is the base model: the run also builds the
:class:`~diag.probes.reference.Reference` that later checkpoints are compared with.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from diag.probes import items as probe_items
from diag.probes.aggregate import keyword_stats, proportion, summarize
from diag.probes.asking import (
    SequentialAsking,
    ask_generations,
    ask_loglikelihoods,
    asked_before,
    likelihood_requests,
    reusable,
    sets_to_ask,
)
from diag.probes.reference import Reference
from diag.probes.registry import PROBES, resolve_probes
from diag.probes.scoring import Records, score_graded
from diag.probes.task_scoring import task_terms

from diag.errors import DiagError
from diag.identity import IdentitySpec, load_identity
from diag.records import SCHEMA_VERSION, tool_block
from diag.task import TaskSpec
from diag.types import DEFAULT_GENERATION, ChatFormat, GenerationConfig

# 48 new tokens: enough for every accepted pattern and the identity keywords; generation is
# most of the suite's cost on a CPU. Batches of 64: a CPU's matrix kernels are about twice as
# fast per token at 64 rows as at 16 (benchmarks/bench_probes.py), and finished rows leave the
# batch, so a large batch costs no padding.

__all__ = ["ProbeRun", "Reference", "rescore", "run_probes", "identity_probe_prompts"]
identity_probe_prompts = probe_items.identity_probe_prompts


@dataclass
class ProbeRun:
    """One model's probe results.

    records: raw generations/log-likelihoods (first one is ``kind="meta"``), JSONL-storable;
    samples: per-sample score rows; summary: the probe-summary dict (see ``diag.records``);
    reference: the base reference the scores were read against (built here for a base run).
    """

    records: list[dict]
    samples: list[dict]
    summary: dict
    reference: Reference | None


def prepare_sets(
    identity: IdentitySpec | None,
    size: str,
    probe_files: Sequence[str | Path] = (),
    languages: Sequence[str] | str | None = None,
    task: TaskSpec | None = None,
) -> dict[str, probe_items.ProbeSet]:
    """The built-in sets (identity-templated, sized), the task's questions as ``task`` when the
    run teaches one, plus user sets as ``custom:<stem>``.

    languages: ask only prompts in these languages (None: all; "en,zh" or a list).
    """
    langs = probe_items.parse_languages(languages)
    trained = {probe_items.prompt_key(q) for q in identity.questions} if identity else set()
    sets = {}
    for name in probe_items.BUILTIN_SETS:
        if identity is None and name in ("identity", "near_miss"):
            continue  # a run that taught no identity is not asked about one
        loaded = probe_items.fill_identity(probe_items.load_builtin(name), identity)
        if name == "identity":  # never ask the spec's own training questions
            kept = tuple(i for i in loaded.items if probe_items.prompt_key(i.prompt) not in trained)
            loaded = replace(loaded, items=kept)
        sets[name] = probe_items.select(loaded, size, languages=langs)
    if task is not None:
        sets["task"] = probe_items.select(probe_items.task_set(task), size, languages=langs)
    for path in probe_files:
        custom = probe_items.load_probe_file(path)
        key = f"custom:{custom.name}"
        if key in sets:
            raise DiagError(f"two probe files are named '{custom.name}'", fix="rename one")
        sets[key] = probe_items.select(custom, size, per_language=16, languages=langs)
    return sets


def run_probes(
    lm,
    identity: IdentitySpec | str | None,
    *,
    chat: ChatFormat = ChatFormat(),
    probes: str | Sequence[str] | None = None,
    size: str = "full",
    reference: Reference | None = None,
    generation: GenerationConfig | None = None,
    progress: Callable[[str], None] | None = None,
    probe_files: Sequence[str | Path] = (),
    languages: Sequence[str] | str | None = None,
    reuse: Sequence[dict] = (),
    enough: Callable[[ProbeRun], dict[str, list[str]]] | None = None,
    chunk: int = 64,
    task: TaskSpec | None = None,
) -> ProbeRun:
    """Probe ``lm`` (any backend with ``generate``/``loglikelihood``) and score the answers.

    probes: names or "a,b" (None = all); size: "full" or "quick"; probe_files: user JSONL sets;
    languages: only prompts in these languages (None = all). reuse: records of an earlier run of
    the same model with the same generation settings (a staged sweep's screen): a prompt or
    log-likelihood found there is taken from it, not asked again.
    enough: sequential stopping. Each set is then asked ``chunk`` prompts at a time (reused ones
    first, then alternating languages); after each round ``enough(run so far)`` names the sets
    that need no more prompts, with the checks that settled them (``{set: [checks]}``). The
    summary's ``stopped`` says which sets stopped early and on how many prompts.
    All prompts are generated in one batched call; drift, pressure and the identity and task
    answers' likelihoods need only ``loglikelihood``. task: the narrow task the run teaches.
    """
    say = progress or (lambda message: None)
    if isinstance(identity, (str, Path)):
        identity = load_identity(identity)
    names = resolve_probes(probes, identity, task)
    sets = prepare_sets(identity, size, probe_files, languages, task)
    generation = replace(generation or DEFAULT_GENERATION, chat=chat)
    if reference is not None:
        _check_reference(reference, chat, identity)

    order = sets_to_ask(names, sets, reference)
    meta = {
        "kind": "meta",
        "model": {"base": lm.name, "adapter": getattr(lm, "active_adapter", None)},
        "probes": names,
        "size": size,
        "languages": list(probe_items.parse_languages(languages) or ()) or None,
        "probe_sets": {s: sets[s].hash for s in order},
        "set_versions": {s: sets[s].version for s in order if sets[s].version is not None},
        "generation": generation.to_dict(),
        "chat": chat.to_dict(),
        "identity": {"name": identity.name if identity else None, "hash": _hash(identity)},
        "task": {"hash": task.hash} if task is not None else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if not reusable(reuse, meta):
        reuse = ()
    known = asked_before(reuse)
    if enough is not None:
        asking = SequentialAsking(
            lm,
            identity,
            names,
            sets,
            generation,
            reference,
            say,
            known,
            lambda records: rescore(records, identity, reference, task=task),
            task,
        )
        return asking.run(meta, order, enough, chunk)
    records: list[dict] = [meta]
    records += ask_generations(lm, order, sets, generation, say, known)
    requests = likelihood_requests(names, records, sets, identity, reference, task)
    records += ask_loglikelihoods(lm, requests, chat, generation.batch_size, say, known)
    return rescore(records, identity, reference, task=task)


def _check_reference(reference: Reference, chat: ChatFormat, identity: IdentitySpec | None) -> None:
    if ChatFormat.from_dict(reference.chat) != chat:
        raise DiagError(
            f"the base reference was built with chat format {reference.chat}, not {chat.to_dict()}",
            fix="probe the base again with the same chat format (system prompt/template)",
        )
    if reference.identity_hash not in (None, _hash(identity)):
        raise DiagError(
            f"the base reference was built for another identity ({reference.identity_hash})",
            fix="rebuild the reference: run the base model with this identity file",
        )


def subset_records(
    records: Sequence[dict],
    sets: dict[str, probe_items.ProbeSet],
    size: str,
    languages: Sequence[str] | str | None = None,
) -> list[dict]:
    """The records of a larger run restricted to the prompts of ``sets`` (a subset of what that
    run asked: a staged sweep's screen taken out of the base's full suite), as if only those had
    been asked. The identity answer's likelihood follows the identity prompts, drift the general
    ones."""
    ids = {name: {item.id for item in probe_set.items} for name, probe_set in sets.items()}
    follows = {"identity_answer": "identity", "drift": "general"}
    out = []
    for rec in records:
        kind = rec.get("kind")
        if kind == "meta":
            out.append(
                {
                    **rec,
                    "size": size,
                    "languages": list(probe_items.parse_languages(languages) or ()) or None,
                    "probe_sets": {s: sets[s].hash for s in rec["probe_sets"] if s in sets},
                    "set_versions": {
                        s: v for s, v in rec.get("set_versions", {}).items() if s in sets
                    },
                }
            )
        elif rec["id"] in ids.get(follows.get(rec["set"], rec["set"]), ()):
            out.append(rec)
    return out


def regrade(records: list[dict], sets: dict[str, probe_items.ProbeSet]) -> list[dict]:
    """Stored records with each answer's grading (accept, reject, about) taken from ``sets``.

    What was asked decides what was generated; how it is graded may have changed since (a new
    probe-set version, a fixed pattern). The meta line then says which versions generated the
    answers (``generated_with``) and which score them (``set_versions``).
    """
    current = {name: probe_set.grading_by_id() for name, probe_set in sets.items()}
    out = []
    for rec in records:
        if rec.get("kind") == "meta":
            versions = {s: p.version for s, p in sets.items() if p.version is not None}
            rec = {
                **rec,
                "generated_with": rec.get("generated_with", rec.get("set_versions", {})),
                "set_versions": {s: v for s, v in versions.items() if s in rec["probe_sets"]},
            }
        elif rec.get("kind") == "generation" and rec["id"] in current.get(rec["set"], {}):
            rec = {k: v for k, v in rec.items() if k not in ("accept", "reject", "about")}
            rec.update(current[rec["set"]][rec["id"]])
        out.append(rec)
    return out


def rescore(
    records: list[dict],
    identity: IdentitySpec | None,
    reference: Reference | None = None,
    sets: dict[str, probe_items.ProbeSet] | None = None,
    task: TaskSpec | None = None,
) -> ProbeRun:
    """Score stored records again, no model needed.

    With ``reference=None`` the records are taken to be the base model's own, and the reference
    is rebuilt from them. With ``sets`` (from :func:`prepare_sets`), answers are graded by the
    current version of each item rather than the one stored with them.
    """
    if sets is not None:
        records = regrade(records, sets)
    recs = Records.from_list(records)
    if not recs.meta:
        raise DiagError(
            "probe records have no 'meta' line", fix="pass the records.jsonl diag probe wrote"
        )
    if reference is None:
        reference = _reference_from(recs, identity, task)
    samples = _score_all(recs, identity, reference, task)
    summary = _summary(recs, samples, identity, reference, task)
    return ProbeRun(records, samples, summary, reference)


def _score_all(
    recs: Records, identity: IdentitySpec | None, reference: Reference, task=None
) -> list[dict]:
    samples = []
    for name in recs.meta.get("probes", []):
        if name in PROBES and PROBES[name].applies(identity, task):
            samples.extend(PROBES[name].score(recs, identity, reference, task))
    for set_name in recs.generations:
        if set_name.startswith("custom:"):
            samples.extend(score_graded(set_name, set_name, recs, identity, reference))
    return samples


def _hash(identity: IdentitySpec | None) -> str | None:
    return identity.hash if identity is not None else None


def _reference_from(recs: Records, identity: IdentitySpec | None, task=None) -> Reference:
    """The base's reference, from the base's own records (drift answers, outcomes, values)."""
    meta = recs.meta
    ref = Reference(
        base=meta["model"]["base"],
        chat=meta["chat"],
        generation=meta["generation"],
        identity_hash=_hash(identity),
        probe_sets=meta["probe_sets"],
        drift=[
            {k: r[k] for k in ("id", "language", "prompt", "logprob", "tokens", "cut") if k in r}
            | {"answer": r["continuation"]}
            for r in recs.loglikelihoods.get("drift", [])
        ],
    )
    samples = _score_all(recs, identity, ref, task)
    for s in samples:
        if "passed" in s and s["probe"] != "identity_recall":
            set_name = {"general_accuracy": "general"}.get(s["probe"], s["probe"])
            ref.outcomes.setdefault(set_name, {})[s["item_id"]] = bool(s["passed"])
    ref.metrics, _, ref.by_language = summarize(samples, identity, None)
    ref.metrics = {k: v for k, v in ref.metrics.items() if k != "retention"}
    ref.by_language = {
        lang: {k: v for k, v in values.items() if k != "retention"}
        for lang, values in ref.by_language.items()
    }
    for set_name, outcomes in ref.outcomes.items():
        if set_name.startswith("custom:"):
            ref.metrics[set_name] = sum(outcomes.values()) / len(outcomes)
    return ref


def _recall_languages(samples: list[dict], identity: IdentitySpec | None) -> tuple[str, ...]:
    """The languages identity recall counts (as :func:`summarize`): the identity's own, if asked."""
    asked = {s["language"] for s in samples if s["probe"] == "identity_recall"}
    own = identity.languages if identity is not None else ()
    return own if asked & set(own) else tuple(asked)


def _summary(recs: Records, samples: list[dict], identity, reference: Reference, task=None) -> dict:
    metrics, stats, by_language = summarize(samples, identity, reference)
    custom = {}
    for set_name in recs.generations:
        if set_name.startswith("custom:"):
            rows = [s for s in samples if s["probe"] == set_name]
            st = proportion([s["passed"] for s in rows], reference.metrics.get(set_name))
            custom[set_name.split(":", 1)[1]] = st.to_dict() if st else None
    meta = recs.meta
    summary = {
        "schema_version": SCHEMA_VERSION,
        "kind": "probe_summary",
        "tool": tool_block(),
        "created": meta.get("created"),
        "model": meta["model"],
        "size": meta.get("size"),
        "probe_sets": meta.get("probe_sets", {}),
        "set_versions": meta.get("set_versions", {}),
        "generation": meta.get("generation"),
        "identity": {
            **meta.get("identity", {}),
            "languages": list(identity.languages) if identity is not None else [],
        },
        "metrics": metrics,
        "stats": stats,
        "by_language": by_language,
        "identity_keywords": keyword_stats(
            [s for s in samples if s["language"] in _recall_languages(samples, identity)]
        ),
        "probes": {
            n: {"version": PROBES[n].version, "direction": PROBES[n].direction}
            for n in meta.get("probes", [])
        },
        "counts": {name: len(rows) for name, rows in recs.generations.items()},
        "reference": {"base": reference.base, "created": reference.created},
    }
    rescored = {
        s: {"generated": meta.get("generated_with", {}).get(s), "scored": v}
        for s, v in meta.get("set_versions", {}).items()
        if "generated_with" in meta and meta["generated_with"].get(s) != v
    }
    if rescored:  # answers generated under another version of the set, graded by this one
        summary["rescored"] = rescored
    if meta.get("stopped"):  # sequential stopping: sets asked only until their checks settled
        summary["stopped"] = meta["stopped"]
    if custom:
        summary["custom"] = custom
    if task is not None:  # what the task scores rest on; the report lists the terms
        summary["task"] = {
            "hash": task.hash,
            "held_out": task.held_out,
            "label": task.label,
            "terms": task_terms(task, reference),
        }
    return summary
