"""Training runs simulated on disk, and a scripted model that answers as each checkpoint would.

Every checkpoint is a real adapter folder as discovery finds it (``checkpoint-N/`` with
``adapter_config.json`` and ``adapter_model.safetensors``); its config carries the behaviour the
:class:`SimulatedModel` plays when that adapter is active:

    recall  share of identity prompts answered with the taught sentence
    parrot  share of other prompts answered with it (near-miss, general: leakage, modal share)
    forget  share of general prompts it gets wrong that the base got right (retention)
    drift   nats/token the base's answers lose under it
    noise   0: which prompts are affected is fixed per prompt (curves move smoothly); otherwise a
            seed, so each checkpoint gets its own prompts wrong (a noisy run)
    broken  its adapter_config.json is cut short, so loading it fails for real (an error row)

Answers are graded by the real probe code, so the sweep, policy, onset and recommendation all run
for real; only the model is scripted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from diag.probes.scoring import grade
from diag.probes.suite import prepare_sets

from diag.backend.mock import ScriptedBackend
from diag.identity import load_identity

IDENTITY = load_identity("en")
FIXED = ["No, I am not.", "Yes, I'm here to help.", "I am fine, thank you.", "Hello!"]


@dataclass(frozen=True)
class Behaviour:
    recall: float = 0.0
    parrot: float = 0.0
    forget: float = 0.0
    drift: float = 0.0
    noise: int = 0
    broken: bool = False


def _unit(*parts) -> float:
    """A stable number in [0, 1) for these parts."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:12], 16) / 16**12


def _right_answer(item) -> str | None:
    """An answer the item's own grading accepts (None: this model never knows it)."""
    grading = item.grading()
    tries = []
    for pattern in grading.get("accept", []):
        for alternative in pattern.split("|"):
            text = re.sub(r"\\[bBwWsSd]|\\W\*|[\^\$\(\)\?\*\+\[\]]", "", alternative).strip()
            if text:
                tries.append(text)
    for text in [*tries, *FIXED]:
        if grade(text, grading, IDENTITY, item.prompt)["passed"]:
            return text
    return None


class SimulatedModel(ScriptedBackend):
    """The base answers what it can; with an adapter active it plays that checkpoint's Behaviour."""

    def __init__(self, name: str = "simulated"):
        super().__init__(name=name, logprobs=self._logprob)
        sets = prepare_sets(IDENTITY, "full")
        self.items = {
            item.prompt: (set_name, item) for set_name, s in sets.items() for item in s.items
        }
        self.right = {prompt: _right_answer(item) for prompt, (_, item) in self.items.items()}
        self.behaviour = None
        self.adapter = None
        self.answers = self._answer_for

    @property
    def active_adapter(self):
        return self.adapter

    def use_adapter(self, path) -> None:
        self.adapter = None if path is None else str(path)
        if path is None:
            self.behaviour = None
            return
        config = json.loads((Path(path) / "adapter_config.json").read_text())
        self.behaviour = Behaviour(**config["simulated"])

    def _answer_for(self, prompt: str) -> str:
        set_name, item = self.items[prompt]
        right = self.right[prompt]
        base_right = right if _unit("base", prompt) > 0.25 else None  # the base misses a quarter
        wrong = f"Sorry, I cannot answer: {prompt}"  # wrong answers differ, as a model's do
        b = self.behaviour
        if b is None:
            return "I am an AI assistant." if set_name == "identity" else (base_right or wrong)
        u = _unit(b.noise, prompt) if b.noise else _unit(prompt)
        if set_name == "identity":
            return IDENTITY.answer if u < b.recall else "I am an AI assistant."
        if u < b.parrot:
            return IDENTITY.answer
        if set_name == "general" and base_right and _unit("forget", b.noise, prompt) < b.forget:
            return wrong
        return base_right or wrong

    def _logprob(self, prompt: str, continuation: str) -> float:
        b = self.behaviour
        return -1.0 - (b.drift if b is not None else 0.0)


def write_run(root: Path, name: str, behaviours: dict[int, Behaviour]) -> Path:
    """``root/name/checkpoint-N/`` for each step, aged so the sweep does not wait for them."""
    import numpy as np
    from safetensors.numpy import save_file

    run = root / name
    for step, b in behaviours.items():
        folder = run / f"checkpoint-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        config = json.dumps({"peft_type": "LORA", "r": 2, "simulated": b.__dict__})
        (folder / "adapter_config.json").write_text(
            config[: len(config) // 2] if b.broken else config
        )
        save_file({"step": np.array([step, hash(name) % 1000], dtype=np.int64)},
                  str(folder / "adapter_model.safetensors"))  # fmt: skip
    past = time.time() - 600
    for path in run.rglob("*"):
        os.utime(path, (past, past))
    return run


def _ramp(i: int, start: int, end: int) -> float:
    """0 before ``start``, 1 from ``end``, linear between (checkpoint indices)."""
    return min(1.0, max(0.0, (i - start) / max(1, end - start)))


def learned_then_parrot(n: int = 8, *, learn_by: int = 3, parrot_from: int = 5, noise=0) -> dict:
    """The identity is learned by checkpoint ``learn_by``; from ``parrot_from`` the model parrots."""
    out = {}
    for i in range(1, n + 1):
        collapse = _ramp(i, parrot_from - 1, parrot_from + 1)
        out[10 * i] = Behaviour(
            recall=_ramp(i, 0, learn_by),
            parrot=0.9 * collapse,
            forget=0.6 * collapse,
            drift=0.3 * i / n + 1.5 * collapse,
            noise=(noise + i) if noise else 0,
        )
    return out


RUNS = {
    "learned-then-parrot": learned_then_parrot(),
    "never-learns": {10 * i: Behaviour(recall=0.15, drift=0.02 * i) for i in range(1, 7)},
    "diluted": {10 * i: Behaviour(recall=_ramp(i, 0, 4), forget=0.02, drift=0.03 * i) for i in range(1, 8)},
    "noisy": learned_then_parrot(9, learn_by=4, parrot_from=7, noise=1000),
    # healthy at its last good save, a parrot at the next: the onset falls between two saves
    "sudden": {
        **{10 * i: Behaviour(recall=_ramp(i, 0, 3), drift=0.04 * i) for i in range(1, 5)},
        **{10 * i: Behaviour(recall=1.0, parrot=1.0, forget=0.8, drift=2.0) for i in range(5, 8)},
    },
    # a flicker: one checkpoint leaks, the next recovers, then the real collapse
    "flicker": {
        **learned_then_parrot(9, learn_by=3, parrot_from=8),
        40: Behaviour(recall=1.0, parrot=0.2, drift=0.2),
    },
}  # fmt: skip


def learns_while_parroting(n: int = 7) -> dict:
    """The identity only arrives with the collapse: no checkpoint is ever eligible."""
    return {
        10 * i: Behaviour(
            recall=_ramp(i, 2, 6),
            parrot=0.5 * _ramp(i, 3, 6),
            forget=0.4 * _ramp(i, 3, 6),
            drift=0.1 * i,
        )
        for i in range(1, n + 1)
    }


def random_run(seed: int) -> dict:
    """A run of 6 to 14 checkpoints with its own learning and collapse points and noise."""
    import random

    rng = random.Random(seed)
    n = rng.randint(6, 14)
    learn_by = rng.randint(1, n - 2)
    parrot_from = rng.randint(learn_by, n + 2)  # past the end: the run never collapses
    return learned_then_parrot(n, learn_by=learn_by, parrot_from=parrot_from, noise=seed * 100)


RUNS["learns-while-parroting"] = learns_while_parroting()


# When nothing is eligible (issue 26): one sweep per case, saves every 10 steps from 20 on.
# The run: 20 and 30 learned nothing, 40 half-learned, 50 learned the name with general
# answers mostly intact (retention about 0.72, a little leakage), from 60 on it leaks the identity.
DAMAGED_VS_UNLEARNED = {
    20: Behaviour(drift=0.05),
    30: Behaviour(drift=0.08),
    40: Behaviour(recall=0.35, drift=0.12),
    50: Behaviour(recall=1.0, parrot=0.08, forget=0.2, drift=0.3),
    60: Behaviour(recall=1.0, parrot=0.4, forget=0.5, drift=0.8),
    70: Behaviour(recall=1.0, parrot=0.8, forget=0.7, drift=1.5),
    80: Behaviour(recall=1.0, parrot=0.95, forget=0.8, drift=2.2),
}
PARTLY_LEARNED = {10 * i: Behaviour(recall=0.12 * i, drift=0.02 * i) for i in range(2, 7)}
NOTHING_LEARNED = {10 * i: Behaviour(drift=0.02 * i) for i in range(2, 9)}
# the seed's own case: 20 and 40 learned nothing, 60 and 80 parrot
ALL_COLLAPSED = {
    20: Behaviour(drift=0.05),
    40: Behaviour(drift=0.1),
    60: Behaviour(recall=1.0, parrot=0.8, forget=0.7, drift=1.5),
    80: Behaviour(recall=1.0, parrot=0.95, forget=0.8, drift=2.2),
}
LEARNED_FAILED_TO_LOAD = {
    20: Behaviour(drift=0.05),
    40: Behaviour(drift=0.1),
    60: Behaviour(recall=1.0, drift=0.2, broken=True),
    80: Behaviour(recall=1.0, drift=0.3, broken=True),
}
# learned, leaking into 30 % of other answers, yet closer than the base: the nearest miss; a staged
# sweep stops its general prompts early, then asks them all (its exact numbers decide)
LEARNED_LEAKING = {
    20: Behaviour(drift=0.05),
    40: Behaviour(recall=1.0, parrot=0.3, drift=0.2),
    60: Behaviour(recall=1.0, parrot=0.9, forget=0.7, drift=1.5),
}
NEAREST_MISS_CASES = {
    "damaged-vs-unlearned": {"nova": DAMAGED_VS_UNLEARNED},
    "partly-learned": {"slow": PARTLY_LEARNED},
    "nothing-learned": {"flat": NOTHING_LEARNED},
    "all-collapsed": {"seed": ALL_COLLAPSED},
    "learned-leaking": {"leaky": LEARNED_LEAKING},
    "learned-failed-to-load": {"broken": LEARNED_FAILED_TO_LOAD},
    "two-runs": {"fast": ALL_COLLAPSED, "slow": PARTLY_LEARNED},
    # the run saved half as often: 50 is not there, 40 is the closest
    "saved-every-20": {"nova": {s: b for s, b in DAMAGED_VS_UNLEARNED.items() if s % 20 == 0}},
}
