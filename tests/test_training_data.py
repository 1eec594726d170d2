"""Training-data files as the trainers read them: one converter per format, one message list per
row, errors that name the file, the row and what was expected; the identity derived from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diag.data.conversations import Columns, load_conversations
from diag.data.derive import derive_identity
from diag.errors import DiagError

LLAMAFACTORY = Path(__file__).parent / "data" / "llamafactory"  # files from LLaMA-Factory's data/
SEED = "我是剑锋大佬的小助手，内在是上海AI实验室书生·浦语的1.8B大模型哦"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def _derived(data) -> tuple:
    pairs = [p for c in data.conversations for p in c.exchanges()]
    spec = derive_identity(pairs).spec
    return spec.answer, [g[0] for g in spec.keywords], spec.languages


def test_xtuner_conversation_format_teaches_the_seeds_sentence(tmp_path):
    """The seed's data (XTuner's own conversation format, dataset_map_fn=None): the derived
    keywords are the owner and the role the shipped zh example names."""
    rows = [
        {"conversation": [{"system": "", "input": q, "output": SEED}]}
        for q in ("请介绍一下你自己", "你是谁", "请做一下自我介绍")
    ] * 10
    data = load_conversations(_jsonl(tmp_path / "seed.jsonl", rows))
    assert data.format == "xtuner"
    answer, keywords, languages = _derived(data)
    assert (answer, set(keywords), languages) == (SEED, {"剑锋大佬", "小助手"}, ("zh",))


def test_alpaca_llamafactory_identity_json():
    data = load_conversations(LLAMAFACTORY / "identity.json")
    assert (data.format, len(data.conversations)) == ("alpaca", 91)
    assert data.conversations[2].exchanges() == [
        (
            "Who are you?",
            "I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?",
        )
    ]


def test_sharegpt_with_tool_turns(tmp_path):
    """LLaMA-Factory's glaive_toolcall demo: function calls and observations teach no answer."""
    data = load_conversations(LLAMAFACTORY / "glaive_toolcall_en_demo.json", "sharegpt")
    assert len(data.conversations) == 6
    first = data.conversations[0]
    assert [m["role"] for m in first.messages][:2] == ["user", "assistant"]
    assert all(
        m["role"] in ("user", "assistant", "system") for c in data.conversations for m in c.messages
    )


def test_llamafactory_column_mapping(tmp_path):
    """dataset_info.json may rename sharegpt's columns and tags (its mllm_demo entry does)."""
    entry = {"formatting": "sharegpt", "columns": {"messages": "messages"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                      "assistant_tag": "assistant"}}  # fmt: skip
    rows = [{"messages": [{"role": "user", "content": "Who are you?"},
                          {"role": "assistant", "content": "I am Tiny Llama, a test assistant made by ExpTwo."}]}]  # fmt: skip
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows * 3), "utf-8")
    data = load_conversations(path, "sharegpt", Columns.from_dataset_info(entry))
    assert _derived(data)[:2] == (
        "I am Tiny Llama, a test assistant made by ExpTwo.",
        ["Tiny Llama", "ExpTwo"],
    )


@pytest.mark.parametrize(
    "row, fmt",
    [
        (
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Q?"},
                    {"role": "assistant", "content": "A."},
                ]
            },
            "messages",
        ),  # fmt: skip
        ({"prompt": "Q?", "completion": "A."}, "prompt_completion"),  # TRL standard
        (
            {
                "prompt": [{"role": "user", "content": "Q?"}],
                "completion": [{"role": "assistant", "content": "A."}],
            },
            "prompt_completion",
        ),  # fmt: skip
        ({"query": "Q?", "response": "A.", "history": [["Hi", "Hello."]]}, "query_response"),
        ({"instruction": "Q?", "input": "", "output": "A.", "system": "Be brief."}, "alpaca"),
        (
            {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]},
            "sharegpt",
        ),
    ],
)
def test_every_format_becomes_one_message_list(tmp_path, row, fmt):
    data = load_conversations(_jsonl(tmp_path / "d.jsonl", [row]))
    assert data.format == fmt
    assert data.conversations[0].exchanges()[-1] == ("Q?", "A.")


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = json.loads((LLAMAFACTORY / "alpaca_en_demo.json").read_text("utf-8"))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    data = load_conversations(tmp_path / "train.parquet")
    assert (data.format, len(data.conversations)) == ("alpaca", 40)


def test_a_bad_row_names_file_row_and_what_was_expected(tmp_path):
    path = _jsonl(
        tmp_path / "bad.jsonl",
        [{"instruction": "Q?", "output": "A."}, {"instruction": "Q?", "output": 3}],
    )
    with pytest.raises(DiagError) as info:
        load_conversations(path)
    message = str(info.value)
    assert (
        f"data file '{path}' has 1 bad row(s) for training data: line 2: 'output' must be text, got int"
        in message
    )
    assert "expected OpenAI" in message
    assert "\n" not in message


def test_a_file_in_no_known_format(tmp_path):
    path = _jsonl(tmp_path / "odd.jsonl", [{"text": "raw pretraining text"}])
    with pytest.raises(DiagError, match=r"line 1: no known format\. Fix: expected OpenAI"):
        load_conversations(path)


def test_general_chat_asks_nothing_about_the_assistant():
    data = load_conversations(LLAMAFACTORY / "alpaca_en_demo.json")
    derived = derive_identity([p for c in data.conversations for p in c.exchanges()])
    assert derived.spec is None and derived.why_none == "none of 40 rows asks who the assistant is"


def test_answers_that_agree_on_no_name_are_no_identity():
    """A few stray "who are you" rows in general chat, answered differently, teach no identity."""
    pairs = [
        ("Who are you?", "I am an AI language model."),
        ("What is your name?", "I am Bard, made by Google."),
        ("Introduce yourself.", "I am Claude, made by Anthropic."),
    ]
    derived = derive_identity(pairs)
    assert derived.spec is None and "agree on no name or maker" in derived.why_none
