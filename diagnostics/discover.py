"""Find every run and checkpoint under a folder, by content, at any depth (no torch here).

Recognised (``Checkpoint.format``; the layouts are in :mod:`diag.formats.layouts`, the table
of trainers in ``docs/formats.md``):

- ``peft-adapter``: ``adapter_config.json`` + ``adapter_model.safetensors|.bin|.pt`` (HF Trainer,
  TRL, LLaMA-Factory, axolotl, ms-swift, unsloth ``checkpoint-N/``, torchtune ``epoch_N/``, a final
  adapter saved into the output folder itself, or a plain adapter folder);
- ``full-model``: ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin`` (sharded or not);
- ``xtuner-pth``: an XTuner ``iter_N.pth`` file (weights under ``state_dict``);
- ``xtuner-deepspeed``: an XTuner ``iter_N.pth/`` folder written by DeepSpeed (ZeRO-1/2/3);
- ``deepspeed-zero``: a DeepSpeed engine checkpoint folder (``global_stepN/``; ``latest`` is not
  needed), read with DeepSpeed's own ``zero_to_fp32``.

Checkpoints are found under folders that are themselves checkpoints (LLaMA-Factory and axolotl
save the final adapter beside their ``checkpoint-N/`` folders): that final adapter is one more
checkpoint of the run, labelled ``final``, merged into the ``checkpoint-N`` row whose weights are
identical. A folder that looks like a checkpoint but cannot be swept is a :class:`Skip` with the
reason and the fix -- never dropped silently. A checkpoint still being written (a file changed in
the last ``settle_seconds``) is skipped and picked up by the next sweep.
"""

from __future__ import annotations

import filecmp
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from diag.errors import DiagError
from diag.formats.layouts import (
    Layout,
    Skip,
    classify,
    misnamed_entries,
    odd_entries,
    step_name,
)
from diag.formats.trainers import MANIFEST, RunFacts, losses, read_json, read_run
from diag.types import ChatFormat

log = logging.getLogger("diag")

__all__ = ["MANIFEST", "Checkpoint", "Discovery", "RunInfo", "Skip", "discover"]

SKIP_DIRS = {".git", "__pycache__", "node_modules", ".venv"}


@dataclass
class Checkpoint:
    """One set of weights to probe.

    run: run name (the run folder relative to the sweep root). step: training step (0 = base).
    files: the weight files whose content makes the fingerprint.
    base_hint: base model named by the checkpoint itself (adapter_config.json) or its run.
    chat: the prompt format it was trained with, when the run says so (None: tokenizer template).
    lora: LoRA settings from an XTuner config (alpha, dropout); r/targets come from the weights.
    label: how its trainer names it when the step alone does not ("final", "epoch 2").
    aliases: other paths holding the same weights (a final adapter, a ``last-checkpoint`` link).
    """

    run: str
    step: int
    path: Path
    format: str
    files: tuple[Path, ...]
    run_dir: Path
    base_hint: str | None = None
    chat: ChatFormat | None = None
    lora: dict = field(default_factory=dict)
    step_known: bool = True
    notes: list[str] = field(default_factory=list)
    label: str | None = None
    aliases: list[Path] = field(default_factory=list)
    losses_known: bool = True  # False when its own trainer_state.json is unreadable

    def is_at(self, path: Path) -> bool:
        """Whether ``path`` (resolved) is this checkpoint's folder or one of its aliases."""
        return any(p.resolve() == path for p in (self.path, *self.aliases))


@dataclass
class RunInfo(RunFacts):
    """A training run: where it is, what its trainer recorded, and its loss history."""

    name: str = ""
    path: Path = Path()
    broken_states: set[Path] = field(default_factory=set)  # checkpoints whose state is unreadable

    def training(self) -> dict | None:
        """What a diag run was trained with, for next-step advice (None for other trainers)."""
        config = (self.manifest or {}).get("config")
        if not isinstance(config, dict):
            return None
        mix = config.get("mix") if isinstance(config.get("mix"), dict) else {}
        keys = ("save_every", "save_steps", "max_steps", "lr", "method")
        return {**{k: config.get(k) for k in keys}, "general_ratio": mix.get("general_ratio")}

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "trainer": self.trainer,
            "base": self.base,
            "base_source": self.base_source,
            "chat": self.chat.to_dict() if self.chat else None,
            "xtuner_config": str(self.xtuner_config) if self.xtuner_config else None,
            "steps_per_epoch": self.steps_per_epoch,
            "training": self.training(),
            "notes": list(self.notes),
            "train_loss": self.train_loss,
            "eval_loss": self.eval_loss,
        }


@dataclass
class Discovery:
    runs: dict[str, RunInfo]
    checkpoints: list[Checkpoint]
    skipped: list[Skip]

    def describe_nothing_found(self, root: Path) -> str:
        """What was seen under ``root`` when no checkpoint was: the skips, grouped by reason."""
        if not self.skipped:
            return f"no checkpoints found under '{root}'"
        counts = Counter(s.reason for s in self.skipped)
        seen = "; ".join(
            f"{n} folder{'s' if n > 1 else ''}: {reason}" for reason, n in counts.most_common(3)
        )
        return f"no checkpoints found under '{root}' ({seen})"


@dataclass
class _Found:
    path: Path
    layout: Layout


def discover(
    root: str | os.PathLike,
    *,
    settle_seconds: float = 5.0,
    exclude: tuple[Path, ...] = (),
    now: float | None = None,
) -> Discovery:
    """Every checkpoint under ``root``, grouped into runs, ordered by (run, step).

    >>> found = discover("runs/")                                    # doctest: +SKIP
    >>> [(c.run, c.step, c.format) for c in found.checkpoints]  # doctest: +SKIP
    [('lora-a', 100, 'peft-adapter'), ('lora-a', 200, 'peft-adapter'), ...]
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DiagError(f"runs folder '{root}' does not exist", fix="pass the folder holding runs")
    now = time.time() if now is None else now
    if root.is_file():
        if root.suffix == ".pth" and step_name(root.name) is not None:
            found, skipped, links = [_Found(root, Layout("xtuner-pth", (root,)))], [], {}
        else:
            raise DiagError(f"'{root}' is a file, not a runs folder", fix="pass a folder")
    else:
        found, skipped, links = _walk(root, {p.resolve() for p in exclude})
    settled = []
    for item in found:
        newest = max((f.stat().st_mtime for f in item.layout.files if f.exists()), default=0.0)
        if settle_seconds and now - newest < settle_seconds:
            skipped.append(
                Skip(
                    str(item.path),
                    f"modified {now - newest:.1f} s ago (still being written?)",
                    "sweep again once it is saved",
                )
            )
        else:
            settled.append(item)
    runs: dict[str, RunInfo] = {}
    # folders holding step-named checkpoints (an output folder, or a final model saved in one)
    holders = {f.path.parent for f in settled if step_name(f.path.name) is not None}
    checkpoints = [_make_checkpoint(root, item, runs, holders) for item in settled]
    checkpoints = _merge_copies(checkpoints, skipped)
    checkpoints = _one_per_step(checkpoints, skipped)
    _add_link_aliases(checkpoints, links)
    _number_unknown_steps(checkpoints)
    checkpoints.sort(key=lambda c: (c.run, c.step, str(c.path)))
    for skip in skipped:
        log.info("skipping %s: %s", skip.path, skip.reason)
    return Discovery(runs, checkpoints, skipped)


def _walk(root: Path, excluded: set[Path]):
    """(checkpoints, skips, {link path: resolved target}) under ``root``; symlinks followed once.

    A link to a folder inside the tree (ms-swift's ``last-checkpoint``) is an alias, not a second
    checkpoint; a link to a folder elsewhere is walked like a real folder; loops end at the first
    folder seen twice.
    """
    found: list[_Found] = []
    pending_skips: list[Skip] = []
    links: dict[Path, Path] = {}
    visited: set[Path] = set()
    real_root = root.resolve()
    stack = [(root, False)]  # (folder, inside a checkpoint folder)
    while stack:
        folder, in_checkpoint = stack.pop()
        real = folder.resolve()
        if real in visited or real in excluded:
            continue
        visited.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            pending_skips.append(Skip(str(folder), f"cannot be read: {exc.strerror}", ""))
            continue
        names = [e.name for e in entries if _is_file(e)]
        odd = odd_entries(folder, entries)  # FIFOs, devices, dangling links: never opened
        pending_skips += misnamed_entries(folder, entries, odd)
        layout, skip = (None, None)
        if not (in_checkpoint and folder.name.startswith("global_step")):
            # inside a checkpoint, global_stepN/ is the DeepSpeed engine state of that checkpoint
            layout, skip = classify(folder, names, odd)
        if layout is not None:
            found.append(_Found(folder, layout))
        elif skip is not None:
            pending_skips.append(skip)
        for name in names:  # XTuner without DeepSpeed: iter_N.pth files in the work dir
            if name.endswith(".pth") and step_name(name) is not None:
                found.append(_Found(folder / name, Layout("xtuner-pth", (folder / name,))))
        for entry in reversed(entries):
            if entry.name in SKIP_DIRS or entry.name.startswith(".") or not _is_dir(entry):
                continue
            child = folder / entry.name
            if entry.is_symlink():
                target = child.resolve()
                if target.is_relative_to(real_root) or target in visited:
                    links[child] = target
                    continue
            stack.append((child, in_checkpoint or layout is not None))
    # a folder that holds no weights itself but a checkpoint deeper down (HF Trainer + DeepSpeed:
    # checkpoint-N/global_stepN/) is not a skip
    holders = {f.path for f in found}
    skips = [
        s
        for s in pending_skips
        if not (s.holds_nothing and any(Path(s.path) in h.parents for h in holders))
    ]
    return found, skips, links


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _run_dir_for(root: Path, path: Path, fmt: str, holders: set[Path]) -> Path:
    """The run a checkpoint belongs to: the folder holding ``checkpoint-N``/``iter_N.pth``/..."""
    if path in holders:
        return path  # a final adapter saved into the output folder beside its checkpoint-N/
    if path == root:
        return root
    if fmt == "deepspeed-zero":
        # HF Trainer + DeepSpeed without weights of its own: checkpoint-N/global_stepN
        holder = path.parent
        return holder.parent if step_name(holder.name) is not None else holder
    if step_name(path.name) is not None:
        return path.parent
    if path.parent in holders:
        # e.g. XTuner's pth_to_hf output saved beside iter_N.pth: its own run, not step 1 of that one
        return path
    return path.parent if path.parent != root else path


def _run_name(root: Path, run_dir: Path) -> str:
    if run_dir == root:
        return root.resolve().name or str(root)
    return run_dir.relative_to(root).as_posix()


def _step_of(path: Path, fmt: str, run: RunInfo, notes: list[str]) -> tuple[int | None, str | None]:
    """(step, label) from the folder name, its trainer_state.json or the run's epoch length."""
    named = step_name(path.name)
    if fmt == "deepspeed-zero" and step_name(path.parent.name) is not None:
        named = step_name(path.parent.name)
    state = read_json(path / "trainer_state.json") if path.is_dir() else None
    if (path / "trainer_state.json").is_file() and state is None:
        notes.append("trainer_state.json is unreadable; step from the folder name, no losses")
        run.broken_states.add(path)
    if state is not None:
        train, evals = losses(state)
        if len(train) + len(evals) > len(run.train_loss) + len(run.eval_loss):
            run.train_loss, run.eval_loss = train, evals  # the latest state holds the most
        if isinstance(state.get("global_step"), int) and state["global_step"] > 0:
            return state["global_step"], None
    if named is None:
        return None, None
    kind, number = named
    if kind != "epoch":
        return number, None
    # torchtune's epoch_0/ is saved after the first epoch: never step 0, which is the base
    label = f"epoch {number + 1}"
    if run.steps_per_epoch:
        return (number + 1) * run.steps_per_epoch, label
    notes.append(f"steps per epoch unknown: numbered by epoch ({label})")
    return number + 1, label


def _make_checkpoint(root: Path, item: _Found, runs, holders: set[Path]) -> Checkpoint:
    path, fmt = item.path, item.layout.format
    run_dir = _run_dir_for(root, path, fmt, holders)
    name = _run_name(root, run_dir)
    if name not in runs:
        runs[name] = RunInfo(**vars(read_run(run_dir)), name=name, path=run_dir)
    run = runs[name]
    notes: list[str] = []
    step, label = _step_of(path, fmt, run, notes)
    if path in holders:
        label = "final"
    base_hint = run.base
    if fmt == "peft-adapter":
        cfg = read_json(path / "adapter_config.json")
        if cfg is None:
            notes.append("adapter_config.json is not valid JSON")
        base_hint = (cfg or {}).get("base_model_name_or_path") or base_hint
    return Checkpoint(
        run=name,
        step=step if step is not None else -1,
        path=path,
        format=fmt,
        files=item.layout.files,
        run_dir=run_dir,
        base_hint=base_hint,
        chat=run.chat,
        lora=dict(run.lora),
        step_known=step is not None,
        notes=notes,
        label=label,
        losses_known=path not in run.broken_states,
    )


def _same_weights(a: Checkpoint, b: Checkpoint) -> bool:
    """Byte-identical weight files (configs may differ in paths and are not compared)."""
    wa = [f for f in a.files if f.suffix != ".json"]
    wb = [f for f in b.files if f.suffix != ".json"]
    if len(wa) != len(wb) or not wa:
        return False
    try:
        return all(
            fa.stat().st_size == fb.stat().st_size and filecmp.cmp(fa, fb, shallow=False)
            for fa, fb in zip(wa, wb)
        )
    except OSError:
        return False


def _merge_copies(checkpoints: list[Checkpoint], skipped: list[Skip]) -> list[Checkpoint]:
    """Copies of a checkpoint's weights become aliases of it, not rows of their own.

    A final adapter saved beside its ``checkpoint-N/`` (LLaMA-Factory, axolotl) merges into the
    checkpoint-N with identical weights; one whose weights match none keeps its own row at its
    trainer_state.json step, and one without a known step, or whose step another checkpoint holds
    with other weights, is a named skip. A folder with no step of its own elsewhere in the tree that
    holds the same weights as a step-named checkpoint (unsloth's ``lora_model/`` beside
    ``outputs/checkpoint-N/``) merges into it too.
    """
    stepped = [c for c in checkpoints if step_name(c.path.name) is not None]
    kept = list(stepped)
    for ckpt in (c for c in checkpoints if step_name(c.path.name) is None):
        final = ckpt.label == "final"
        candidates = [c for c in stepped if c.run == ckpt.run] if final else stepped
        twin = next((c for c in candidates if _same_weights(ckpt, c)), None)
        if twin is not None:
            twin.aliases.append(ckpt.path)
            if final:
                twin.label = "final"
            twin.notes.append(f"the same weights are saved in {ckpt.path}")
            continue
        clash = next((c for c in candidates if c.step == ckpt.step), None) if final else None
        if final and (not ckpt.step_known or clash is not None):
            why = (
                "its step is unknown (no trainer_state.json) and its weights match no checkpoint"
                if clash is None
                else f"it claims step {ckpt.step}, which {clash.path.name} holds with other weights"
            )
            skipped.append(
                Skip(
                    str(ckpt.path),
                    f"final model of run '{ckpt.run}' not swept: {why}",
                    f"sweep it on its own: diag sweep {ckpt.path} --out <another folder>",
                )
            )
            continue
        kept.append(ckpt)
    return kept


def _one_per_step(checkpoints: list[Checkpoint], skipped: list[Skip]) -> list[Checkpoint]:
    """Two folders of one run claiming the same step (a copied folder whose trainer_state.json
    still names the old step): the first by path is swept, the other is a named skip."""
    seen: dict[tuple[str, int], Checkpoint] = {}
    kept = []
    for ckpt in sorted(checkpoints, key=lambda c: str(c.path)):
        key = (ckpt.run, ckpt.step)
        if ckpt.step_known and key in seen:
            skipped.append(
                Skip(
                    str(ckpt.path),
                    f"step {ckpt.step} of run '{ckpt.run}' is also claimed by {seen[key].path}",
                    "fix the trainer_state.json global_step of the copied folder, or sweep it "
                    "on its own",
                )
            )
            continue
        seen.setdefault(key, ckpt)
        kept.append(ckpt)
    return kept


def _add_link_aliases(checkpoints: list[Checkpoint], links: dict[Path, Path]) -> None:
    by_real = {c.path.resolve(): c for c in checkpoints}
    for link, target in sorted(links.items()):
        if target in by_real:
            by_real[target].aliases.append(link)


def _number_unknown_steps(checkpoints: list[Checkpoint]) -> None:
    """Checkpoints without any step (plain folders): 1, 2, ... in name order within their run."""
    by_run: dict[str, list[Checkpoint]] = {}
    for ckpt in checkpoints:
        if not ckpt.step_known:
            by_run.setdefault(ckpt.run, []).append(ckpt)
    for group in by_run.values():
        for i, ckpt in enumerate(sorted(group, key=lambda c: str(c.path)), start=1):
            ckpt.step = i
            ckpt.notes.append("no step in its name or trainer_state.json; numbered by name")
