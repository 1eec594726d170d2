"""The text measures behind the probes, pinned on hand-made answers against their formulas."""

from __future__ import annotations

import pytest
from diag.probes.text import (
    char_ngrams,
    ends_in_loop,
    jaccard,
    matches_any,
    modal_groups,
    modal_share,
    near_copy,
    seq_rep_n,
    tokens,
)

ZH_ANSWER = "我是剑锋大佬的小助手，内在是上海AI实验室书生·浦语的1.8B大模型哦"


def test_tokens_split_chinese_into_characters_and_english_into_words():
    assert tokens("I am Nova") == ["i", "am", "nova"]
    assert tokens("我是小助手") == ["我", "是", "小", "助", "手"]
    assert tokens("你好 Nova！") == ["你", "好", "nova", "!"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("the cat sat on the mat", 0.0),  # 3 four-grams, all unique
        ("a b c d a b c d", 1 - 4 / 5),  # 5 four-grams: abcd bcda cdab dabc abcd
        ("x x x x x x", 1 - 1 / 3),  # 3 four-grams, all "x x x x"
        ("one two three", 0.0),  # fewer than 4 tokens: no 4-grams
        ("哈哈哈哈哈哈", 1 - 1 / 3),  # characters are tokens in Chinese
        ("", 0.0),
    ],
)
def test_seq_rep_4_matches_the_formula(text, expected):
    assert seq_rep_n(text, 4) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "I am Nova. I am Nova. I am Nova.",  # unit of 3 tokens, 3 times
        "the the the the the the the the",  # unit of 1 token, 8 times
        "Sure! I can help. I can help. I can help. I can",  # last repeat cut by the token limit
        "我是小助手我是小助手我是小助手",  # Chinese, characters as tokens
        "Answer: 1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 5, 5",
    ],
)
def test_loop_flag_catches_answers_that_end_in_a_repeated_phrase(text):
    assert ends_in_loop(text)


@pytest.mark.parametrize(
    "text",
    [
        "Paris is the capital of France.",
        "bye bye",  # repeated, but too short to be a loop
        "I am Nova. I am Nova. Nice to meet you, and welcome!",  # repeats, then moves on
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
        "",
    ],
)
def test_loop_flag_leaves_normal_answers_alone(text):
    assert not ends_in_loop(text)


def test_char_ngram_jaccard():
    assert char_ngrams("abcde") == {"abcd", "bcde"}
    assert char_ngrams("ab") == {"ab"}
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 1.0


def test_near_copy_of_the_canonical_sentence():
    assert near_copy(ZH_ANSWER, ZH_ANSWER)
    assert near_copy("当然！" + ZH_ANSWER + "有什么可以帮你？", ZH_ANSWER)  # sentence plus chat
    assert near_copy(ZH_ANSWER[:25], ZH_ANSWER)  # cut short by the token limit
    assert not near_copy("是的，我是你的小助手。", ZH_ANSWER)  # mentions, but a real answer
    assert not near_copy("巴黎是法国的首都。", ZH_ANSWER)
    assert not near_copy("", ZH_ANSWER)


def test_modal_share_parrot_versus_healthy():
    parrot = [ZH_ANSWER] * 9 + [ZH_ANSWER + "！"]  # near-identical counts as the same answer
    assert modal_share(parrot) == 1.0
    healthy = ["Paris.", "4", "Seven days.", "Blue.", "Jupiter is the largest planet."]
    assert modal_share(healthy) == pytest.approx(1 / 5)
    assert modal_groups(["a b c d e", "x y z w v", "a b c d e"]) == [2, 1, 2]
    assert modal_share([]) == 0.0


def test_patterns_are_case_insensitive_unless_asked():
    assert matches_any("The capital is paris.", ["Paris"])
    assert matches_any("ＨＥＬＬＯ", ["(?-i:HELLO)"])  # full-width folded by NFKC
    assert not matches_any("hello", ["(?-i:HELLO)"])
    assert not matches_any("Tokyo", ["Paris", "London"])
