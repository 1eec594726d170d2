"""One converter per training-data format: every row becomes one message list.

As LLaMA-Factory's ``data/converter.py`` and ms-swift's ``dataset/preprocessor``: the format is
detected once per file (or named by the trainer's record), then each row goes through its own
small converter. Formats:

- ``messages``: OpenAI chat, ``{"messages": [{"role", "content"}, ...]}`` (TRL, ms-swift, axolotl,
  torchtune ``conversation_style: openai``, diag's own files);
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}``;
- ``alpaca``: ``instruction``, optional ``input``, ``output``, ``system``, ``history``;
- ``prompt_completion``: TRL's ``prompt`` and ``completion``, each a string or a message list;
- ``xtuner``: XTuner's ``{"conversation": [{"system", "input", "output"}, ...]}``;
- ``query_response``: ms-swift's ``query``, ``response``, ``system``, ``history``.

LLaMA-Factory's ``dataset_info.json`` can rename the columns and role tags of ``alpaca`` and
``sharegpt``; :class:`Columns` carries those renamings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from diag.data.rows import NotJSON, Row, read_rows
from diag.errors import DiagError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Conversation:
    """A training example as messages (``{"role", "content"}``), and the row it came from."""

    messages: tuple[dict, ...]
    row: Row

    @property
    def system(self) -> str | None:
        first = self.messages[0] if self.messages else None
        return first["content"] if first and first["role"] == "system" else None

    def exchanges(self) -> list[tuple[str, str]]:
        """(user message, the assistant's answer to it) for every answered user turn."""
        pairs = []
        for before, after in zip(self.messages, self.messages[1:]):
            if before["role"] == "user" and after["role"] == "assistant":
                pairs.append((before["content"], after["content"]))
        return pairs

    def answers(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "assistant"]


@dataclass(frozen=True)
class Columns:
    """Column and role-tag names, as LLaMA-Factory's ``dataset_info.json`` may rename them."""

    prompt: str = "instruction"
    query: str = "input"
    response: str = "output"
    system: str = "system"
    history: str = "history"
    messages: str = "conversations"
    role_tag: str = "from"
    content_tag: str = "value"
    user_tags: tuple[str, ...] = ("human", "user")
    assistant_tags: tuple[str, ...] = ("gpt", "assistant", "model")
    system_tags: tuple[str, ...] = ("system",)
    observation_tags: tuple[str, ...] = ("observation", "function_call", "tool")

    @classmethod
    def from_dataset_info(cls, entry: dict) -> Columns:
        """The renamings of one ``dataset_info.json`` entry (its ``columns`` and ``tags``)."""
        columns = entry.get("columns") if isinstance(entry.get("columns"), dict) else {}
        tags = entry.get("tags") if isinstance(entry.get("tags"), dict) else {}
        changed: dict = {}
        for key in ("prompt", "query", "response", "system", "history", "messages"):
            if isinstance(columns.get(key), str):
                changed[key] = columns[key]
        for key in ("role_tag", "content_tag"):
            if isinstance(tags.get(key), str):
                changed[key] = tags[key]
        for key in ("user", "assistant", "system", "observation"):
            if isinstance(tags.get(f"{key}_tag"), str):
                changed[f"{key}_tags"] = (tags[f"{key}_tag"],)
        return cls(**changed)


class BadRow(ValueError):
    """A row that does not fit its format; the message says what was expected."""


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"{what} must be text, got {type(value).__name__}")
    return value


def _pairs(history, what: str) -> list[dict]:
    """``[[query, response], ...]`` (alpaca/ms-swift history) as messages."""
    if history in (None, ""):
        return []
    if not isinstance(history, list):
        raise BadRow(f"'{what}' must be a list of [query, response] pairs")
    out = []
    for pair in history:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise BadRow(f"'{what}' must be a list of [query, response] pairs")
        out += [
            {"role": "user", "content": _text(pair[0], what)},
            {"role": "assistant", "content": _text(pair[1], what)},
        ]
    return out


def _with_system(system, messages: list[dict]) -> list[dict]:
    if isinstance(system, str) and system.strip():
        return [{"role": "system", "content": system}, *messages]
    return messages


def from_alpaca(row: dict, columns: Columns) -> list[dict]:
    if columns.prompt not in row or columns.response not in row:
        raise BadRow(f"needs '{columns.prompt}' and '{columns.response}'")
    prompt = _text(row[columns.prompt], f"'{columns.prompt}'")
    query = row.get(columns.query)
    if isinstance(query, str) and query.strip():
        prompt = f"{prompt}\n{query}" if prompt else query  # LLaMA-Factory joins them with \n
    response = row[columns.response]
    if isinstance(response, list):  # ranking data: the first answer is the chosen one
        response = response[0] if response else ""
    messages = _pairs(row.get(columns.history), columns.history)
    messages += [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": _text(response, f"'{columns.response}'")},
    ]
    return _with_system(row.get(columns.system), messages)


def from_sharegpt(row: dict, columns: Columns) -> list[dict]:
    turns = row.get(columns.messages)
    if not isinstance(turns, list) or not turns:
        raise BadRow(f"needs a non-empty '{columns.messages}' list")
    roles = {
        **dict.fromkeys(columns.user_tags, "user"),
        **dict.fromkeys(columns.assistant_tags, "assistant"),
        **dict.fromkeys(columns.system_tags, "system"),
    }
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise BadRow(f"each '{columns.messages}' entry must be an object")
        tag = turn.get(columns.role_tag)
        if tag in columns.observation_tags:
            continue  # tool calls and results teach no answer to a user
        if tag not in roles:
            known = sorted(roles)
            raise BadRow(f"'{columns.role_tag}' is {tag!r}, expected one of {known}")
        messages.append(
            {"role": roles[tag], "content": _text(turn.get(columns.content_tag), "a turn")}
        )
    return _with_system(row.get(columns.system), messages)


def from_messages(row: dict, columns: Columns) -> list[dict]:
    turns = row.get("messages")
    if not isinstance(turns, list) or not turns:
        raise BadRow("needs a non-empty 'messages' list")
    messages = []
    for turn in turns:
        role = turn.get("role") if isinstance(turn, dict) else None
        if role in ("tool", "function", "ipython"):
            continue
        if role not in ROLES:
            raise BadRow(f"each message needs 'role' in {list(ROLES)}, got {role!r}")
        messages.append({"role": role, "content": _text(turn.get("content"), "'content'")})
    return messages


def from_prompt_completion(row: dict, columns: Columns) -> list[dict]:
    out = []
    for key, role in (("prompt", "user"), ("completion", "assistant")):
        value = row.get(key)
        if isinstance(value, str):
            out.append({"role": role, "content": value})
        elif isinstance(value, list):
            out += from_messages({"messages": value}, columns)
        else:
            raise BadRow(f"'{key}' must be text or a message list")
    return out


def from_xtuner(row: dict, columns: Columns) -> list[dict]:
    turns = row.get("conversation")
    if not isinstance(turns, list) or not turns:
        raise BadRow("needs a non-empty 'conversation' list of {input, output}")
    messages: list[dict] = []
    for turn in turns:
        if not isinstance(turn, dict) or "input" not in turn or "output" not in turn:
            raise BadRow("each 'conversation' entry needs 'input' and 'output'")
        if not messages:  # XTuner keeps the system prompt in the first turn
            messages = _with_system(turn.get("system"), messages)
        messages += [
            {"role": "user", "content": _text(turn["input"], "'input'")},
            {"role": "assistant", "content": _text(turn["output"], "'output'")},
        ]
    return messages


def from_query_response(row: dict, columns: Columns) -> list[dict]:
    if "query" not in row or "response" not in row:
        raise BadRow("needs 'query' and 'response'")
    messages = _pairs(row.get("history"), "history")
    messages += [
        {"role": "user", "content": _text(row["query"], "'query'")},
        {"role": "assistant", "content": _text(row["response"], "'response'")},
    ]
    return _with_system(row.get("system"), messages)


CONVERTERS: dict[str, Callable[[dict, Columns], list[dict]]] = {
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "xtuner": from_xtuner,
    "prompt_completion": from_prompt_completion,
    "query_response": from_query_response,
    "alpaca": from_alpaca,
}
EXPECTED = (
    'OpenAI {"messages": [{"role", "content"}]}, sharegpt {"conversations": [{"from", "value"}]}, '
    'alpaca {"instruction", "input", "output"}, TRL {"prompt", "completion"}, XTuner '
    '{"conversation": [{"input", "output"}]} or ms-swift {"query", "response"}'
)


def detect_format(row: object, columns: Columns = Columns()) -> str | None:
    """The format a row is written in, or None.

    >>> detect_format({"instruction": "Who are you?", "input": "", "output": "I am Nova."})
    'alpaca'
    >>> detect_format({"conversations": [{"from": "human", "value": "hi"}]})
    'sharegpt'
    """
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "messages"
    if columns.messages in row:
        return "sharegpt"
    if "conversation" in row:
        return "xtuner"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "query" in row and "response" in row:
        return "query_response"
    if columns.prompt in row and columns.response in row:
        return "alpaca"
    return None


@dataclass
class DataFile:
    """The conversations of one file, with the format they were read as ("mixed" when rows
    differ: each row is then read in its own)."""

    path: Path
    format: str
    conversations: list[Conversation] = field(default_factory=list)


def load_conversations(
    path: str | Path, fmt: str | None = None, columns: Columns = Columns()
) -> DataFile:
    """Every row of ``path`` as a :class:`Conversation`; ``fmt`` None: each row's own format.

    Every bad row is reported in one DiagError naming the file, the rows and what was expected;
    a file with no answered user turn is an error too.
    """
    rows = read_rows(path)
    if not rows:
        raise DiagError(f"data file '{path}' is empty", fix="point at the file the run trained on")
    if fmt is not None and fmt not in CONVERTERS:
        raise DiagError(f"unknown data format '{fmt}'", fix=f"one of {list(CONVERTERS)}")
    out, problems, seen = DataFile(Path(path), fmt or ""), [], set()
    for row in rows:
        try:
            if isinstance(row.data, NotJSON):
                raise BadRow(f"not JSON ({row.data.why})")
            row_format = fmt or detect_format(row.data, columns)
            if row_format is None:
                raise BadRow(
                    "no known format" if isinstance(row.data, dict) else "not a JSON object"
                )
            messages = CONVERTERS[row_format](row.data, columns)
            if not any(m["role"] == "assistant" for m in messages):
                raise BadRow("no assistant message to learn from")
        except BadRow as exc:
            problems.append(f"{row.place}: {exc}")
            continue
        seen.add(row_format)
        out.conversations.append(Conversation(tuple(messages), row))
    if problems:
        shown = "; ".join(problems[:3]) + (
            f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        )
        what = f"{fmt} data" if fmt else "training data"
        raise DiagError(
            f"data file '{path}' has {len(problems)} bad row(s) for {what}: {shown}",
            fix=f"expected {EXPECTED}",
        )
    out.format = fmt or (seen.pop() if len(seen) == 1 else "mixed")
    return out
