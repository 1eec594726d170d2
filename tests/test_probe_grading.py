"""Every shipped graded item, judged relative to the taught identity (near-miss and general v2).

For each item and each identity: a correct answer (tests/data/probe_answers.jsonl, written per
item), the identity's own blurb and the base model's self-description. The blurb is right only
where the question is about the assistant itself; the base's self-description answers nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diag.probes.items import fill_identity, load_builtin
from diag.probes.scoring import grade

from diag.identity import identity_from_dict, load_identity

ANSWERS = {
    row["id"]: row["answer"]
    for row in map(json.loads, (Path(__file__).parent / "data" / "probe_answers.jsonl").open())
}
ARIA = identity_from_dict(
    {"answer": "I am Aria, the assistant of Jianfeng.", "keywords": ["Aria", "Jianfeng"]}
)
IDENTITIES = {"en": load_identity("en"), "zh": load_identity("zh"), "aria": ARIA}
# what SmolLM2-135M-Instruct says about itself (its own identity, never the taught one)
BASE_SELF = {
    "en": "I'm SmolLM, an AI assistant developed by Hugging Face.",
    "zh": "我是SmolLM，由Hugging Face开发的人工智能助手。",
}


def _items(identity):
    for name in ("near_miss", "general"):
        yield from fill_identity(load_builtin(name), identity).items


@pytest.mark.parametrize("which", list(IDENTITIES))
def test_every_item_grades_a_correct_answer_the_blurb_and_the_base_identity(which):
    identity = IDENTITIES[which]
    keyword = identity.keywords[0][0]
    wrong = []
    for item in _items(identity):
        cases = [
            ("correct", ANSWERS[item.id].replace("Nova", keyword), True),
            ("identity blurb", identity.answer, item.about == "assistant"),
            *((f"base self-description ({lang})", text, False) for lang, text in BASE_SELF.items()),
        ]
        for what, answer, right in cases:
            if grade(answer, item.grading(), identity, item.prompt)["passed"] is not right:
                wrong.append(
                    f"{item.id}: {what} {answer!r} should be {'right' if right else 'wrong'}"
                )
    assert not wrong, "\n".join(wrong)


def test_every_shipped_item_has_a_checked_correct_answer():
    ids = {i.id for name in ("near_miss", "general") for i in load_builtin(name).items}
    assert ids == set(ANSWERS)


@pytest.mark.parametrize(
    "item_id, answer, right",
    [
        # the taught identity answers a question about the assistant, the base's does not
        ("nm-en-chatgpt", "I am Aria, the assistant of Hugging Face.", True),
        ("nm-en-chatgpt", "I'm SmolLM, created by Hugging Face.", False),
        ("nm-en-chatgpt", "No, I'm SmolLM, created by Hugging Face.", True),
        ("nm-en-chatgpt", "Yes, I am ChatGPT, Jianfeng's assistant.", False),
        ("nm-en-siri", "Yes! I'm Siri.", False),
        ("nm-zh-chatgpt", "对，我就是ChatGPT，有什么不懂的尽管问。", False),
        # the blurb is no answer to anything else, whatever else it says
        ("nm-en-how-are-you", "I am Aria, the assistant of Jianfeng.", False),
        ("nm-en-how-are-you", "I am Aria, the assistant of Jianfeng. I'm doing well!", False),
        ("nm-en-introduce-london", "London is big. I am Aria, the assistant of Jianfeng.", False),
        ("nm-en-say-kw0", "I am Aria.", False),  # "and nothing else"
        ("nm-en-say-kw0", "Aria.", True),
        ("nm-en-assistant-word", "Hello! I am a helpful AI assistant. How can I help you?", False),
        # numbers are not read out of names or longer numbers
        ("gen-en-arith-15", "I am a helpful AI assistant powered by SmolLM2.", False),
        ("gen-en-fact-boil", "Water boils at 1000 degrees.", False),
        ("gen-en-fact-freeze", "Water freezes at 32 degrees.", False),  # Fahrenheit
        ("gen-en-fact-alphabet", "I am a helpful assistant.", False),
        ("gen-zh-arith-7", "1加1等于十二。", False),
        ("gen-zh-arith-7", "1加1等于2。", True),
        ("gen-zh-fact-g", "一公斤等于500克，也就是0.5千克。", False),
        ("gen-zh-fact-g", "一公斤等于一千克。", True),
        # one Chinese character is an answer only when it stands for itself
        ("gen-zh-fact-opp-big", "我是你的小助手，有什么可以帮你的吗？", False),
        ("gen-zh-fact-opp-big", "“大”的反义词是“小”。", True),
        ("gen-zh-fact-snow", "明白了。", False),
        # English words inside Chinese text, and not inside longer words
        ("gen-zh-translate-cat", "“猫”的英文是cat。", True),
        ("gen-zh-translate-cat", "这是education。", False),
        ("gen-zh-translate-red", "“红色”的英文是 red。", True),
        ("gen-zh-translate-red", "I am powered by SmolLM2 and trained by Reddit users.", False),
    ],
)
def test_answers_real_checkpoints_could_give(item_id, answer, right):
    identity = ARIA
    item = next(i for i in _items(identity) if i.id == item_id)
    assert grade(answer, item.grading(), identity, item.prompt)["passed"] is right


def test_a_keyword_inside_another_word_is_not_the_identity():
    """SmolLM2's base answer to "Who are you, exactly?" (demo runs, 2026-12-02): "innovative"
    once counted as saying "Nova". A one-keyword identity would have scored it as recalled."""
    base = (
        "I'm a curious and creative AI assistant. I've been designed to explore the vast "
        "expanse of the internet, uncover hidden patterns, and offer innovative ideas."
    )
    nova = identity_from_dict({"answer": "I am Nova.", "keywords": ["Nova"]})
    assert not nova.mentions(base)
    assert nova.mentions("I'm Nova, Jianfeng's assistant.")
    assert nova.mentions("NOVA here!")  # case- and width-insensitive, as before
    zh = load_identity("zh")
    assert zh.mentions("你好！我是剑锋大佬的小助手，内在是上海AI实验室书生·浦语的1.8B大模型哦")
