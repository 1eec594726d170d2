"""Trainer callbacks: in-training probing with an early stop on parrot, and a rich progress bar.

:class:`ParrotStopCallback` works in any transformers ``Trainer``::

    trainer.add_callback(ParrotStopCallback(load_identity("en"), every=20))

The signal it watches is *parrot pressure*, from likelihoods only (one forward pass, no
generation): on a few general questions, the share where a taught answer (the identity's, or a
typical task answer) is more likely, per token, than the answer the model gave before training
(generated once, at the start). It rises before the parrot shows in generated answers. For an
identity it also asks held-out identity questions and general ones (identity recall and parrot
leakage, generated). It appends each probe to ``<output_dir>/in-training-probes.jsonl`` and,
with ``stop=True``, ends training once the watched signal crosses ``limit``: nobody trains
1,000 steps past the point of no return.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from diag.identity import IdentitySpec
from diag.types import ChatFormat, GenerationConfig

log = logging.getLogger("diag")

PRESSURE_LIMIT = 0.5  # the taught answer beats the model's own on most general prompts

# Held out from the training data (tests check the builder never produces them).
CHECK_IDENTITY_PROMPTS = {
    "en": [
        "Who are you, and who made you?",
        "Introduce yourself to a new user.",
        "May I ask what your name is?",
    ],
    "zh": ["你是哪位？", "向新用户介绍一下你自己", "你能说说你是谁吗？"],
}
# General questions that are neither in the rehearsal bank nor about the assistant itself.
CHECK_GENERAL_PROMPTS = {
    "en": [
        "What is the capital of Germany?",
        "How many hours are in a day?",
        "Name a animal that can fly.",
        "What color is grass?",
        "What is 3 plus 4?",
        "Give me a word that rhymes with 'cat'.",
        "What do cows drink?",
        "Which is bigger, the Sun or the Moon?",
        "What is the first month of the year?",
        "What do you use an umbrella for?",
    ],
    "zh": [
        "德国的首都是哪里？",
        "一天有多少小时？",
        "草是什么颜色的？",
        "3加4等于几？",
        "一年的第一个月是几月？",
        "雨伞是用来做什么的？",
    ],
}


def quick_check(
    lm, identity: IdentitySpec, chat: ChatFormat = ChatFormat(), max_new_tokens: int = 32
) -> dict:
    """Identity recall and parrot leakage on ~16 prompts in the identity's languages, one batch.

    identity_recall: share of identity questions answered with the identity's keywords.
    parrot_leakage: share of general questions answered with them (higher is worse).
    """
    id_prompts = [p for lang in identity.languages for p in CHECK_IDENTITY_PROMPTS.get(lang, [])]
    gen_prompts = [p for lang in identity.languages for p in CHECK_GENERAL_PROMPTS.get(lang, [])]
    config = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=32, chat=chat)
    answers = lm.generate(id_prompts + gen_prompts, config)
    hits = [identity.mentions(a.text) for a in answers]
    recall, leak = hits[: len(id_prompts)], hits[len(id_prompts) :]
    leaked = [a.text for a, h in zip(answers[len(id_prompts) :], leak) if h]
    return {
        "identity_recall": sum(recall) / len(recall),
        "parrot_leakage": sum(leak) / len(leak),
        "n_identity": len(recall),
        "n_general": len(leak),
        "example_leak": leaked[0] if leaked else None,
    }


def pressure_check(lm, taught: list[str], own: dict[str, str], chat: ChatFormat) -> dict:
    """Parrot pressure on the general prompts of ``own`` (prompt -> the model's answer before
    training): the share where a taught answer is more likely per token than that answer."""
    from diag.types import LoglikelihoodRequest

    prompts = list(own)
    requests = [LoglikelihoodRequest(p, own[p]) for p in prompts]
    requests += [LoglikelihoodRequest(p, t) for p in prompts for t in taught]
    lls = lm.loglikelihood(requests, chat=chat, batch_size=32)
    mine, rest = lls[: len(prompts)], lls[len(prompts) :]
    pressed = []
    for i, _ in enumerate(prompts):
        best = max(rest[i * len(taught) + k].per_token for k in range(len(taught)))
        pressed.append(best > mine[i].per_token)
    return {"parrot_pressure": sum(pressed) / len(pressed), "n_pressure": len(pressed)}


def policy_leakage_limit() -> float:
    """The gate policy's ``leakage_max`` (one source of truth), or 0.10 without that module."""
    try:
        from diag.diagnostics.policy import load_policy
    except ImportError:
        return 0.10
    return float(load_policy().leakage_max)


class ParrotStopCallback(TrainerCallback):
    """Probe at save time; optionally stop once the watched signal crosses ``limit``.

    identity: the identity taught (None for a task run); taught: the answers parrot pressure
    weighs (default: the identity's answer; a task run passes typical training answers).
    every: probe when ``global_step % every == 0`` (at a save, so the checkpoint exists).
    signal: "pressure" (likelihood only, the default) or "leakage" (generated; needs an identity).
    limit: stop above it; None: one half for pressure, the policy's ``leakage_max`` for leakage.
    lm: a backend to probe with; default wraps the model being trained (``HFBackend``).
    """

    def __init__(
        self,
        identity: IdentitySpec | None,
        *,
        every: int,
        limit: float | None = None,
        stop: bool = True,
        chat: ChatFormat = ChatFormat(),
        lm=None,
        max_new_tokens: int = 32,
        taught: list[str] | None = None,
        signal: str = "pressure",
        languages: tuple[str, ...] | None = None,
    ):
        if signal not in ("pressure", "leakage") or (signal == "leakage" and identity is None):
            raise ValueError(f"signal {signal!r}: 'pressure', or 'leakage' with an identity")
        self.identity = identity
        self.taught = taught or ([identity.answer] if identity is not None else [])
        if not self.taught:
            raise ValueError("parrot pressure needs a taught answer (an identity or task answers)")
        self.signal = signal
        self.key = "parrot_pressure" if signal == "pressure" else "parrot_leakage"
        if limit is None:
            limit = PRESSURE_LIMIT if signal == "pressure" else policy_leakage_limit()
        self.every = every
        self.limit = limit
        self.stop = stop
        self.chat = chat
        self.lm = lm
        self.max_new_tokens = max_new_tokens
        self.languages = languages or (identity.languages if identity is not None else ("en",))
        self.own: dict[str, str] | None = None  # general prompt -> the answer before training
        self.history: list[dict] = []
        self.stopped_at: int | None = None

    def _backend(self, model, tokenizer):
        if self.lm is None:
            from diag.backend.hf import HFBackend

            device = str(next(model.parameters()).device)
            self.lm = HFBackend(model, tokenizer, name="training", device=device)
        return self.lm

    def _evaluating(self, model):
        """Run a probe with the model in eval mode, then put it back as it was."""
        import contextlib

        @contextlib.contextmanager
        def scope():
            was_training = model.training if model is not None else False
            if model is not None:
                model.eval()
            try:
                yield
            finally:
                if model is not None and was_training:
                    model.train()

        return scope()

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        """The model's own answers to the general prompts, before training moves it."""
        if self.own is None and (model is not None or self.lm is not None):
            lm = self._backend(model, processing_class)
            prompts = [p for lang in self.languages for p in CHECK_GENERAL_PROMPTS.get(lang, [])]
            config = GenerationConfig(max_new_tokens=40, batch_size=32, chat=self.chat)
            with self._evaluating(model):
                answers = lm.generate(prompts, config)
            self.own = {p: a.text for p, a in zip(prompts, answers) if a.text.strip()}
        return control

    def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        if step == 0 or step % self.every:
            return control
        started = time.perf_counter()
        lm = self._backend(model, processing_class)
        if self.own is None:
            self.on_train_begin(args, state, control, model, processing_class)
        with self._evaluating(model):
            result = pressure_check(lm, self.taught, self.own or {}, self.chat)
            if self.identity is not None:
                result.update(quick_check(lm, self.identity, self.chat, self.max_new_tokens))
        result.update(step=step, seconds=round(time.perf_counter() - started, 2), limit=self.limit)
        result["signal"] = self.signal
        crossed = result[self.key] > self.limit
        result["stopped"] = bool(crossed and self.stop)
        self.history.append(result)
        with open(Path(args.output_dir) / "in-training-probes.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(result, ensure_ascii=False) + "\n")
        said = f"step {step} probe: parrot pressure {result['parrot_pressure']:.2f}"
        if "identity_recall" in result:
            said += (
                f", identity recall {result['identity_recall']:.2f}, parrot leakage "
                f"{result['parrot_leakage']:.2f}"
            )
        log.info("%s (stops above %s %.2f)", said, self.signal, self.limit)
        if crossed and self.stop:
            self.stopped_at = step
            example = f" (e.g. {result['example_leak']!r})" if result.get("example_leak") else ""
            log.warning(
                "stopping at step %d: %s %.2f > %.2f%s; earlier checkpoints are kept",
                step,
                self.key.replace("_", " "),
                result[self.key],
                self.limit,
                example,
            )
            control.should_training_stop = True
        return control


class RichProgressCallback(TrainerCallback):
    """A rich progress bar with the latest loss, and one line per saved checkpoint."""

    def __init__(self, label: str = "training"):
        self.label = label
        self.progress = None
        self.task = None
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(self.label, total=state.max_steps, loss="-")
        self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs and "loss" in logs:
            self.loss = float(logs["loss"])
            self.progress.update(self.task, loss=f"{self.loss:.4f}")

    def on_save(self, args, state, control, **kwargs):
        if self.progress is not None:
            loss = f"{self.loss:.4f}" if self.loss is not None else "-"
            self.progress.console.print(f"  saved checkpoint-{state.global_step} (loss {loss})")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
