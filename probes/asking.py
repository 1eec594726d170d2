"""Asking a model the probe suite: prompts generated in batches, log-likelihoods requested, answers
reused from an earlier run of the same model, and sequential stopping (a chunk of prompts per set
at a time, until each set is used up or settled). Scoring is :mod:`diag.probes.suite`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from diag.probes import items as probe_items
from diag.probes.reference import Reference
from diag.probes.registry import PROBES
from diag.probes.task_scoring import taught_answers

from diag.identity import IdentitySpec
from diag.task import TaskSpec
from diag.types import ChatFormat, GenerationConfig, LoglikelihoodRequest

if TYPE_CHECKING:
    from diag.probes.suite import ProbeRun


@dataclass
class SequentialAsking:
    """Asks the suite a chunk of prompts per set at a time, until each set is used up or settled."""

    lm: object
    identity: IdentitySpec | None
    names: list[str]
    sets: dict
    generation: GenerationConfig
    reference: Reference | None
    say: Callable[[str], None]
    known: dict
    score: Callable  # records -> ProbeRun: the suite's scoring, with the run's targets
    task: TaskSpec | None = None

    def run(self, meta: dict, order: list[str], enough, chunk: int) -> ProbeRun:
        """Ask ``order``'s sets ``chunk`` prompts at a time; after each round ``enough(run so
        far)`` names the sets that need no more. ``enough.first`` (optional): sets asked alone in
        the first round, so that ``enough`` can stop the others before any of theirs is asked."""
        queue = {s: self._ask_order(s) for s in order}
        asked: dict[str, list] = {s: [] for s in order}
        generations: list[dict] = []
        stopped: dict[str, dict] = {}
        run = None
        first = [s for s in getattr(enough, "first", ()) if queue.get(s)]
        while any(queue.values()):
            now = {s: q[:chunk] for s, q in queue.items() if q and (not first or s in first)}
            first = []
            for s, items in now.items():
                queue[s], asked[s] = queue[s][chunk:], asked[s] + items
            part = {s: replace(self.sets[s], items=tuple(now[s])) for s in now}
            generations += ask_generations(
                self.lm, list(now), part, self.generation, self.say, self.known
            )
            run = self._score(meta, generations, asked)
            waiting = {s for s, q in queue.items() if q}
            for s, checks in (enough(run) if waiting else {}).items():
                if s in waiting:
                    queue[s] = []
                    stopped[s] = {
                        "asked": len(asked[s]),
                        "of": len(self.sets[s].items),
                        "settled": list(checks),
                    }
        if run is None:  # a suite of no prompts
            return self._score(meta, generations, asked)
        if not stopped:
            return run
        meta["stopped"] = stopped
        return self.score(run.records)

    def _ask_order(self, set_name: str) -> list:
        """Prompts already answered first, then by the quick subset's hash order, languages taking
        turns: every prefix is a fair sample of the set in each language."""
        items = self.sets[set_name].items
        answered = {key[2] for key in self.known if key[0] == "generation" and key[1] == set_name}
        ranks: dict[str, int] = {}
        for lang in sorted({i.language for i in items}):
            in_lang = sorted(
                (i for i in items if i.language == lang), key=lambda i: probe_items.hash_rank(i.id)
            )
            ranks.update({i.id: rank for rank, i in enumerate(in_lang)})
        return sorted(items, key=lambda i: (i.id not in answered, ranks[i.id], i.language))

    def _score(self, meta: dict, generations: list[dict], asked: dict) -> ProbeRun:
        part = {s: replace(self.sets[s], items=tuple(items)) for s, items in asked.items()}
        place = {(s, item.id): i for s in asked for i, item in enumerate(self.sets[s].items)}
        sets = list(asked)
        generations.sort(key=lambda r: (sets.index(r["set"]), place[(r["set"], r["id"])]))
        requests = likelihood_requests(
            self.names, [meta, *generations], part, self.identity, self.reference, self.task
        )
        lls = ask_loglikelihoods(
            self.lm,
            requests,
            self.generation.chat,
            self.generation.batch_size,
            self.say,
            self.known,
        )
        self.known.update(asked_before(lls))
        self.known.update(asked_before(generations))
        return self.score([meta, *generations, *lls])


def asked_key(record: dict) -> tuple:
    """What makes two records the same question: kind, set, item, prompt (and continuation)."""
    return (
        record["kind"],
        record["set"],
        record["id"],
        record["prompt"],
        record.get("continuation"),
    )


def asked_before(records: Sequence[dict]) -> dict[tuple, dict]:
    return {asked_key(r): r for r in records if r.get("kind") in ("generation", "loglikelihood")}


def reusable(records: Sequence[dict], meta: dict) -> bool:
    """Answers are reused only from the same model asked the same way."""
    earlier = next((r for r in records if r.get("kind") == "meta"), None)
    return earlier is not None and all(
        earlier.get(k) == meta[k] for k in ("model", "generation", "chat", "identity")
    )


def sets_to_ask(names: list[str], sets: dict, reference: Reference | None) -> list[str]:
    """The probe sets whose prompts are generated, in the suite's order."""
    wanted = {s for n in names for s in PROBES[n].sets}
    if "drift" in names and reference is None:
        wanted.add("general")  # the base's answers to general prompts are the drift texts
    wanted.update(k for k in sets if k.startswith("custom:"))
    return [s for s in sets if s in wanted]


def ask_generations(lm, order: list[str], sets: dict, generation, say, known: dict) -> list[dict]:
    """Every prompt of the ``order`` sets answered in one batched call: one ``generation``
    record per (set, item). Prompts already answered (``known``, by :func:`asked_key`) are not
    asked again."""
    jobs = [(s, item) for s in order for item in sets[s].items]
    records = [{"kind": "generation", "set": s, **item.to_dict()} for s, item in jobs]
    todo = [r for r in records if asked_key(r) not in known]
    say(f"generating {len(todo)} answers ({', '.join(order)})")
    answers = lm.generate([r["prompt"] for r in todo], generation) if todo else []
    made = {
        asked_key(r): {
            "text": gen.text,
            "new_tokens": gen.new_tokens,
            "hit_limit": gen.hit_limit,
            "prompt_tokens": gen.prompt_tokens,
        }
        for r, gen in zip(todo, answers)
    }
    answered = ("text", "new_tokens", "hit_limit", "prompt_tokens")
    for r in records:
        key = asked_key(r)
        r.update(made[key] if key in made else {k: known[key][k] for k in answered})
    return records


def likelihood_requests(
    names, records, sets, identity, reference, task=None
) -> list[tuple[str, dict]]:
    """(set, request) pairs: the identity answer after each identity prompt, the drift texts,
    the task's reference answers, and the taught answers after each general prompt (pressure)."""
    requests: list[tuple[str, dict]] = []
    if "identity_recall" in names:
        for item in sets["identity"].items:
            requests.append(
                ("identity_answer", {**item.to_dict(), "continuation": identity.answer})
            )
    if "task" in names and task is not None and "task" in sets:
        references = {r.id: r.reference for r in task.rows}
        for item in sets["task"].items:
            requests.append(
                ("task_answer", {**item.to_dict(), "continuation": references[item.id]})
            )
    if "drift" in names:
        drift = drift_texts(records, sets, reference)
        requests += [("drift", d) for d in drift]
        if "pressure" in names:
            for d in drift:
                for answer in taught_answers(identity, task):
                    requests.append(("pressure", {**d, "continuation": answer}))
    return requests


def ask_loglikelihoods(
    lm, requests, chat: ChatFormat, batch_size: int, say, known: dict
) -> list[dict]:
    records = [{"kind": "loglikelihood", "set": set_name, **req} for set_name, req in requests]
    todo = [r for r in records if asked_key(r) not in known]
    if todo:
        say(f"scoring {len(todo)} log-likelihoods")
        lls = lm.loglikelihood(
            [LoglikelihoodRequest(r["prompt"], r["continuation"]) for r in todo],
            chat=chat,
            batch_size=batch_size,
        )
        made = {
            asked_key(r): {"logprob": ll.logprob, "tokens": ll.tokens} for r, ll in zip(todo, lls)
        }
    else:
        made = {}
    for r in records:
        key = asked_key(r)
        r.update(made.get(key) or {k: known[key][k] for k in ("logprob", "tokens")})
    return records


def drift_texts(records, sets, reference) -> list[dict]:
    """(prompt, base answer) pairs to score: from the reference, or the base's answers just made.

    An answer cut at the token limit is kept: drift compares per-token log-likelihoods of the
    tokens the base produced, which is as valid for a prefix as for a whole answer, and costs no
    second generation.
    """
    general_ids = {i.id for i in sets["general"].items}
    if not general_ids:
        return []  # no general prompt asked (yet): nothing to compare
    if reference is not None:
        chosen = [d for d in reference.drift if d["id"] in general_ids] or reference.drift
        return [drift_item(d, d["answer"], d.get("cut", False)) for d in chosen]
    gens = [r for r in records if r.get("kind") == "generation" and r["set"] == "general"]
    texts = [drift_item(r, r["text"].rstrip("\ufffd"), r["hit_limit"]) for r in gens]
    return [d for d in texts if d["continuation"].strip()]


def drift_item(row: dict, answer: str, cut: bool) -> dict:
    return {
        "id": row["id"],
        "language": row["language"],
        "prompt": row["prompt"],
        "continuation": answer,
        "cut": bool(cut),  # the base's answer went on past the token limit; this is its prefix
    }
