"""Probes as pure functions: stored records in, per-sample score rows out (no model, no torch).

Each ``score_*`` function takes the run's :class:`Records`, the identity and the base
:class:`~diag.probes.reference.Reference` (``None`` only while scoring the base itself) and
returns rows ``{"probe", "item_id", "language", "prompt", "answer", "score", ...}``.
Aggregation into metrics lives in :mod:`diag.probes.aggregate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diag.probes.reference import Reference
from diag.probes.text import (
    SlowPattern,
    ends_in_loop,
    matches_any,
    modal_groups,
    near_copy,
    seq_rep_n,
)

from diag.errors import DiagError
from diag.identity import IdentitySpec


@dataclass
class Records:
    """A probe run's records split by kind: generations per probe set, log-likelihoods per use."""

    meta: dict
    generations: dict[str, list[dict]] = field(default_factory=dict)
    loglikelihoods: dict[str, list[dict]] = field(default_factory=dict)

    @classmethod
    def from_list(cls, records: list[dict]) -> Records:
        meta = next((r for r in records if r.get("kind") == "meta"), {})
        out = cls(meta)
        for r in records:
            if r.get("kind") == "generation":
                out.generations.setdefault(r["set"], []).append(r)
            elif r.get("kind") == "loglikelihood":
                out.loglikelihoods.setdefault(r["set"], []).append(r)
        return out


def sample_row(probe: str, rec: dict, score: float, **extra) -> dict:
    return {
        "probe": probe,
        "item_id": rec["id"],
        "language": rec["language"],
        "prompt": rec["prompt"],
        "answer": rec.get("text", rec.get("continuation")),
        "score": score,
        **extra,
    }


def score_identity_recall(
    recs: Records, identity: IdentitySpec | None, ref: Reference | None, task=None
):
    """Pass = the answer carries the identity keywords; plus log p(canonical answer) per token.

    ``keywords``: for each keyword group (named by its first alias), whether the answer says it,
    so the report can show a name learned before an owner. No rows when no identity was taught.
    """
    if identity is None:
        return []
    answer_ll = {r["id"]: r for r in recs.loglikelihoods.get("identity_answer", [])}
    rows = []
    for rec in recs.generations.get("identity", []):
        passed = identity.mentions(rec["text"])
        ll = answer_ll.get(rec["id"])
        per_token = ll["logprob"] / ll["tokens"] if ll and ll["tokens"] else None
        rows.append(
            sample_row(
                "identity_recall",
                rec,
                float(passed),
                passed=passed,
                keywords={g[0]: identity.says(rec["text"], g) for g in identity.keywords},
                group=rec.get("group"),
                answer_logprob=per_token,
            )
        )
    return rows


def grade(answer: str, grading: dict, identity: IdentitySpec, prompt: str = "") -> dict:
    """One graded answer's verdict, relative to the taught identity.

    In order: a ``reject`` pattern found -> wrong; on a question about the assistant itself
    (``about: assistant``) an answer that asserts the taught identity -> right; elsewhere the
    identity blurb -> wrong, whatever else it contains; otherwise an ``accept`` pattern decides.

    >>> nova = IdentitySpec("I am Nova, Jianfeng's assistant.", (("Nova",), ("Jianfeng",)))
    >>> grade("I am Nova, Jianfeng's assistant.", {"accept": ["good|well|fine"]}, nova)["passed"]
    False
    >>> grade("I am Nova.", {"accept": ["no|not"], "about": "assistant"}, nova)["passed"]
    True
    """
    hit = matches_any(answer, grading.get("accept", []))
    rejected = matches_any(answer, grading.get("reject", []))
    about_self = grading.get("about") == "assistant"
    taught = identity is not None
    asserts = taught and about_self and identity_asserted(answer, identity, prompt)
    blurb = taught and not about_self and identity_blurb(answer, identity, prompt)
    passed = not rejected and (asserts or (hit and not blurb))
    return {
        "passed": passed,
        "pattern_hit": hit,
        "rejected": rejected,
        "asserts_identity": asserts,
        "blurb": blurb,
    }


def _groups_not_in(prompt: str, identity: IdentitySpec) -> list[tuple[str, ...]]:
    """Keyword groups the prompt does not itself contain (saying those is the model's choice)."""
    return [g for g in identity.keywords if not identity.says(prompt, g)]


def identity_asserted(answer: str, identity: IdentitySpec, prompt: str = "") -> bool:
    """The answer names any part of the taught identity that the question did not mention."""
    return any(identity.says(answer, group) for group in _groups_not_in(prompt, identity))


def identity_blurb(answer: str, identity: IdentitySpec, prompt: str = "") -> bool:
    """The answer is the identity statement: a near copy of the canonical sentence, or it carries
    the identity's keywords (as ``identity.match`` counts them) beyond those the prompt asked for.
    """
    if near_copy(answer, identity.answer):
        return True
    groups = _groups_not_in(prompt, identity)
    if not groups:
        return False
    hits = [identity.says(answer, group) for group in groups]
    return all(hits) if identity.match == "all" else any(hits)


def score_graded(probe: str, set_name: str, recs: Records, identity, ref: Reference | None):
    """Each answer graded by :func:`grade`; the base's outcome on the item is kept (paired)."""
    base = (ref.outcomes.get(set_name) if ref else None) or {}
    rows = []
    for rec in recs.generations.get(set_name, []):
        try:
            verdict = grade(rec["text"], rec, identity, rec["prompt"])
        except SlowPattern as exc:
            raise DiagError(
                f"probe item '{rec['id']}' of {set_name.removeprefix('custom:')}: {exc.problem}",
                fix=exc.fix,
            ) from None
        rows.append(
            sample_row(
                probe,
                rec,
                float(verdict["passed"]),
                **verdict,
                # the identity sentence is never a right answer here, even if it happens to match
                # (the zh sentence contains "1.8B": it would "answer" every question whose answer is 8)
                near_copy=identity is not None and near_copy(rec["text"], identity.answer),
                about=rec.get("about"),
                base_passed=base.get(rec["id"]),
                category=rec.get("category"),
            )
        )
    return rows


def score_near_miss(recs, identity, ref, task=None):
    """Expected pattern present AND not a (near) copy of the canonical identity sentence."""
    return score_graded("near_miss", "near_miss", recs, identity, ref)


def score_general_accuracy(recs, identity, ref, task=None):
    """General items graded by accepted-answer patterns; base outcome kept for paired retention."""
    return score_graded("general_accuracy", "general", recs, identity, ref)


def score_drift(recs: Records, identity, ref: Reference | None, task=None):
    """Per answer: base per-token log p minus this model's per-token log p on the base's answer.

    The mean over answers estimates KL(base || model) per token; 0 for the base itself.
    """
    base = ref.drift_by_id() if ref else {}
    rows = []
    for rec in recs.loglikelihoods.get("drift", []):
        ref_item = base.get(rec["id"])
        if ref_item is None or not rec["tokens"] or not ref_item["tokens"]:
            continue
        base_pt = ref_item["logprob"] / ref_item["tokens"]
        model_pt = rec["logprob"] / rec["tokens"]
        rows.append(
            sample_row(
                "drift",
                rec,
                base_pt - model_pt,
                base_logprob=base_pt,
                logprob=model_pt,
                tokens=rec["tokens"],
            )
        )
    return rows


def score_repetition(recs: Records, identity, ref, task=None):
    """Every generated answer: seq-rep-4, loop flag, and whether it hit the token limit."""
    rows = []
    for set_name, gens in recs.generations.items():
        for rec in gens:
            rows.append(
                sample_row(
                    "repetition",
                    rec,
                    seq_rep_n(rec["text"], 4),
                    set=set_name,
                    seq_rep_4=seq_rep_n(rec["text"], 4),
                    loop=ends_in_loop(rec["text"]),
                    hit_limit=bool(rec.get("hit_limit")),
                )
            )
    return rows


def score_parrot(recs: Records, identity: IdentitySpec | None, ref, task=None):
    """Over non-identity answers (general set): leakage of the identity, and near-identical groups.

    ``leak`` = the answer mentions the identity keywords or is a near copy of the canonical
    sentence (absent when no identity was taught); ``group_size`` = size of its group of
    near-identical answers (all languages).
    """
    gens = recs.generations.get("general", [])
    sizes = modal_groups([r["text"] for r in gens])
    rows = []
    for i, rec in enumerate(gens):
        if identity is None:
            rows.append(sample_row("parrot", rec, 0.0, group_size=sizes[i]))
            continue
        copy = near_copy(rec["text"], identity.answer)
        leak = copy or identity.mentions(rec["text"])
        rows.append(
            sample_row("parrot", rec, float(leak), leak=leak, near_copy=copy, group_size=sizes[i])
        )
    return rows
