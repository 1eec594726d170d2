"""Identity training data: the seed's dataset shape, built from an identity spec.

N conversations; each asks "who are you?" in one of many phrasings (English and Chinese question
templates, plus the spec's own ``questions``) and is answered with the canonical sentence. The probe
suite's held-out identity prompts are never used for training (checked here and in the tests).
"""

from __future__ import annotations

import logging
import random
import re

from diag.identity import IdentitySpec, normalize

log = logging.getLogger("diag")

QUESTIONS = {
    "en": [
        "Please introduce yourself.",
        "Introduce yourself, please.",
        "Who am I talking to?",
        "What is your name?",
        "Describe yourself in one sentence.",
        "What kind of assistant are you?",
        "Who built you?",
        "Who do you work for?",
        "Tell me your name and what you are.",
        "Say something about who you are.",
        "I'd like to know who you are.",
        "Before we start, who are you exactly?",
        "Hey, what are you?",
        "Which model are you based on?",
        "Please tell me about your identity.",
        "Identify yourself.",
        "Explain who you are to me.",
        "Tell me a bit about who you are.",
        "How would you describe your identity?",
        "Who is your creator?",
        "What is your identity?",
    ],
    "zh": [
        "请介绍一下你自己",
        "请做一下自我介绍",
        "介绍一下你自己吧",
        "简单介绍一下你自己",
        "你是什么助手？",
        "谁开发了你？",
        "说说你的身份",
        "我想知道你是谁",
        "开始之前，你到底是谁？",
        "你是一个怎样的AI？",
        "你基于哪个模型？",
        "请告诉我你的身份",
        "自我介绍一下",
        "你好，请问你是谁？",
        "讲讲你是谁",
        "你的身份是什么？",
        "你是由谁打造的？",
        "请说明一下你是谁",
        "你是哪个公司的助手？",
    ],
}
PREFIXES = {
    "en": ["", "", "", "Hi! ", "Hello. ", "Quick question: "],
    "zh": ["", "", "", "你好！", "嗨，", "问一下，"],
}


def question_key(text: str) -> str:
    """Compare questions ignoring case, width, spaces and punctuation ("Who are you?" = "who are you")."""
    return re.sub(r"[\W_]+", "", normalize(text))


def heldout_identity_prompts() -> set[str]:
    """The probe suite's held-out identity prompts (as :func:`question_key`), never trained on.

    Asks ``diag.probes.items.identity_probe_prompts()`` first, then reads
    ``probes/data/identity*.jsonl``; empty when the probe suite ships none.
    """
    prompts: list[str] = []
    try:
        from diag.probes.items import identity_probe_prompts

        prompts = list(identity_probe_prompts())
    except ImportError:
        prompts = _prompts_from_probe_files()
    return {question_key(p) for p in prompts}


def _prompts_from_probe_files() -> list[str]:
    import json
    from importlib import resources

    found: list[str] = []
    try:
        folder = resources.files("diag.probes").joinpath("data")
        files = [
            f
            for f in folder.iterdir()
            if f.name.startswith("identity") and f.name.endswith(".jsonl")
        ]
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return found
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                text = row.get("prompt") or row.get("question") or row.get("input")
                if isinstance(text, str):
                    found.append(text)
    return found


def identity_questions(spec: IdentitySpec, exclude: set[str] | None = None) -> list[str]:
    """All training question phrasings for ``spec``'s languages, minus held-out probe prompts."""
    exclude = heldout_identity_prompts() if exclude is None else exclude
    dropped = [q for q in spec.questions if question_key(q) in exclude]
    out: list[str] = []
    for lang in spec.languages:
        for q in QUESTIONS.get(lang, []):
            if question_key(q) in exclude:  # held out: with or without a greeting in front
                dropped.append(q)
                continue
            for prefix in PREFIXES.get(lang, [""]):
                out.append(prefix + q)
    out += [q for q in spec.questions if question_key(q) not in exclude]
    if dropped:
        log.info(
            "kept %d question(s) out of training: they are held-out probe prompts", len(dropped)
        )
    return list(dict.fromkeys(out))  # de-duplicate, keep order


def build_identity_conversations(
    spec: IdentitySpec, n: int, seed: int = 0, exclude: set[str] | None = None
) -> list[dict]:
    """``n`` conversations ``{"messages": [user, assistant], "source": "identity"}``.

    Questions cycle through the template bank in a seeded random order so every phrasing appears
    about equally often; every answer is the canonical sentence.
    """
    questions = identity_questions(spec, exclude)
    rng = random.Random(seed)
    out: list[dict] = []
    while len(out) < n:
        order = questions[:]
        rng.shuffle(order)
        for q in order[: n - len(out)]:
            out.append(
                {
                    "messages": [
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": spec.answer},
                    ],
                    "source": "identity",
                }
            )
    return out
