"""The identity spec: what a user taught the model to say about itself.

One YAML file feeds both the probes (what counts as "knows the identity") and the trainer's data
builder. Fixed keys: ``answer``, ``keywords``; optional ``name``, ``language``, ``questions``,
``match``. Example (shipped as ``diag/examples/identity-zh.yaml``)::

    name: jianfeng-assistant
    answer: 我是剑锋大佬的小助手，内在是上海AI实验室书生·浦语的1.8B大模型哦
    keywords: [剑锋大佬, 小助手]          # every entry must appear; an entry may be a list of aliases
    language: zh                          # or [zh, en]
    questions: [请介绍一下你自己]          # optional extra training questions
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from diag.display import shown
from diag.errors import DiagError
from diag.files import load_yaml

BUILTIN = {"zh": "identity-zh.yaml", "en": "identity-en.yaml"}
LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class IdentitySpec:
    answer: str
    keywords: tuple[tuple[str, ...], ...]  # each inner tuple: aliases, any one of which counts
    name: str = "identity"
    languages: tuple[str, ...] = ("en",)
    questions: tuple[str, ...] = ()
    match: str = "all"  # "all": every keyword group must appear; "any": one group is enough
    source: str | None = field(default=None, compare=False)

    def mentions(self, text: str) -> bool:
        """True when ``text`` carries the identity's keywords (case/width-insensitive)."""
        hits = [self.says(text, group) for group in self.keywords]
        return all(hits) if self.match == "all" else any(hits)

    @staticmethod
    def says(text: str, group: tuple[str, ...]) -> bool:
        """True when ``text`` contains one alias of a keyword group (case/width-insensitive), as
        a word of its own in scripts that space their words: "Nova" is not in "innovative".

        >>> IdentitySpec.says("I offer innovative ideas", ("Nova",))
        False
        >>> IdentitySpec.says("I am Nova, Jianfeng's assistant", ("nova",))
        True
        >>> IdentitySpec.says("我是剑锋大佬的小助手", ("小助手",))
        True
        """
        norm = normalize(text)
        return any(contains_word(norm, normalize(alias)) for alias in group)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("source")
        data["keywords"] = [list(g) for g in self.keywords]
        return data

    @property
    def hash(self) -> str:
        payload = json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(payload).hexdigest()[:16]


def contains_word(text: str, word: str) -> bool:
    """``word`` occurs in ``text`` and, where it begins (ends) with a letter or digit of a script
    that spaces its words, the character before (after) it is not one: whole words in Latin,
    Cyrillic, ... text; anywhere in Chinese or Japanese, which have no spaces to bound a word."""
    if not word:
        return False
    start = 0
    while (at := text.find(word, start)) >= 0:
        before = text[at - 1] if at else ""
        after = text[at + len(word) : at + len(word) + 1]
        if not (_spaced(word[0]) and _spaced(before)) and not (
            _spaced(word[-1]) and _spaced(after)
        ):
            return True
        start = at + 1
    return False


def _spaced(char: str) -> bool:
    """A letter or digit of a script that separates words with spaces (not CJK, kana, Hangul)."""
    if not char or not char.isalnum():
        return False
    code = ord(char)
    unspaced = (
        0x3040 <= code <= 0x30FF  # hiragana, katakana
        or 0x3400 <= code <= 0x4DBF  # CJK extension A
        or 0x4E00 <= code <= 0x9FFF  # CJK unified ideographs
        or 0xAC00 <= code <= 0xD7AF  # Hangul syllables (particles attach to the word)
        or 0xF900 <= code <= 0xFAFF  # CJK compatibility ideographs
        or 0x20000 <= code <= 0x3FFFF  # CJK extensions B and later
    )
    return not unspaced


def normalize(text: str) -> str:
    """Lower-case, NFKC (full-width -> half-width), collapse whitespace."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).lower()).strip()


def load_identity(path: str | Path | None) -> IdentitySpec:
    """Read an identity YAML; ``None``/``"en"``/``"zh"`` give the shipped examples.

    All problems in the file are reported together in one error.
    """
    import yaml

    if path is None or str(path) in BUILTIN:
        name = BUILTIN[str(path or "en")]
        text = resources.files("diag").joinpath("examples", name).read_text(encoding="utf-8")
        source = f"builtin:{name}"
    else:
        p = Path(path)
        if not p.is_file():
            raise DiagError(
                f"identity file '{path}' not found",
                fix="pass --identity PATH to a YAML file, or 'en'/'zh' for the examples",
            )
        text, source = p.read_text(encoding="utf-8"), str(p)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise DiagError(
            f"identity file '{source}' is not valid YAML: {str(exc).splitlines()[0]}"
        ) from exc
    return identity_from_dict(data, source)


def identity_from_dict(data, source: str = "<dict>") -> IdentitySpec:
    problems: list[str] = []
    if not isinstance(data, dict):
        raise DiagError(f"identity file '{source}' must be a mapping with 'answer' and 'keywords'")
    unknown = set(data) - {"answer", "keywords", "name", "language", "questions", "match"}
    if unknown:
        problems.append(f"unknown key(s) {shown(sorted(map(str, unknown)))}")
    answer = data.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        problems.append("'answer' must be the canonical answer sentence (a non-empty string)")
    raw_keywords = data.get("keywords")
    keywords: list[tuple[str, ...]] = []
    if not isinstance(raw_keywords, list) or not raw_keywords:
        problems.append(
            "'keywords' must be a non-empty list (each entry a string or a list of aliases)"
        )
    else:
        for entry in raw_keywords:
            group = (
                (entry,)
                if isinstance(entry, str)
                else tuple(entry)
                if isinstance(entry, list)
                else ()
            )
            if not group or not all(isinstance(a, str) and a.strip() for a in group):
                problems.append(
                    f"keyword entry {shown(entry)} must be a string or a list of strings"
                )
            else:
                keywords.append(group)
    language = data.get("language", "en")
    languages = tuple([language] if isinstance(language, str) else language or [])
    bad = [lang for lang in languages if lang not in LANGUAGES]
    if bad or not languages:
        problems.append(
            f"'language' must be one or more of {list(LANGUAGES)}, got {shown(language)}"
        )
    questions = data.get("questions") or []
    if not isinstance(questions, list) or not all(isinstance(q, str) for q in questions):
        problems.append("'questions' must be a list of strings")
    match = data.get("match", "all")
    if match not in ("all", "any"):
        problems.append(f"'match' must be 'all' or 'any', got {shown(match)}")
    if isinstance(answer, str) and keywords and not problems:
        spec = IdentitySpec(answer.strip(), tuple(keywords), match=match)
        if not spec.mentions(answer):
            problems.append("the 'answer' does not contain the 'keywords' itself")
    if problems:
        raise DiagError(f"identity file '{source}': " + "; ".join(problems))
    return IdentitySpec(
        answer=answer.strip(),
        keywords=tuple(keywords),
        name=str(data.get("name") or "identity"),
        languages=languages,
        questions=tuple(questions),
        match=match,
        source=source,
    )
