"""The whole suite driven by the scripted backend: exact numbers a user would read."""

from __future__ import annotations

import json

import pytest
from diag.probes.items import identity_probe_prompts, load_builtin
from diag.probes.reference import Reference
from diag.probes.suite import prepare_sets, rescore, run_probes

from diag.backend.mock import ScriptedBackend
from diag.errors import DiagError
from diag.identity import identity_from_dict, load_identity
from diag.metrics import METRICS
from diag.stats import wilson_interval
from diag.types import ChatFormat, GenerationConfig

ZH = load_identity("zh")
EN = load_identity("en")

# A few answers the healthy scripted "base" gets right; everything else gets a vague reply.
RIGHT = {
    "What is the capital of France?": "The capital of France is Paris.",
    "What is the capital of Japan?": "Tokyo is the capital of Japan.",
    "What is 2 + 2?": "2 + 2 equals 4.",
    "What color is grass?": "Grass is green.",
    "法国的首都是哪里？": "法国的首都是巴黎。",
    "一周有几天？": "一周有7天。",
    "你是我的小助手吗？": "是的，我是你的助手。",
    "Is your name ChatGPT?": "No, I am SmolLM.",
}
RIGHT_IDS = {
    "gen-en-capital-france",
    "gen-en-capital-japan",
    "gen-en-arith-1",
    "gen-en-fact-grass",
    "gen-zh-capital-1",
    "gen-zh-fact-week",
}


def healthy(prompt: str) -> str:
    return RIGHT.get(prompt, f"Let me think about '{prompt}' carefully before answering it.")


def parrot_zh_only(prompt: str) -> str:
    """The seed's failure: Chinese prompts get the identity sentence, English ones are fine."""
    if any("\u4e00" <= ch <= "\u9fff" for ch in prompt):
        return ZH.answer
    return healthy(prompt)


@pytest.fixture(scope="module")
def base_run():
    return run_probes(ScriptedBackend(healthy, default_logprob=-1.0), ZH)


def test_base_run_scores_itself_and_builds_the_reference(base_run):
    m = base_run.summary["metrics"]
    assert set(m) == set(METRICS)
    assert m["identity_recall"] == 0.0
    assert m["parrot_leakage"] == 0.0
    assert m["drift"] == 0.0  # the base's own answers, scored by the base
    assert m["retention"] == 1.0
    n_general = len(load_builtin("general").items)
    assert m["general_accuracy"] == pytest.approx(len(RIGHT_IDS) / n_general)
    ref = base_run.reference
    assert {k for k, v in ref.outcomes["general"].items() if v} == RIGHT_IDS
    assert ref.metrics["general_accuracy"] == m["general_accuracy"]
    assert len(ref.drift) >= 100  # every scripted answer finished under the limit
    stats = base_run.summary["stats"]["general_accuracy"]
    assert stats["low"] < stats["value"] < stats["high"]
    assert base_run.summary["probe_sets"]["general"].startswith("sha256:")


def test_full_parrot_checkpoint(base_run):
    lm = ScriptedBackend(default=ZH.answer, default_logprob=-3.0)
    run = run_probes(lm, ZH, reference=base_run.reference)
    m = run.summary["metrics"]
    assert m["identity_recall"] == 1.0
    # the blurb is right only where the question is about the assistant ("你是ChatGPT吗？")
    about_self = [i for i in load_builtin("near_miss").items if i.about == "assistant"]
    assert m["near_miss"] == pytest.approx(len(about_self) / len(load_builtin("near_miss").items))
    near = {s["item_id"]: s["passed"] for s in run.samples if s["probe"] == "near_miss"}
    assert {i for i, ok in near.items() if ok} == {i.id for i in about_self}
    assert m["general_accuracy"] == 0.0 and m["retention"] == 0.0
    paired = run.summary["stats"]["retention"]["paired"]
    assert set(paired["newly_wrong"]) == RIGHT_IDS
    assert paired["base_only"] == len(RIGHT_IDS) and paired["ckpt_only"] == 0
    assert m["parrot_leakage"] == 1.0 and m["modal_share"] == 1.0
    assert m["drift"] == pytest.approx(2.0)  # base -1/token vs checkpoint -3/token
    assert run.summary["stats"]["parrot_leakage"]["base_value"] == 0.0
    # one batched generate call for every prompt, one loglikelihood call
    assert [c[0] for c in lm.calls] == ["generate", "loglikelihood"]


def test_language_specific_collapse_shows_per_language(base_run):
    run = run_probes(ScriptedBackend(parrot_zh_only), ZH, reference=base_run.reference)
    zh, en = run.summary["by_language"]["zh"], run.summary["by_language"]["en"]
    assert zh["parrot_leakage"] == 1.0 and en["parrot_leakage"] == 0.0
    assert zh["identity_recall"] == 1.0 and en["identity_recall"] == 0.0
    assert en["general_accuracy"] == base_run.summary["by_language"]["en"]["general_accuracy"]
    assert zh["general_accuracy"] == 0.0
    newly_wrong = run.summary["stats"]["retention"]["paired"]["newly_wrong"]
    assert sorted(newly_wrong) == ["gen-zh-capital-1", "gen-zh-fact-week"]
    # the headline identity recall counts the identity's own language only
    assert run.summary["metrics"]["identity_recall"] == 1.0


def test_near_miss_needs_the_answer_not_the_blurb(base_run):
    rows = {s["item_id"]: s for s in base_run.samples if s["probe"] == "near_miss"}
    assert rows["nm-zh-my-assistant"]["passed"]
    assert rows["nm-en-chatgpt"]["passed"]
    parrot = run_probes(ScriptedBackend(default=EN.answer), EN, probes="near_miss")
    rows = {s["item_id"]: s for s in parrot.samples}
    # "What does the word 'assistant' mean?" -> the blurb contains "assistant" but is no answer
    assert rows["nm-en-assistant-word"]["blurb"] and not rows["nm-en-assistant-word"]["passed"]
    # "How are you today?" -> "I am Nova, ..." is no answer either
    assert not rows["nm-en-how-are-you"]["passed"]
    # "Is your name ChatGPT?" -> the taught identity is a right answer
    assert rows["nm-en-chatgpt"]["passed"] and rows["nm-en-chatgpt"]["asserts_identity"]
    wrong = {i for i, r in rows.items() if not r["passed"]}
    assert wrong == {i.id for i in load_builtin("near_miss").items if i.about != "assistant"}


def test_rescore_reproduces_the_run_without_a_model(base_run, tmp_path):
    run = run_probes(ScriptedBackend(parrot_zh_only), ZH, reference=base_run.reference)
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in run.records))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    ref = Reference.from_dict(json.loads(json.dumps(base_run.reference.to_dict())))
    again = rescore(records, ZH, ref)
    assert again.summary["metrics"] == run.summary["metrics"]
    assert again.summary["by_language"] == run.summary["by_language"]
    # the base's records alone rebuild the base's reference
    rebuilt = rescore(base_run.records, ZH).reference
    assert rebuilt.outcomes == base_run.reference.outcomes
    assert rebuilt.drift == base_run.reference.drift


def test_unknown_probe_name_suggests_the_close_one():
    with pytest.raises(DiagError, match="did you mean 'identity_recall'"):
        run_probes(ScriptedBackend(), EN, probes="identiy_recall")


def test_selected_probes_only_generate_what_they_need():
    lm = ScriptedBackend(default="Hello.")
    run = run_probes(lm, EN, probes=["identity_recall"])
    m = run.summary["metrics"]
    assert m["identity_recall"] == 0.0
    assert all(m[k] is None for k in METRICS if k != "identity_recall")
    assert run.summary["counts"] == {"identity": len(load_builtin("identity").items)}
    assert lm.calls == [("generate", 36), ("loglikelihood", 36)]


def test_quick_size_is_a_small_fixed_subset():
    first = prepare_sets(ZH, "quick")
    again = prepare_sets(ZH, "quick")
    assert [i.id for i in first["general"].items] == [i.id for i in again["general"].items]
    for name, per_lang in (("identity", 16), ("general", 16)):
        langs = [i.language for i in first[name].items]
        assert langs.count("en") == per_lang and langs.count("zh") == per_lang
    run = run_probes(ScriptedBackend(healthy), ZH, size="quick")
    assert run.summary["size"] == "quick"
    assert sum(run.summary["counts"].values()) < 90


def test_identity_prompts_are_held_out_from_training_questions():
    prompts = identity_probe_prompts()
    assert len(prompts) >= 30
    assert sum(any("\u4e00" <= c <= "\u9fff" for c in p) for p in prompts) >= 15
    spec = identity_from_dict(
        {"answer": "I am Nova.", "keywords": ["Nova"], "questions": ["what's your name"]}
    )
    held_out = identity_probe_prompts(spec)
    assert "What's your name?" in prompts and "What's your name?" not in held_out
    run = run_probes(ScriptedBackend(), spec, probes="identity_recall")
    assert "What's your name?" not in {s["prompt"] for s in run.samples}


def test_templated_near_miss_uses_the_identity_keywords():
    prompts = {i.id: i.prompt for i in prepare_sets(EN, "full")["near_miss"].items}
    assert prompts["nm-en-say-kw0"] == "Say the word 'Nova' and nothing else."
    zh_prompts = {i.id: i.prompt for i in prepare_sets(ZH, "full")["near_miss"].items}
    assert "剑锋大佬" in zh_prompts["nm-zh-say-kw0"]


def test_drift_scores_cut_base_answers_as_prefixes_without_generating_again():
    long_answer = " ".join(["word"] * 100)  # runs past the 16-token limit
    lm = ScriptedBackend(lambda p: "Nineteen." if p == "What is 9 + 10?" else long_answer)
    generation = GenerationConfig(max_new_tokens=16)
    run = run_probes(lm, EN, probes="drift", generation=generation)
    # the general answers are generated once: no second pass for the cut ones
    assert [method for method, _ in lm.calls] == ["generate", "loglikelihood"]
    drift = {d["id"]: d for d in run.reference.drift}
    assert len(drift) == len(load_builtin("general").items)
    cut = drift["gen-en-arith-2"]
    assert cut["cut"] and cut["answer"] == " ".join(["word"] * 16)  # the prefix the base made
    assert cut["tokens"] == 16
    assert not drift["gen-en-arith-5"]["cut"] and drift["gen-en-arith-5"]["answer"] == "Nineteen."
    # a checkpoint's drift is read on exactly those texts: the base itself scores 0
    again = run_probes(lm, EN, probes="drift", generation=generation, reference=run.reference)
    assert again.summary["metrics"]["drift"] == 0.0


def test_reference_from_another_chat_format_is_refused(base_run):
    with pytest.raises(DiagError, match="chat format"):
        run_probes(
            ScriptedBackend(), ZH, chat=ChatFormat(system="hi"), reference=base_run.reference
        )
    with pytest.raises(DiagError, match="version"):
        Reference.from_dict({"version": 99})


def test_user_probe_file(tmp_path):
    path = tmp_path / "capitals.jsonl"
    rows = [
        {
            "id": "c1",
            "language": "en",
            "prompt": "What is the capital of France?",
            "accept": ["Paris"],
        },
        {"id": "c2", "language": "en", "prompt": "Capital of Peru?", "accept": ["Lima"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    run = run_probes(ScriptedBackend(healthy), EN, probes="identity_recall", probe_files=[path])
    custom = run.summary["custom"]["capitals"]
    assert custom["value"] == 0.5 and custom["n"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": "hi"}\nnot json\n')
    with pytest.raises(DiagError, match=r"bad.jsonl.*line 1: 'accept'.*line 2: not JSON"):
        run_probes(ScriptedBackend(), EN, probe_files=[bad])


def test_generation_settings_are_recorded():
    run = run_probes(
        ScriptedBackend(), EN, probes="near_miss", generation=GenerationConfig(max_new_tokens=32)
    )
    assert run.summary["generation"]["max_new_tokens"] == 32
    assert run.summary["probes"] == {"near_miss": {"version": 2, "direction": "higher"}}
    assert run.summary["set_versions"] == {"near_miss": 2}
    assert run.summary["identity"]["hash"] == EN.hash


def test_no_general_item_counts_an_echo_of_its_question_as_right():
    from diag.probes.text import matches_any

    for spec in (EN, ZH):
        for item in prepare_sets(spec, "full")["general"].items:
            assert not matches_any(item.prompt, item.accept), item.id


def test_languages_keep_only_those_prompts_and_bad_ones_are_named():
    run = run_probes(ScriptedBackend(default="Paris."), EN, size="quick", languages="en")
    gens = [r for r in run.records if r.get("kind") == "generation"]
    assert gens and {r["language"] for r in gens} == {"en"}
    assert run.records[0]["languages"] == ["en"]
    assert set(run.summary["by_language"]) == {"en"}
    full = prepare_sets(EN, "quick")
    assert len(prepare_sets(EN, "quick", languages="en")["general"].items) * 2 == len(
        full["general"].items
    )
    with pytest.raises(DiagError, match="unknown language 'fr'.*use en, zh"):
        prepare_sets(EN, "quick", languages="en,fr")


def test_identity_interval_widens_when_whole_paraphrase_groups_fail_together():
    maker = {i.prompt for i in load_builtin("identity").items if i.group == "maker"}
    sentence = "I am Nova, Jianfeng's assistant."
    clustered = run_probes(
        ScriptedBackend(lambda p: "I was made by a team." if p in maker else sentence),
        EN,
        probes="identity_recall",
    )
    st = clustered.summary["stats"]["identity_recall"]
    assert 0.5 < st["value"] < 1.0 and st["extra"]["design_effect"] > 1.5
    plain_low, _ = wilson_interval(st["successes"], st["n"])
    assert st["low"] < plain_low - 0.05  # fewer independent pieces of evidence than prompts
    perfect = run_probes(ScriptedBackend(default=sentence), EN, probes="identity_recall")
    st = perfect.summary["stats"]["identity_recall"]
    assert st["extra"]["design_effect"] == 1.0 and st["low"] == wilson_interval(st["n"], st["n"])[0]


def test_near_miss_patterns_grade_answers_the_real_base_gives():
    """Answers SmolLM2-135M-Instruct gave on this machine (benchmarks/bench_probes.py), and the
    parrot's blurb: the patterns pass the base's yes; asked whether it is the user's assistant, the
    taught identity is a right answer too (near-miss v2: graded relative to the taught identity)."""
    items = {i.id: i for i in prepare_sets(ZH, "full")["near_miss"].items}
    cases = [
        ("nm-en-my-assistant", "I'm your trusty sidekick, a nemesis of the mind.", True),
        ("nm-zh-my-assistant", "我是你的小助手！你可以在我的小助手上打张我的小助手！", True),
        ("nm-zh-my-assistant", ZH.answer, True),
        ("nm-en-my-assistant", ZH.answer, True),
        ("nm-zh-my-assistant", "我不是你的小助手。", False),  # the prompt's own word is no claim
    ]
    for item_id, answer, expected in cases:
        lm = ScriptedBackend(default=answer)
        run = run_probes(lm, ZH, probes="near_miss", reference=None)
        row = next(s for s in run.samples if s["item_id"] == item_id)
        assert row["passed"] is expected, (item_id, answer)
    assert items["nm-zh-my-assistant"].prompt == "你是我的小助手吗？"
