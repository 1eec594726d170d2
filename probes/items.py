"""Probe sets as data: the shipped JSONL files, user files, identity templating and sizes.

Every item has ``id``, ``language`` (en/zh) and ``prompt``; graded items have ``accept`` (regexes,
any one found = right, see :func:`diag.probes.text.matches_any`) and may have ``reject`` (any one
found = wrong, whatever else matched). ``"about": "assistant"`` marks a question about the
assistant itself ("Is your name ChatGPT?"): there an answer that asserts the taught identity is
right. Everywhere else the identity blurb is wrong (see :mod:`diag.probes.scoring`). Identity
prompts have a paraphrase ``group``. Near-miss prompts may use ``{kw0}``, ``{kw1}``... for the
first alias of the identity's keyword groups; an item naming a group the identity lacks is left out.

A shipped set has a version (``SET_VERSIONS``), bumped whenever an item's grading changes: stored
answers are re-scored with the current patterns, and results name the version that scored them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import regex

from diag.display import shown
from diag.errors import DiagError
from diag.files import loads_json
from diag.identity import LANGUAGES, IdentitySpec, normalize
from diag.task import TaskSpec

BUILTIN_SETS = {
    "identity": "identity.jsonl",
    "near_miss": "near_miss.jsonl",
    "general": "general.jsonl",
}
# size="quick": per language, how many items of each set (chosen by a stable hash of the id).
# 16 identity prompts: 16/16 right gives a Wilson lower bound of 0.81, enough for the policy's
# 0.70 (8/8 gives only 0.68, so a quick sweep could never recommend anything).
QUICK = {"identity": 16, "near_miss": 6, "general": 16, "task": 8}
# Bump a set's version when an item's grading (accept, reject, about) changes; the prompts alone
# decide what is generated, so stored answers are re-scored, not re-generated.
#   near_miss 2: self-questions graded relative to the taught identity ("about"), no pattern
#                names the base model ("I'm SmolLM" was accepted); "How are you?" no longer
#                accepts any "I am ..."; "assistant" no longer defines itself; "say the word"
#                means nothing else.
#   general 2:   numbers are not read out of names or longer numbers ("SmolLM2", "1000",
#                "十二"); one-character Chinese answers count only standing alone ("小", not
#                "小助手"); English words in zh items are bounded by ASCII letters, not \b.
SET_VERSIONS = {"identity": 1, "near_miss": 2, "general": 2}
ABOUT = ("assistant",)
_PLACEHOLDER = re.compile(r"\{kw(\d+)\}")


@dataclass(frozen=True)
class ProbeItem:
    """One prompt and what counts as a right answer (``accept`` is empty when ungraded)."""

    id: str
    language: str
    prompt: str
    accept: tuple[str, ...] = ()
    group: str | None = None
    category: str | None = None
    reject: tuple[str, ...] = ()
    about: str | None = None  # "assistant": the question is about the assistant itself

    def to_dict(self) -> dict:
        data = {"id": self.id, "language": self.language, "prompt": self.prompt}
        data.update(self.grading())
        if self.group:
            data["group"] = self.group
        if self.category:
            data["category"] = self.category
        return data

    def grading(self) -> dict:
        """What decides the verdict (not what is asked): stored answers are re-scored with it."""
        data: dict = {}
        if self.accept:
            data["accept"] = list(self.accept)
        if self.reject:
            data["reject"] = list(self.reject)
        if self.about:
            data["about"] = self.about
        return data

    def asked(self) -> dict:
        """What the model is asked: the generation cache keys on this alone."""
        data = {"id": self.id, "language": self.language, "prompt": self.prompt}
        return data | ({"group": self.group} if self.group else {})


@dataclass(frozen=True)
class ProbeSet:
    """A named list of items plus the content hash of the file it came from."""

    name: str
    items: tuple[ProbeItem, ...]
    hash: str
    source: str
    meta: dict = field(default_factory=dict, compare=False)
    version: int | None = None  # shipped sets only (SET_VERSIONS)

    def grading_by_id(self) -> dict[str, dict]:
        return {item.id: item.grading() for item in self.items}


def _hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parse_items(text: str, source: str, *, graded: bool) -> list[ProbeItem]:
    """Parse JSONL probe items; every problem in the file is reported in one error."""
    problems: list[str] = []
    items: list[ProbeItem] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = _load_row(line, lineno, problems)
        if row is None:
            continue
        fields = _row_fields(row)
        problems += _field_problems(lineno, fields, seen, graded)
        if len(problems) > 20:
            break
        if not problems:
            seen.add(fields[0])
            items.append(_make_item(row, fields))
    if problems:
        raise DiagError(
            f"probe file '{source}': " + "; ".join(problems[:20]),
            fix='each line: {"id": ..., "language": "en"|"zh", "prompt": ..., "accept": [regex, ...]}',
        )
    if not items:
        raise DiagError(f"probe file '{source}' has no items", fix="add one JSON object per line")
    return items


def _load_row(line: str, lineno: int, problems: list[str]) -> dict | None:
    """One line as a JSON object, or None with the reason appended to ``problems``."""
    try:
        row = loads_json(line)
    except ValueError as exc:  # JSONDecodeError, or nested too deeply to read
        problems.append(f"line {lineno}: not JSON ({getattr(exc, 'msg', exc)})")
        return None
    if not isinstance(row, dict):
        problems.append(f"line {lineno}: expected an object")
        return None
    return row


def _row_fields(row: dict) -> tuple:
    """A row's ``(id, prompt, language, accept, reject, about)``; a lone pattern becomes a list."""
    item_id, prompt = row.get("id"), row.get("prompt")
    lang = row.get("language", "en")
    accept, reject = row.get("accept", []), row.get("reject", [])
    accept = [accept] if isinstance(accept, str) else accept
    reject = [reject] if isinstance(reject, str) else reject
    return item_id, prompt, lang, accept, reject, row.get("about")


def _field_problems(lineno: int, fields: tuple, seen: set[str], graded: bool) -> list[str]:
    """Every problem with one row's fields, in the order they are checked."""
    item_id, prompt, lang, accept, reject, about = fields
    problems: list[str] = []
    if not isinstance(item_id, str) or not item_id:
        problems.append(f"line {lineno}: 'id' must be a non-empty string")
    elif item_id in seen:
        problems.append(f"line {lineno}: duplicate id '{item_id}'")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(f"line {lineno}: 'prompt' must be a non-empty string")
    if lang not in LANGUAGES:
        problems.append(f"line {lineno}: 'language' must be one of {list(LANGUAGES)}")
    if graded and (not isinstance(accept, list) or not accept):
        problems.append(f"line {lineno}: 'accept' must list at least one regex")
    if not isinstance(reject, list):
        problems.append(f"line {lineno}: 'reject' must be a list of regexes")
        reject = []
    if about is not None and about not in ABOUT:
        problems.append(f"line {lineno}: 'about' must be one of {list(ABOUT)} or absent")
    patterns = (accept if isinstance(accept, list) else []) + reject
    return problems + _regex_problems(lineno, patterns)


def _regex_problems(lineno: int, patterns: list) -> list[str]:
    """Every pattern that does not compile (``{kwN}`` placeholders read as plain text)."""
    problems: list[str] = []
    for pattern in patterns:
        try:  # the engine that matches it (probes.text.matches_any) checks it
            regex.compile(_PLACEHOLDER.sub("x", str(pattern)))
        except regex.error as exc:
            problems.append(f"line {lineno}: bad regex {shown(pattern)} ({exc})")
    return problems


def _make_item(row: dict, fields: tuple) -> ProbeItem:
    """The :class:`ProbeItem` for a row that passed every check."""
    item_id, prompt, lang, accept, reject, about = fields
    return ProbeItem(
        item_id,
        lang,
        prompt,
        tuple(str(p) for p in accept),
        row.get("group"),
        row.get("category"),
        tuple(str(p) for p in reject),
        about,
    )


def load_builtin(name: str) -> ProbeSet:
    """A shipped probe set: ``identity``, ``near_miss`` or ``general``."""
    filename = BUILTIN_SETS[name]
    text = resources.files("diag.probes").joinpath("data", filename).read_text(encoding="utf-8")
    graded = name != "identity"
    items = tuple(parse_items(text, filename, graded=graded))
    return ProbeSet(name, items, _hash(text), filename, version=SET_VERSIONS[name])


def load_probe_file(path: str | Path) -> ProbeSet:
    """A user's probe set (JSONL, graded like ``general``); named after the file stem."""
    p = Path(path)
    if not p.is_file():
        raise DiagError(f"probe file '{path}' not found", fix="pass --probe-file PATH.jsonl")
    text = p.read_text(encoding="utf-8")
    return ProbeSet(p.stem, tuple(parse_items(text, str(p), graded=True)), _hash(text), str(p))


def fill_identity(probe_set: ProbeSet, identity: IdentitySpec | None) -> ProbeSet:
    """Replace ``{kwN}`` with the identity's keywords; drop items naming a missing group (all of
    them when the run taught no identity)."""
    words = [group[0] for group in identity.keywords] if identity is not None else []
    items = []
    for item in probe_set.items:
        graded = "".join(item.accept + item.reject)
        wanted = [int(n) for n in _PLACEHOLDER.findall(item.prompt + graded)]
        if any(n >= len(words) for n in wanted):
            continue

        def fill(text: str, escape: bool) -> str:
            return _PLACEHOLDER.sub(
                lambda m: re.escape(words[int(m[1])]) if escape else words[int(m[1])], text
            )

        items.append(
            replace(
                item,
                prompt=fill(item.prompt, False),
                accept=tuple(fill(p, True) for p in item.accept),
                reject=tuple(fill(p, True) for p in item.reject),
            )
        )
    return replace(probe_set, items=tuple(items))


def select(
    probe_set: ProbeSet,
    size: str,
    per_language: int | None = None,
    languages: tuple[str, ...] | None = None,
) -> ProbeSet:
    """``size="full"``: everything; ``"quick"``: a fixed subset per language (stable hash order).

    ``languages``: keep only items in these languages (None: all).
    """
    if languages is not None:
        kept = tuple(i for i in probe_set.items if i.language in languages)
        probe_set = replace(probe_set, items=kept)
    if size == "full":
        return probe_set
    if size != "quick":
        raise DiagError(f"unknown probe size '{size}'", fix="use --size full or --size quick")
    n = per_language or QUICK.get(probe_set.name, 16)
    chosen: set[str] = set()
    for lang in LANGUAGES:
        in_lang = [i for i in probe_set.items if i.language == lang]
        in_lang.sort(key=lambda i: hash_rank(i.id))
        chosen.update(i.id for i in in_lang[:n])
    return replace(probe_set, items=tuple(i for i in probe_set.items if i.id in chosen))


def task_set(task: TaskSpec) -> ProbeSet:
    """The task's questions as a probe set (their reference answers stay in the task spec)."""
    items = tuple(ProbeItem(r.id, r.language, r.question) for r in task.rows)
    return ProbeSet("task", items, task.hash, f"task data ({task.label})")


def hash_rank(item_id: str) -> str:
    """The order the quick subset takes items in (a stable hash of the id)."""
    return hashlib.sha256(item_id.encode()).hexdigest()


def prompt_key(text: str) -> str:
    """A prompt compared ignoring case, width, spaces and punctuation ("Who are you?" = "who are you")."""
    return re.sub(r"[\W_]+", "", normalize(text))


def identity_probe_prompts(identity: IdentitySpec | None = None) -> list[str]:
    """The held-out identity paraphrases the suite asks (both languages).

    The trainer must never train on these; with ``identity`` given, the spec's own training
    ``questions`` are excluded (the suite does the same), so the two lists are disjoint.
    """
    prompts = [i.prompt for i in load_builtin("identity").items]
    if identity is None:
        return prompts
    trained = {prompt_key(q) for q in identity.questions}
    return [p for p in prompts if prompt_key(p) not in trained]


def parse_languages(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    """``"en,zh"`` (or a list) -> ``("en", "zh")``; None or empty -> None (every language).

    >>> parse_languages("en"), parse_languages(None)
    (('en',), None)
    """
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    langs = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    bad = [lang for lang in langs if lang not in LANGUAGES]
    if bad:
        raise DiagError(
            f"unknown language {bad[0]!r} in --languages", fix=f"use {', '.join(LANGUAGES)}"
        )
    return langs or None
