"""Probes for narrow task runs and parrot pressure: stored records in, per-sample rows out.

- ``task``: the task's questions (held-out rows, or seen rows) answered by the checkpoint.
  Two scores, because style is not knowledge: ``chrf``, the answer's chrF against the reference
  (sacrebleu's character n-gram F-score, 0..1: it rises with the trained voice alone), and
  ``facts``, whether the answer carries the reference's facts (its content words that are
  neither the task's house style nor in the question: at least half of them). Plus
  ``answer_logprob`` (the reference's per-token log-likelihood: the eval loss users know) and
  ``memorised`` (the answer is the training answer of a different question).
- ``regurgitation``: the unrelated general prompts answered with the task's content: at least two
  of the task's distinctive terms (frequent in its training answers, rare in the base's own
  answers) that the prompt did not ask for, or an 8-word span copied from a training answer
  (``copied``, with the training row it came from).
- ``pressure``: parrot pressure, from likelihoods only: on the general prompts, whether a taught
  answer (the identity's, or a typical task answer) is more likely per token than the base's own
  greedy answer under the checkpoint. It rises before the parrot shows in generations.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache

from diag.probes.reference import Reference
from diag.probes.scoring import Records, sample_row

from diag.identity import IdentitySpec
from diag.task import TaskSpec, terms

STYLE_SHARE = 0.3  # a term in this share of the training answers is the house style, not a fact
TERM_SHARE = 0.2  # a distinctive task term: in at least this share of the training answers...
BASE_SHARE = 0.05  # ... and in at most this share of the base's own general answers
MAX_TERMS = 30
SPAN_WORDS = 8  # a copied span: this many words in a row (Chinese: SPAN_CHARS characters)
SPAN_CHARS = 12


@lru_cache(maxsize=1)
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def chrf(answer: str, reference: str) -> float:
    """sacrebleu's sentence chrF of ``answer`` against ``reference``, as 0..1 (character
    n-grams, so it works for Chinese as for English)."""
    if not answer.strip() or not reference.strip():
        return 0.0
    return _chrf().sentence_score(answer, [reference]).score / 100.0


def _df(texts: list[str]) -> Counter:
    return Counter(t for text in texts for t in terms(text))


def style_terms(task: TaskSpec) -> set[str]:
    """The house style: terms in at least STYLE_SHARE of the training answers."""
    answers = [a for _, a in task.answers]
    df = _df(answers)
    return {t for t, n in df.items() if n >= max(2, STYLE_SHARE * len(answers))}


def task_terms(task: TaskSpec, ref: Reference | None) -> list[str]:
    """The task's distinctive terms: frequent in its training answers, rare in the base's own
    answers to the general prompts (the task's analogue of an identity's keywords)."""
    answers = [a for _, a in task.answers]
    df = _df(answers)
    base = [d["answer"] for d in ref.drift] if ref is not None else []
    base_df = _df(base)
    keep = [
        t
        for t, n in df.most_common()
        if n >= max(2, TERM_SHARE * len(answers))
        and not t.isdigit()
        and base_df[t] <= BASE_SHARE * max(1, len(base))
    ]
    return keep[:MAX_TERMS]


def facts_of(reference: str, question: str, style: set[str]) -> set[str]:
    """The reference's facts: its content terms that are neither house style nor asked."""
    return terms(reference) - style - terms(question)


def score_task(recs: Records, identity: IdentitySpec | None, ref: Reference | None, task=None):
    """Every task question: chrF, facts, memorised, and the reference's per-token likelihood."""
    if task is None:
        return []
    by_id = {r.id: r for r in task.rows}
    style = style_terms(task)
    answer_ll = {r["id"]: r for r in recs.loglikelihoods.get("task_answer", [])}
    out = []
    for rec in recs.generations.get("task", []):
        item = by_id.get(rec["id"])
        if item is None:
            continue
        answer = rec["text"]
        facts = facts_of(item.reference, item.question, style)
        carried = terms(answer) & facts
        similarity = chrf(answer, item.reference)
        ll = answer_ll.get(rec["id"])
        extra: dict = {"facts": len(carried) >= math.ceil(len(facts) / 2)} if facts else {}
        if ll and ll["tokens"]:
            extra["answer_logprob"] = ll["logprob"] / ll["tokens"]
        out.append(
            sample_row(
                "task",
                rec,
                similarity,
                chrf=similarity,
                memorised=_memorised(answer, item, task, similarity),
                reference=item.reference,
                facts_carried=sorted(carried),
                facts_expected=sorted(facts),
                **extra,
            )
        )
    return out


def _memorised(answer: str, item, task: TaskSpec, own: float) -> bool:
    """The answer is (nearly) the training answer of another question, not this one's."""
    others = {a for q, a in task.answers if a != item.reference and q != item.question}
    if not answer.strip() or not others:
        return False
    mine = terms(answer)  # chrF only against the few answers that share the most words
    closest = sorted(others, key=lambda other: -len(mine & terms(other)))[:10]
    best = max(chrf(answer, other) for other in closest)
    return best >= 0.6 and best > own + 0.15


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())


def _spans(text: str) -> set[str]:
    """Every 8-word span (and, in Chinese, every 12-character span) of ``text``."""
    words = _words(text)
    out = {" ".join(words[i : i + SPAN_WORDS]) for i in range(len(words) - SPAN_WORDS + 1)}
    cjk = "".join(re.findall(r"[\u4e00-\u9fff]", text))
    out |= {cjk[i : i + SPAN_CHARS] for i in range(len(cjk) - SPAN_CHARS + 1)}
    return out


def copied_span(answer: str, task: TaskSpec) -> tuple[str, str] | None:
    """(the longest passage copied, the training question whose answer it comes from: the one
    sharing the most spans), or None."""
    mine = _spans(answer)
    if not mine:
        return None
    shared = [(len(mine & _spans(a)), q, a) for q, a in task.answers]
    count, question, source = max(shared, key=lambda x: x[0], default=(0, "", ""))
    if not count:
        return None
    words, theirs = _words(answer), _words(source)
    match = difflib.SequenceMatcher(None, words, theirs, autojunk=False).find_longest_match()
    passage = " ".join(words[match.a : match.a + match.size])
    if match.size < SPAN_WORDS:  # a Chinese span: characters, not words
        passage = max(mine & _spans(source), key=len)
    return passage, question


def score_regurgitation(recs: Records, identity, ref: Reference | None, task=None):
    """Every general answer: does it bring the task's content to a prompt that did not ask?"""
    if task is None:
        return []
    vocab = set(task_terms(task, ref))
    need = min(2, len(vocab))
    out = []
    for rec in recs.generations.get("general", []):
        brought = sorted((terms(rec["text"]) & vocab) - terms(rec["prompt"]))
        copied = copied_span(rec["text"], task)
        regurgitates = (need > 0 and len(brought) >= need) or copied is not None
        extra = {"span": copied[0], "copied_from": copied[1]} if copied else {}
        out.append(
            sample_row(
                "regurgitation",
                rec,
                float(regurgitates),
                regurgitates=regurgitates,
                copied=copied is not None,
                brought=brought,
                **extra,
            )
        )
    return out


def score_pressure(recs: Records, identity, ref: Reference | None, task=None):
    """Every general prompt: is a taught answer more likely, per token, than the base's own?"""
    own = {r["id"]: r for r in recs.loglikelihoods.get("drift", []) if r.get("tokens")}
    taught: dict[str, float] = {}
    for r in recs.loglikelihoods.get("pressure", []):
        if r.get("tokens"):
            per_token = r["logprob"] / r["tokens"]
            taught[r["id"]] = max(per_token, taught.get(r["id"], -math.inf))
    out = []
    for item_id, rec in own.items():
        if item_id not in taught:
            continue
        mine = rec["logprob"] / rec["tokens"]
        out.append(
            sample_row(
                "pressure",
                rec,
                taught[item_id] - mine,
                pressed=taught[item_id] > mine,
                taught_logprob=taught[item_id],
                own_logprob=mine,
            )
        )
    return out


def taught_answers(identity: IdentitySpec | None, task: TaskSpec | None) -> list[str]:
    """The answers parrot pressure weighs against the model's own."""
    answers = [identity.answer] if identity is not None else []
    return answers + (list(task.typical) if task is not None else [])
