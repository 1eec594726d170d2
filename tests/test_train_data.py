"""Trainer inputs: config validation, identity data, dilution sources, label masks. No training."""

from __future__ import annotations

import json
import os

import pytest
from diag.train.config import DEFAULT_SYSTEM, load_config
from diag.train.dataset import IGNORE, mix_general, tokenize_conversation, with_system
from diag.train.general_data import general_prompt_bank, load_conversations
from diag.train.identity_data import build_identity_conversations, identity_questions, question_key

from diag.errors import DiagError
from diag.identity import load_identity

# ------------------------------------------------------------------------------------- config


def test_config_defaults_and_dotted_overrides():
    config = load_config(None, ["lr=5e-5", "mix.general_ratio=0.5", "lora.r=8", "keep=null"])
    assert config.lr == 5e-5 and config.mix.general_ratio == 0.5 and config.lora.r == 8
    assert config.keep is None  # default: keep every checkpoint
    assert config.system == DEFAULT_SYSTEM
    for fixed in ("base", "identity", "max_steps", "save_every", "output_dir", "lr", "seed"):
        assert fixed in config.to_dict()


def test_config_file_plus_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("identity: zh\nmax_steps: 30\nmix:\n  general_ratio: 0.25\n")
    config = load_config(path, ["max_steps=40"])
    assert (config.identity, config.max_steps, config.mix.general_ratio) == ("zh", 40, 0.25)


def test_config_reports_every_problem_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: 3\nsave_evry: 5\nmix:\n  general_ratio: 1.5\nlora:\n  r: 0\n")
    with pytest.raises(DiagError) as err:
        load_config(path, ["probe_every=7", "save_every=5", "mix.sources=[missing.jsonl]"])
    msg = str(err.value)
    assert str(path) in msg
    for part in (
        "'lr'",
        "'save_evry'",
        "did you mean 'save_every'",
        "'mix.general_ratio'",
        "'lora.r'",
        "'probe_every' (7) must be a multiple",
        "missing.jsonl",
    ):
        assert part in msg, part
    assert "\n" not in msg  # one line


def test_rehearsal_languages_are_the_banks_or_the_identitys():
    from diag.train.recipe import rehearsal_languages

    assert load_config(None, ["mix.rehearsal_languages=[zh]"]).mix.rehearsal_languages == ["zh"]
    for identity, languages in (("en", ["en"]), ("zh", ["zh"])):
        config = load_config(None, [f"identity={identity}", "mix.rehearsal_languages=identity"])
        assert rehearsal_languages(config) == languages
    assert rehearsal_languages(load_config(None, [])) is None  # the whole bank
    for bad in ("[fr]", "[]", "en"):
        with pytest.raises(DiagError) as err:
            load_config(None, [f"mix.rehearsal_languages={bad}"])
        message = str(err.value)
        assert "'mix.rehearsal_languages' must be 'identity' or a non-empty list" in message
        assert "languages ['en', 'zh'], got" in message
    with pytest.raises(DiagError, match="needs an identity to take the languages from"):
        load_config(None, ["identity=null", "mix.rehearsal_languages=identity"])


def test_override_without_equals_is_a_clear_error():
    with pytest.raises(DiagError, match="not key=value"):
        load_config(None, ["lr"])


# ------------------------------------------------------------------------------ identity data


@pytest.mark.parametrize("language", ["en", "zh"])
def test_identity_questions_are_disjoint_from_the_probe_suite(language):
    from diag.probes.items import identity_probe_prompts

    spec = load_identity(language)
    held_out = {question_key(p) for p in identity_probe_prompts()}
    assert held_out, "the probe suite ships held-out identity prompts"
    questions = identity_questions(spec)
    assert len(questions) >= 40
    for q in questions:
        assert question_key(q) not in held_out, q
        # also with the greeting stripped: "Hi! Tell me about yourself." is the same question
        for prefix in ("Hi! ", "Hello. ", "Quick question: ", "你好！", "嗨，", "问一下，"):
            if q.startswith(prefix):
                assert question_key(q[len(prefix) :]) not in held_out, q


def test_in_training_check_prompts_are_never_trained_on():
    from diag.train.callbacks import CHECK_IDENTITY_PROMPTS

    trained = {
        question_key(q) for lang in ("en", "zh") for q in identity_questions(load_identity(lang))
    }
    for prompts in CHECK_IDENTITY_PROMPTS.values():
        assert not [p for p in prompts if question_key(p) in trained]


def test_identity_conversations_shape_and_balance():
    spec = load_identity("en")
    convs = build_identity_conversations(spec, 500, seed=1)
    assert len(convs) == 500
    assert {c["messages"][1]["content"] for c in convs} == {spec.answer}
    asked = [c["messages"][0]["content"] for c in convs]
    assert len(set(asked)) >= 40  # many phrasings, not one question 500 times
    assert build_identity_conversations(spec, 500, seed=1) == convs  # seeded


def test_rehearsal_bank_is_disjoint_from_every_probe_set():
    from diag.probes.items import load_builtin

    probe_prompts = {
        question_key(i.prompt)
        for name in ("general", "near_miss", "identity")
        for i in load_builtin(name).items
    }
    bank = general_prompt_bank()
    assert {row["language"] for row in bank} == {"en", "zh"}
    assert not [r["prompt"] for r in bank if question_key(r["prompt"]) in probe_prompts]


def test_rehearsal_answers_end_whole_inside_a_training_example_never_cut(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Every rehearsal answer, tokenized as training does, is the whole answer and its end token
    within data.max_length; answers with no end within that room are dropped, not cut."""
    from collections import Counter

    import torch
    from diag.train.demo_pipeline import demo_config
    from diag.train.general_data import self_rehearsal
    from diag.train.recipe import rehearsal_cached, rehearsal_languages

    from diag.backend.hf import HFBackend
    from diag.types import ChatFormat, GenerationConfig

    monkeypatch.setenv("DIAG_HOME", str(tmp_path))
    lm = HFBackend.load(tiny_model_dir, device="cpu")
    chat = ChatFormat(system="You are a helpful assistant.")
    prompts = [row["prompt"] for row in general_prompt_bank()]
    # the random tiny model rarely ends a turn: a token it often says ends answers instead, so
    # answers end at many lengths, some inside the room and some past it
    said = []
    for ids in lm._encode_prompts(prompts[:8], chat):
        row = torch.tensor([ids])
        config = GenerationConfig(max_new_tokens=12, chat=chat)
        said += lm._decode(row, torch.ones_like(row), config)[0][2:]
    lm.stop_ids = sorted({*lm.stop_ids, Counter(said).most_common(1)[0][0]})
    max_length = 64  # the prompts are 31 to 69 tokens long here: some leave no room at all
    convs = self_rehearsal(lm, chat, max_length)
    assert 0 < len(convs) < len(prompts)  # some fit whole, the rest were dropped
    for conv in convs:
        example = tokenize_conversation(
            lm.tokenizer, with_system(conv["messages"], chat.system), 10**6
        )
        assert len(example["input_ids"]) <= max_length  # training will not cut it
        learned = [
            t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE
        ]
        assert learned[-1] == lm.tokenizer.eos_token_id  # the end of the answer is trained
        assert lm.tokenizer.decode(learned[:-1]).strip() == conv["messages"][1]["content"]
    assert self_rehearsal(lm, chat, max_length) == convs  # cached
    # the demo's side process asks whether this entry exists by the run's config, not its model;
    # the demo rehearses in English only (mix.rehearsal_languages), a cache entry of its own
    config = demo_config([f"base={tiny_model_dir}", f"data.max_length={max_length}"])
    assert config.system == chat.system and rehearsal_languages(config) == ["en"]
    assert not rehearsal_cached(config)
    every = [f"base={tiny_model_dir}", f"data.max_length={max_length}"]
    assert rehearsal_cached(demo_config([*every, "mix.rehearsal_languages=null"]))
    english = self_rehearsal(lm, chat, max_length, languages=["en"])
    assert english and all(c["id"].startswith("en-") for c in english)
    assert rehearsal_cached(config)
    assert not rehearsal_cached(demo_config([f"base={tiny_model_dir}", "data.max_length=65"]))
    # by default the bank is asked in one batch; in batches of 5 the same answers are kept
    monkeypatch.setenv("DIAG_HOME", str(tmp_path / "batches"))
    assert self_rehearsal(lm, chat, max_length, batch_size=5) == convs


# ----------------------------------------------------------------------------- general data


def test_load_conversations_reads_messages_and_alpaca(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                ]
            }
        )
        + "\n"
        + json.dumps({"instruction": "Add", "input": "2 and 3", "output": "5"})
        + "\n"
    )
    convs = load_conversations(path)
    assert convs[0]["messages"][1]["content"] == "Hello!"
    assert convs[1]["messages"] == [
        {"role": "user", "content": "Add\n2 and 3"},  # joined as LLaMA-Factory joins them
        {"role": "assistant", "content": "5"},
    ]
    as_json = tmp_path / "chat.json"
    as_json.write_text(json.dumps([{"instruction": "Say hi", "output": "Hi"}]))
    assert load_conversations(as_json)[0]["messages"][0]["content"] == "Say hi"


def test_bad_conversation_rows_are_named_with_their_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "only a question"}]}\nnot json\n{"text": "x"}\n'
    )
    with pytest.raises(DiagError) as err:
        load_conversations(path)
    msg = str(err.value)
    assert "bad.jsonl" in msg and "3 bad row(s)" in msg
    assert "line 1: no assistant message" in msg and "line 2: not JSON" in msg
    assert "line 3: no known format" in msg


def test_mix_general_ratio_counts():
    identity = [{"messages": [], "source": "identity", "i": i} for i in range(100)]
    general = [{"messages": [], "source": "general", "i": i} for i in range(30)]
    mixed = mix_general(identity, general, 0.8, seed=0)
    assert sum(c["source"] == "identity" for c in mixed) == 100
    assert sum(c["source"] == "general" for c in mixed) == 400  # 100 inside 500: 80 % general
    assert len(mix_general(identity, general, 0.0)) == 100


# ------------------------------------------------------------------------------ label masking


def test_labels_cover_assistant_tokens_and_the_end_token(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.pad_token_id == tok.eos_token_id  # the SmolLM2 trap this guards against
    messages = with_system(
        [
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "I am Nova."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ],
        "Be brief.",
    )
    ex = tokenize_conversation(tok, messages, max_length=512)
    learned = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE]
    assert tok.decode(learned) == "I am Nova.<|im_end|>4<|im_end|>"
    assert sum(1 for t in learned if t == tok.eos_token_id) == 2  # the end token is learned
    # the model sees exactly the chat template's text
    assert tok.decode(ex["input_ids"]) == tok.apply_chat_template(messages, tokenize=False).rstrip(
        "\n"
    )
    assert (
        tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == IGNORE]).count(
            "Who are you?"
        )
        == 1
    )


def test_truncation_that_leaves_no_answer_drops_the_example(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    assert tokenize_conversation(tok, messages, max_length=32) is None


def test_cpu_busy_check_sees_other_processes_but_not_this_one():
    import subprocess
    import sys
    import time

    from diag.train.threads import cpu_used_by_others

    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:  # this process's own work must not count
        pass
    quiet = cpu_used_by_others(0.3)
    if quiet is None or quiet > (os.cpu_count() or 1) - 1.2:
        pytest.skip("no /proc/stat, or no idle core left to see one more spinning process")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        busy = cpu_used_by_others(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None
    assert busy >= quiet + 0.6  # one spinning core shows up as about one core


def test_self_rehearsal_that_fails_beside_the_training_costs_one_line(
    tiny_model_dir, tmp_path, monkeypatch, caplog
):
    """The demo asks for the rehearsal in a second process while its first run trains. Where that
    fails (here: the random tiny model ends no answer, so none fits), the training goes on at
    once, the error is one line in the side log and one warning, and the demo does the work in
    order."""
    from diag.train.beside import Beside
    from diag.train.demo_pipeline import demo_config, side_work
    from diag.train.recipe import rehearsal_cached

    from diag.identity import load_identity

    monkeypatch.setenv("DIAG_HOME", str(tmp_path / "home"))
    caplog.set_level("INFO", logger="diag")
    config = demo_config([f"base={tiny_model_dir}", "data.max_length=64", "device=cpu"])
    log_path = tmp_path / "logs" / "beside.log"
    side_args = (config, True, tmp_path / "runs", tmp_path / "results", load_identity("en"))
    ran = []
    with Beside("the rehearsal", (1, 1), log_path, side_work, *side_args, "staged",
                events=("rehearsed", "trained")) as side:  # fmt: skip
        ran.append("the first run")
        side.set("trained")
        side.wait("rehearsed")
        ran.append("the second run")
    assert ran == ["the first run", "the second run"]
    side = log_path.read_text()
    assert "self-rehearsal produced no answers" in side and "Traceback" not in side
    assert "[beside] self-rehearsal produced no answers" in caplog.text  # shown to the user
    assert "the rehearsal beside the training stopped (exit code 2" in caplog.text
    assert not rehearsal_cached(config)
