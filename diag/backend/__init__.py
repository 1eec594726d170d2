"""The model interface every stage above it talks to.

In the spirit of lm-evaluation-harness' ``LM``: batched ``generate`` and ``loglikelihood``, plus
adapter switching so a sweep loads each base once. Two implementations:

- :class:`diag.backend.hf.HFBackend` -- transformers/peft, the only torch user outside ``train``;
- :class:`diag.backend.mock.ScriptedBackend` -- scripted answers for fast, exact tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from diag.types import ChatFormat, Generation, GenerationConfig, Loglikelihood, LoglikelihoodRequest


@runtime_checkable
class LanguageModel(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[Generation]:
        """Answer each user prompt (chat template applied); order preserved."""
        ...

    def loglikelihood(
        self,
        requests: Sequence[LoglikelihoodRequest],
        chat: ChatFormat = ChatFormat(),
        batch_size: int = 16,
    ) -> list[Loglikelihood]:
        """Log-probability of each continuation as the assistant's answer; order preserved."""
        ...


def load_backend(base=None, **kwargs):
    """Load the transformers backend for ``base`` (see :func:`diag.models.resolve_base`)."""
    from diag.backend.hf import HFBackend

    return HFBackend.load(base, **kwargs)
