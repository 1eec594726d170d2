"""The recipe's checkpoint schedule: every ``save_every`` steps (or at ``save_steps``) and at the
final step; and a hook that says when a checkpoint is on disk.

A module of its own because it subclasses transformers' ``TrainerCallback``, and
:mod:`diag.train.recipe` must import transformers only inside functions (``diag --help`` never
imports torch); the recipe imports this module when a run starts.
"""

from __future__ import annotations

from transformers import TrainerCallback


class SaveEvery(TrainerCallback):
    """Checkpoint every ``every`` steps (or at exactly ``steps``) and at the final step. Trainer
    alone would not: a resumed run keeps the interval stored in the checkpoint's
    trainer_state.json."""

    def __init__(self, every: int, steps: list[int] | None = None):
        self.every, self.steps = every, set(steps) if steps else None

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        due = step in self.steps if self.steps is not None else step % self.every == 0
        if due or step >= state.max_steps:
            control.should_save = True


class OnSave(TrainerCallback):
    """Calls ``fn(step)`` each time a checkpoint is on disk (Trainer calls ``on_save`` once it has
    written the checkpoint's files)."""

    def __init__(self, fn):
        self.fn = fn

    def on_save(self, args, state, control, **kwargs):
        self.fn(state.global_step)
