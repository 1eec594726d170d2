"""The task spec: what a narrow fine-tune taught, as the probes need it (no heavy imports).

Most fine-tunes teach a narrow task (a support bot for one product, a house style, a domain's
Q&A), not an identity; they fail the same way, answering unrelated questions with the training
answers. The training data is the probe (``diag/data/task_data.py`` derives this from it):

- ``rows``: questions with their reference answers, asked of every checkpoint: the run's own
  held-out rows where there are some (a validation file, ``--eval-data``), else a fixed sample
  of training rows (``held_out`` False: a score on them shows fit, not generalisation);
- ``answers``: training answers (a fixed sample) that regurgitation and memorisation compare
  with;
- ``typical``: a few representative training answers, the "taught answer" parrot pressure
  weighs against the model's own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

SEEN_LABEL = "seen rows: fit, not generalisation"


@dataclass(frozen=True)
class TaskRow:
    """One question the task is judged on, and its reference answer."""

    id: str
    language: str
    question: str
    reference: str


@dataclass(frozen=True)
class TaskSpec:
    """What a run's task data teaches (see the module docstring)."""

    name: str
    rows: tuple[TaskRow, ...]
    answers: tuple[tuple[str, str], ...]  # (question, answer) pairs from the training data
    typical: tuple[str, ...]
    held_out: bool
    source: str = field(default="", compare=False)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted({r.language for r in self.rows})) or ("en",)

    @property
    def label(self) -> str:
        """What a task score on these rows shows: generalisation, or fit."""
        return "held-out rows" if self.held_out else SEEN_LABEL

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("source")
        data["rows"] = [asdict(r) for r in self.rows]
        data["answers"] = [list(a) for a in self.answers]
        data["typical"] = list(self.typical)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TaskSpec:
        return cls(
            name=str(data.get("name") or "task"),
            rows=tuple(TaskRow(**r) for r in data.get("rows") or []),
            answers=tuple(tuple(a) for a in data.get("answers") or []),
            typical=tuple(data.get("typical") or ()),
            held_out=bool(data.get("held_out")),
            source=str(data.get("source") or ""),
        )

    @property
    def hash(self) -> str:
        payload = json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(payload).hexdigest()[:16]


# ----------------------------------------------------------------------------------- terms
# Words that carry no content of their own, in the languages diag probes (en, zh).
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "let",
        "me",
        "more",
        "most",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yes",
        "ok",
        "okay",
        "please",
        "thank",
        "thanks",
        "sure",
        "hello",
        "hi",
        "dear",
        "here's",
        "i'm",
        "you're",
        "it's",
        "that's",
        "there's",
        "don't",
        "can't",
        "won't",
        "i'll",
        "we'll",
        "you'll",
        "let's",
        "one",
        "two",
        "get",
        "got",
        "make",
        "made",
        "use",
        "used",
        "like",
        "well",
        "may",
        "might",
        "must",
        "shall",
        "also",
        "really",
        "just",
    ]
) | frozenset(
    [
        "的",
        "了",
        "是",
        "在",
        "我",
        "你",
        "您",
        "他",
        "她",
        "它",
        "们",
        "这",
        "那",
        "有",
        "和",
        "与",
        "也",
        "就",
        "都",
        "而",
        "及",
        "或",
        "一",
        "个",
        "吗",
        "呢",
        "吧",
        "啊",
        "哦",
        "不",
        "很",
    ]
)


def terms(text: str) -> set[str]:
    """The content terms of ``text``: lower-cased words (digits kept, stop words and one-letter
    words left out) and, for Chinese, character pairs within each run of CJK characters.

    >>> sorted(terms("Hold the power button for 10 seconds."))
    ['10', 'button', 'hold', 'power', 'seconds']
    >>> sorted(terms("电池续航12小时"))
    ['12', '小时', '池续', '电池', '续航']
    """
    import re
    import unicodedata

    text = unicodedata.normalize("NFKC", text).lower()
    out: set[str] = set()
    for word in re.findall(r"[a-z0-9][a-z0-9'\-]*", text):
        word = word.strip("'-")
        if word and word not in STOPWORDS and (len(word) > 1 or word.isdigit()):
            out.add(word)
    for run in re.findall(r"[\u4e00-\u9fff]+", text):
        for a, b in zip(run, run[1:]):
            if a not in STOPWORDS and b not in STOPWORDS:
                out.add(a + b)
    return out
