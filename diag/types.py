"""Plain typed data shared by every stage (no heavy imports here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ChatFormat:
    """How a user prompt becomes model input.

    system: None keeps the tokenizer template's own behaviour (SmolLM2's inserts a default system
        prompt); a string (even "") is sent as an explicit system message.
    template: None uses the tokenizer's chat template; otherwise a Python format string with
        ``{input}`` and optionally ``{system}`` (XTuner's ``prompt_template`` style).
    system_template: format string wrapping ``{system}`` when ``template`` is a format string.
    chat_template: a Jinja chat template saved with the checkpoint, used instead of the
        tokenizer's when ``template`` is None (LLaMA-Factory saves the template it trained with).
    """

    system: str | None = None
    template: str | None = None
    system_template: str | None = None
    chat_template: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["chat_template"] is None:  # keeps the cache keys of every other format as they were
            del data["chat_template"]
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> ChatFormat:
        data = data or {}
        return cls(
            **{k: data.get(k) for k in ("system", "template", "system_template", "chat_template")}
        )


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings; greedy by default so results are reproducible."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    batch_size: int = 16
    chat: ChatFormat = field(default_factory=ChatFormat)

    def to_dict(self) -> dict:
        return asdict(self)


# The probe suite's decoding settings: what `diag probe` and `diag sweep` use unless told.
DEFAULT_GENERATION = GenerationConfig(max_new_tokens=48, batch_size=64)


@dataclass(frozen=True)
class Generation:
    """One generated answer."""

    prompt: str
    text: str
    prompt_tokens: int
    new_tokens: int
    hit_limit: bool  # stopped because max_new_tokens ran out, not at end-of-turn


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score ``continuation`` as the assistant's answer to the user ``prompt``."""

    prompt: str
    continuation: str


@dataclass(frozen=True)
class Loglikelihood:
    """Sum of log-probabilities (natural log) of the continuation tokens, and how many there were."""

    logprob: float
    tokens: int

    @property
    def per_token(self) -> float:
        return self.logprob / self.tokens if self.tokens else 0.0
