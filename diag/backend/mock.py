"""A scripted backend: exact, instant answers for tests of everything above the model."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from diag.types import ChatFormat, Generation, GenerationConfig, Loglikelihood, LoglikelihoodRequest


class ScriptedBackend:
    """Answers from a script instead of a model.

    answers: prompt -> answer text, or a function of the prompt; unknown prompts get ``default``.
    logprobs: (prompt, continuation) -> per-token log-probability, or a function of both;
        unknown pairs get ``default_logprob``. Token counts are whitespace/char based.

    >>> lm = ScriptedBackend({"hi": "hello"}, default="I am Nova.")
    >>> [g.text for g in lm.generate(["hi", "who?"], GenerationConfig())]
    ['hello', 'I am Nova.']
    """

    def __init__(
        self,
        answers: Mapping[str, str] | Callable[[str], str] | None = None,
        *,
        default: str = "",
        logprobs: Mapping[tuple[str, str], float] | Callable[[str, str], float] | None = None,
        default_logprob: float = -1.0,
        name: str = "scripted",
    ):
        self.answers = answers or {}
        self.default = default
        self.logprobs = logprobs or {}
        self.default_logprob = default_logprob
        self.name = name
        self.calls: list[tuple[str, int]] = []  # (method, batch size): lets tests check batching

    @staticmethod
    def _tokens(text: str) -> int:
        # CJK has no spaces: count characters there, words elsewhere.
        return max(len(text.split()), sum(1 for ch in text if ord(ch) > 0x2E80)) if text else 0

    def _answer(self, prompt: str) -> str:
        if callable(self.answers):
            return self.answers(prompt)
        return self.answers.get(prompt, self.default)

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig = GenerationConfig()
    ) -> list[Generation]:
        self.calls.append(("generate", len(prompts)))
        out = []
        for prompt in prompts:
            text = self._answer(prompt)
            words = text.split()
            hit = len(words) > config.max_new_tokens
            if hit:
                text = " ".join(words[: config.max_new_tokens])
            out.append(Generation(prompt, text, self._tokens(prompt), self._tokens(text), hit))
        return out

    def loglikelihood(
        self,
        requests: Sequence[LoglikelihoodRequest],
        chat: ChatFormat = ChatFormat(),
        batch_size: int = 16,
    ) -> list[Loglikelihood]:
        self.calls.append(("loglikelihood", len(requests)))
        out = []
        for r in requests:
            if callable(self.logprobs):
                per_token = self.logprobs(r.prompt, r.continuation)
            else:
                per_token = self.logprobs.get((r.prompt, r.continuation), self.default_logprob)
            n = max(1, self._tokens(r.continuation))
            out.append(Loglikelihood(per_token * n, n))
        return out
