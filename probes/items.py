"""Probe sets as data: the shipped JSONL files, user files, identity templating and sizes.

Every item has ``id``, ``language`` (en/zh) and ``prompt``; graded items have ``accept`` (regexes,
any one found = right, see :func:`diag.probes.text.matches_any`). Identity prompts have a
paraphrase ``group``. Near-miss prompts may use ``{kw0}``, ``{kw1}``... for the first alias of the
identity's keyword groups; an item naming a group the identity lacks is left out.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from diag.errors import DiagError
from diag.identity import LANGUAGES, IdentitySpec, normalize

BUILTIN_SETS = {
    "identity": "identity.jsonl",
    "near_miss": "near_miss.jsonl",
    "general": "general.jsonl",
}
# size="quick": per language, how many items of each set (chosen by a stable hash of the id).
# 16 identity prompts: 16/16 right gives a Wilson lower bound of 0.81, enough for the policy's
# 0.70 (8/8 gives only 0.68, so a quick sweep could never recommend anything).
QUICK = {"identity": 16, "near_miss": 6, "general": 16}
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

    def to_dict(self) -> dict:
        data = {"id": self.id, "language": self.language, "prompt": self.prompt}
        if self.accept:
            data["accept"] = list(self.accept)
        if self.group:
            data["group"] = self.group
        if self.category:
            data["category"] = self.category
        return data


@dataclass(frozen=True)
class ProbeSet:
    """A named list of items plus the content hash of the file it came from."""

    name: str
    items: tuple[ProbeItem, ...]
    hash: str
    source: str
    meta: dict = field(default_factory=dict, compare=False)


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
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {lineno}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {lineno}: expected an object")
            continue
        item_id, prompt = row.get("id"), row.get("prompt")
        lang = row.get("language", "en")
        accept = row.get("accept", [])
        if isinstance(accept, str):
            accept = [accept]
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
        for pattern in accept if isinstance(accept, list) else []:
            try:
                re.compile(_PLACEHOLDER.sub("x", str(pattern)))
            except re.error as exc:
                problems.append(f"line {lineno}: bad regex {pattern!r} ({exc})")
        if len(problems) > 20:
            break
        if not problems:
            seen.add(item_id)
            items.append(
                ProbeItem(
                    item_id,
                    lang,
                    prompt,
                    tuple(str(p) for p in accept),
                    row.get("group"),
                    row.get("category"),
                )
            )
    if problems:
        raise DiagError(
            f"probe file '{source}': " + "; ".join(problems[:20]),
            fix='each line: {"id": ..., "language": "en"|"zh", "prompt": ..., "accept": [regex, ...]}',
        )
    if not items:
        raise DiagError(f"probe file '{source}' has no items", fix="add one JSON object per line")
    return items


def load_builtin(name: str) -> ProbeSet:
    """A shipped probe set: ``identity``, ``near_miss`` or ``general``."""
    filename = BUILTIN_SETS[name]
    text = resources.files("diag.probes").joinpath("data", filename).read_text(encoding="utf-8")
    graded = name != "identity"
    return ProbeSet(name, tuple(parse_items(text, filename, graded=graded)), _hash(text), filename)


def load_probe_file(path: str | Path) -> ProbeSet:
    """A user's probe set (JSONL, graded like ``general``); named after the file stem."""
    p = Path(path)
    if not p.is_file():
        raise DiagError(f"probe file '{path}' not found", fix="pass --probe-file PATH.jsonl")
    text = p.read_text(encoding="utf-8")
    return ProbeSet(p.stem, tuple(parse_items(text, str(p), graded=True)), _hash(text), str(p))


def fill_identity(probe_set: ProbeSet, identity: IdentitySpec) -> ProbeSet:
    """Replace ``{kwN}`` with the identity's keywords; drop items naming a missing group."""
    words = [group[0] for group in identity.keywords]
    items = []
    for item in probe_set.items:
        wanted = [int(n) for n in _PLACEHOLDER.findall(item.prompt + "".join(item.accept))]
        if any(n >= len(words) for n in wanted):
            continue

        def fill(text: str, escape: bool) -> str:
            return _PLACEHOLDER.sub(
                lambda m: re.escape(words[int(m[1])]) if escape else words[int(m[1])], text
            )

        items.append(
            ProbeItem(
                item.id,
                item.language,
                fill(item.prompt, False),
                tuple(fill(p, True) for p in item.accept),
                item.group,
                item.category,
            )
        )
    return ProbeSet(probe_set.name, tuple(items), probe_set.hash, probe_set.source)


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
        probe_set = ProbeSet(probe_set.name, kept, probe_set.hash, probe_set.source)
    if size == "full":
        return probe_set
    if size != "quick":
        raise DiagError(f"unknown probe size '{size}'", fix="use --size full or --size quick")
    n = per_language or QUICK.get(probe_set.name, 16)
    chosen: set[str] = set()
    for lang in LANGUAGES:
        in_lang = [i for i in probe_set.items if i.language == lang]
        in_lang.sort(key=lambda i: hashlib.sha256(i.id.encode()).hexdigest())
        chosen.update(i.id for i in in_lang[:n])
    items = tuple(i for i in probe_set.items if i.id in chosen)
    return ProbeSet(probe_set.name, items, probe_set.hash, probe_set.source)


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
