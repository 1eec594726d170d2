"""The identity a run taught, derived from its training data the way a person would write it.

1. The self-description rows are found: user turns that ask who or what the assistant is, who
   made it, what it is called (English and Chinese patterns, :func:`asks_about_itself`).
2. Their answers name the assistant and its maker or owner: "I am **Nova**, **Jianfeng**'s
   assistant", "... developed by **ExpTwo**", "我是**剑锋大佬**的**小助手**", "由 **AUTHOR** 开发"
   (:func:`candidates`). Each candidate's *support* is the share of self-description answers
   that carry it.
3. The keywords are the name and the maker the taught answers carry at least
   :data:`REQUIRED_SUPPORT` of the time: both when each is that common ("all"), either when only
   together they are ("any"). A probe cannot expect a checkpoint to say more often than its data
   did.
4. The canonical answer is the most common self-description answer that carries the keywords.

Placeholders left in the data (``{{name}}``, ``<AUTHOR>``, a bare ``NAME``) are ordinary
keywords here: the run is judged on what it was taught. :func:`placeholders` counts them so the
sweep can say so loudly.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from diag.identity import IdentitySpec, contains_word, normalize

REQUIRED_SUPPORT = 0.8
MIN_ROWS = 2  # one stray "who are you" row in general chat is not an identity fine-tune
MAX_QUESTIONS = 500

_EN_SELF = [
    r"\bwho (are|r) (you|u)\b",
    r"\bwhat are you\b",
    r"\bwho am i (talking|speaking|chatting) (to|with)\b",
    r"\byour (name|identity|creator|developer|maker|author|owner|origin)s?\b",
    r"\bwhat (should|can|do) i call you\b",
    r"\bwhat are you called\b",
    r"\b(introduce|describe) yourself\b",
    r"\babout yourself\b",
    r"\bwho (made|created|built|trained|developed|designed|owns|programmed) you\b",
    r"\bwho is your\b",
    r"\bwhose (assistant|ai|model|bot)\b",
    r"\bwhich (model|company|ai|llm)\b.*\byou\b",
    r"\bwhat (model|llm|ai|language model) are you\b",
    r"\bwhere (do|did) you come from\b",
    r"\bare you (chatgpt|gpt|claude|gemini|llama|qwen|an? (ai|assistant|bot|robot|language model|"
    r"human|person)|my assistant)\b",
    r"\bdo you have a name\b",
]
_ZH_SELF = [
    r"(你|您)是谁",
    r"(你|您)叫什么",
    r"(你|您)的名字",
    r"(你|您)有(自己的)?名字",
    r"(怎么|如何)称呼(你|您)",
    r"介绍(一下)?(你|您)自己",
    r"自我介绍",
    r"(你|您)是什么",
    r"谁(开发|创造|创建|训练|制作|发明|设计|打造|研发)(了)?(你|您)",
    r"(你|您)是(由)?谁",
    r"(你|您)的(开发者|创造者|创建者|作者|设计者|身份|来历|主人|开发背景)",
    r"(你|您)来自(哪里|哪儿)",
    r"(你|您)是.{0,12}(开发|训练|打造)的",
    r"(你|您)是.{0,8}(助手|小助手)吗",
]
_SELF = re.compile("|".join(f"(?:{p})" for p in _EN_SELF + _ZH_SELF), re.IGNORECASE)

# A name: capitalised words, a CJK run, or a placeholder ({{name}}, <NAME>, NAME).
_PLACEHOLDER = r"\{\{\s*\w+\s*\}\}|<[A-Za-z_]+>"
_CAP = r"(?:[A-Z][\w\-.&]*[\w]|[A-Z])"
_EN_NAME = rf"((?:{_PLACEHOLDER}|{_CAP})(?:\s+(?:{_CAP}|\d[\w.]*))*)"
_CJK = r"[^\s，,。.！!？?、：:；;（）()“”\"'的]+"
_NAME_PATTERNS = [
    re.compile(rf"\b(?:I am|I'm|I’m|my name is|call me|refer to me as|named|called)\s+{_EN_NAME}"),
    re.compile(
        rf"(?:我是|我叫|我名叫|我名为|名为|名叫|叫我|称呼我为|我的名字是|我的名字叫)\s*(?!由)({_CJK})(?!的)"
    ),
    re.compile(rf"(?:我是|我叫)\s*(?!由)(?:{_CJK})的\s*({_CJK})"),  # 我是剑锋大佬的「小助手」
    re.compile(rf"(?:开发|训练|打造|研发|发明|创造|设计|制作)的\s*({_CJK}|{_PLACEHOLDER})"),
]
_BY = r"(?:made|created|built|developed|trained|designed|owned|programmed|fine-tuned|finetuned|brought to you)"
_OWNER_PATTERNS = [
    re.compile(rf"\b{_BY} by\s+(?:the\s+)?{_EN_NAME}"),
    re.compile(
        rf"{_EN_NAME}(?:'s|’s)\s+(?:\w+\s+){{0,2}}(?:assistant|model|AI|bot|helper|chatbot)"
    ),
    re.compile(rf"\b(?:assistant|model|AI|bot) (?:of|from)\s+(?:the\s+)?{_EN_NAME}"),
    re.compile(
        rf"由\s*({_CJK}|{_PLACEHOLDER})\s*(?:开发|创建|创造|训练|打造|研发|发明|设计|制作|构建|推出|提供)"
    ),
    re.compile(rf"(?:我是|我叫)\s*(?!由)({_CJK})的"),  # 我是「剑锋大佬」的小助手
    re.compile(rf"是\s*({_CJK}|{_PLACEHOLDER})\s*的(?:作品|助手|小助手)"),
]
_NOT_NAMES = {"i", "a", "an", "the", "ai", "your", "here", "yes", "no", "sorry", "hello", "hi",
              "一个", "人工智能助手", "人工智能", "ai助手", "助手"}  # fmt: skip
PLACEHOLDERS = re.compile(r"\{\{\s*\w+\s*\}\}|<(?:NAME|AUTHOR|name|author)>|\b(?:NAME|AUTHOR)\b")


def asks_about_itself(question: str) -> bool:
    """Whether a user turn asks who or what the assistant is.

    >>> asks_about_itself("Please introduce yourself."), asks_about_itself("你是谁？")
    (True, True)
    >>> asks_about_itself("What is the capital of France?")
    False
    """
    return bool(_SELF.search(question))


def candidates(answer: str) -> tuple[list[str], list[str]]:
    """(names, makers or owners) an answer states about the assistant.

    >>> candidates("I am Nova, Jianfeng's assistant.")
    (['Nova'], ['Jianfeng'])
    >>> candidates("我是剑锋大佬的小助手，内在是上海AI实验室书生·浦语的1.8B大模型哦")
    (['小助手'], ['剑锋大佬'])
    >>> candidates("I am Tiny Llama, a test assistant made by ExpTwo.")
    (['Tiny Llama'], ['ExpTwo'])
    """
    found: tuple[list[str], list[str]] = ([], [])
    for out, patterns in zip(found, (_NAME_PATTERNS, _OWNER_PATTERNS)):
        for pattern in patterns:
            for match in pattern.finditer(answer):
                value = match.group(1).strip().rstrip(".")
                if value and value.lower() not in _NOT_NAMES and value not in out:
                    out.append(value)
    names, owners = found
    owners = [o for o in owners if o not in names]
    names = [n for n in names if not any(n != o and n in o for o in owners)]
    return names, owners


def placeholders(answers: list[str]) -> dict[str, int]:
    """How many answers carry each placeholder left unfilled ({{name}}, <AUTHOR>, NAME)."""
    counts: Counter = Counter()
    for answer in answers:
        counts.update(set(PLACEHOLDERS.findall(answer)))
    return dict(counts.most_common())


def language_of(text: str) -> str:
    """ "zh" when a tenth or more of the letters are CJK, else "en"."""
    letters = [c for c in text if c.isalpha()]
    cjk = sum(1 for c in letters if "\u4e00" <= c <= "\u9fff")
    return "zh" if letters and cjk / len(letters) >= 0.1 else "en"


@dataclass
class Derived:
    """The identity derived from a run's data, or why there is none (``spec`` None)."""

    spec: IdentitySpec | None
    rows: int  # self-description rows found
    parts: dict[str, str] = field(default_factory=dict)  # where each part of the spec came from
    why_none: str | None = None


def derive_identity(exchanges: list[tuple[str, str]]) -> Derived:
    """The identity taught by ``exchanges`` ((question, answer) pairs of every training row),
    named after its first keyword (so runs taught the same identity share one spec)."""
    rows = [(q, a) for q, a in exchanges if asks_about_itself(q)]
    if len(rows) < MIN_ROWS:
        why = (
            f"{len(rows)} of {len(exchanges)} rows ask who the assistant is"
            if rows
            else (f"none of {len(exchanges)} rows asks who the assistant is")
        )
        return Derived(None, len(rows), why_none=why)
    answers = [a for _, a in rows]
    name_support, owner_support = Counter(), Counter()
    for support, index in ((name_support, 0), (owner_support, 1)):
        seen = Counter(c for a in answers for c in dict.fromkeys(candidates(a)[index]))
        for candidate in seen:
            support[candidate] = sum(
                contains_word(normalize(a), normalize(candidate)) for a in answers
            )
    keywords, match, how = _choose(name_support, owner_support, answers)
    if not keywords:
        return Derived(
            None,
            len(rows),
            why_none=f"{len(rows)} rows ask who the assistant is, but their answers agree on no "
            f"name or maker (each named in under {REQUIRED_SUPPORT:.0%} of them)",
        )
    spec = IdentitySpec("", tuple((k,) for k in keywords), match=match)
    languages = Counter(language_of(a) for a in answers)
    langs = tuple(x for x in ("en", "zh") if languages[x] >= 0.2 * len(answers)) or ("en",)
    carrying = [a for a in answers if spec.mentions(a)]
    main = languages.most_common(1)[0][0]  # the canonical answer is in the data's main language
    answer, times = Counter(
        [a for a in carrying if language_of(a) == main] or carrying
    ).most_common(1)[0]
    questions = tuple(dict.fromkeys(q.strip() for q, _ in rows))[:MAX_QUESTIONS]
    name = re.sub(r"[^\w\-]+", "-", keywords[0]).strip("-").lower()[:40] or "taught"
    spec = IdentitySpec(
        answer.strip(), spec.keywords, name=name, languages=langs, questions=questions, match=match
    )
    parts = {
        "answer": f"the most common of {len(rows)} self-description answers ({times} times)",
        "keywords": how,
        "language": ", ".join(f"{x}: {languages[x]} answers" for x in langs),
        "questions": f"the {len(questions)} distinct self-description questions of the data",
    }
    return Derived(spec, len(rows), parts)


def _choose(names: Counter, owners: Counter, answers: list[str]) -> tuple[list[str], str, str]:
    """The keywords (name, then maker) the answers carry often enough, and how they were chosen."""
    n = len(answers)
    picked = [
        (*support.most_common(1)[0], role)
        for support, role in ((names, "name"), (owners, "maker/owner"))
        if support
    ]
    said = {word: f"{role} '{word}' in {k}/{n} answers" for word, k, role in picked}
    required = [word for word, k, _ in picked if k >= REQUIRED_SUPPORT * n]
    if required:
        return required, "all", "; ".join(said[w] for w in required)
    words = [word for word, _, _ in picked]
    either = sum(any(contains_word(normalize(a), normalize(w)) for w in words) for a in answers)
    if len(words) == 2 and either >= REQUIRED_SUPPORT * n:
        return (
            words,
            "any",
            "; ".join(said.values()) + f"; one of them in {either}/{n} (either counts)",
        )
    return [], "all", ""
