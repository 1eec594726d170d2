"""Find every run and checkpoint under a folder, by content, at any depth (no torch here).

Recognised (``Checkpoint.format``):

- ``peft-adapter``: ``adapter_config.json`` + ``adapter_model.safetensors|.bin|.pt`` (HF Trainer /
  TRL / LLaMA-Factory / axolotl ``checkpoint-N/``, torchtune ``epoch_N/``, or a plain adapter folder);
- ``full-model``: ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin`` (sharded or not);
- ``xtuner-pth``: an XTuner ``iter_N.pth`` file (weights under ``state_dict``);
- ``xtuner-deepspeed``: an XTuner ``iter_N.pth/`` folder holding ``mp_rank_00_model_states.pt``;
- ``deepspeed-zero``: ``global_stepN/`` next to a ``latest`` file (consolidated by DeepSpeed).

A checkpoint still being written (a file changed in the last ``settle_seconds``, an adapter config
without its weights, a shard index with missing shards, a ``tmp-checkpoint-*`` folder) is skipped
with a note and picked up by the next sweep.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from diag.errors import DiagError
from diag.types import ChatFormat

log = logging.getLogger("diag")

MANIFEST = "diag-run.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
FULL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
STEP_PATTERNS = [
    re.compile(r"^checkpoint-(\d+)$"),
    re.compile(r"^iter_(\d+)\.pth$"),
    re.compile(r"^global_step(\d+)$"),
    re.compile(r"^(?:step|epoch)_(\d+)$"),
]
SKIP_DIRS = {".git", "__pycache__", "node_modules", ".venv"}


@dataclass
class Checkpoint:
    """One set of weights to probe.

    run: run name (the run folder relative to the sweep root). step: training step (0 = base).
    files: the weight files whose content makes the fingerprint.
    base_hint: base model named by the checkpoint itself (adapter_config.json) or its run.
    chat: the prompt format it was trained with, when the run says so (None: tokenizer template).
    lora: LoRA settings from an XTuner config (alpha, dropout); r/targets come from the weights.
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


@dataclass
class RunInfo:
    """A training run: where it is, what it says about itself, and its loss history."""

    name: str
    path: Path
    base: str | None = None
    chat: ChatFormat | None = None
    manifest: dict | None = None
    xtuner_config: Path | None = None
    lora: dict = field(default_factory=dict)
    train_loss: list[list[float]] = field(default_factory=list)  # [[step, loss], ...]
    eval_loss: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "base": self.base,
            "chat": self.chat.to_dict() if self.chat else None,
            "xtuner_config": str(self.xtuner_config) if self.xtuner_config else None,
            "train_loss": self.train_loss,
            "eval_loss": self.eval_loss,
        }


@dataclass
class Discovery:
    runs: dict[str, RunInfo]
    checkpoints: list[Checkpoint]
    skipped: list[tuple[str, str]]  # (path, why)


def step_from_name(name: str) -> int | None:
    for pattern in STEP_PATTERNS:
        match = pattern.match(name)
        if match:
            return int(match.group(1))
    return None


def _newest_mtime(files: list[Path]) -> float:
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


def _shards(folder: Path) -> tuple[list[Path], str | None]:
    """Weight files of a full model folder, or a reason it is incomplete."""
    for name in FULL_WEIGHTS:
        if (folder / name).is_file():
            return [folder / name], None
    for index in SHARD_INDEXES:
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (OSError, ValueError, KeyError):
                return [], f"{index} is unreadable (still being written?)"
            files = sorted({folder / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                return [], f"shard {missing[0]} listed in {index} is missing"
            return [folder / index, *files], None
    return [], None


def _classify_dir(folder: Path) -> tuple[str | None, list[Path], str | None]:
    """(format, weight files, incomplete reason) for a folder; format None if not a checkpoint."""
    if folder.name.startswith("tmp-checkpoint"):
        return None, [], "temporary folder of a checkpoint being saved"
    if (folder / "adapter_config.json").is_file():
        weights = [folder / n for n in ADAPTER_WEIGHTS if (folder / n).is_file()]
        if not weights:
            return "peft-adapter", [], "adapter_config.json without adapter weights yet"
        return "peft-adapter", [folder / "adapter_config.json", weights[0]], None
    if (folder / "mp_rank_00_model_states.pt").is_file() and folder.name.endswith(".pth"):
        return "xtuner-deepspeed", [folder / "mp_rank_00_model_states.pt"], None
    if (folder / "config.json").is_file():
        files, reason = _shards(folder)
        if files or reason:
            return "full-model", files, reason
    return None, [], None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _losses(state: dict) -> tuple[list[list[float]], list[list[float]]]:
    train, evals = [], []
    for entry in state.get("log_history", []):
        step = entry.get("step")
        if step is None:
            continue
        if isinstance(entry.get("loss"), (int, float)):
            train.append([step, float(entry["loss"])])
        if isinstance(entry.get("eval_loss"), (int, float)):
            evals.append([step, float(entry["eval_loss"])])
    return train, evals


def _xtuner_losses(work_dir: Path) -> list[list[float]]:
    """mmengine's ``<timestamp>/vis_data/scalars.json``: one JSON object per logged iteration."""
    points: dict[int, float] = {}
    for scalars in sorted(work_dir.glob("*/vis_data/scalars.json")):
        try:
            lines = scalars.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            step = entry.get("iter", entry.get("step"))
            if isinstance(step, int) and isinstance(entry.get("loss"), (int, float)):
                points[step] = float(entry["loss"])
    return [[s, points[s]] for s in sorted(points)]


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
    excluded = {p.resolve() for p in exclude}
    found: list[tuple[Path, str, list[Path]]] = []  # (checkpoint path, format, files)
    skipped: list[tuple[str, str]] = []
    if root.is_file():
        if root.suffix == ".pth":
            found.append((root, "xtuner-pth", [root]))
        else:
            raise DiagError(f"'{root}' is a file, not a runs folder", fix="pass a folder")
    for dirpath, dirnames, filenames in os.walk(root) if root.is_dir() else []:
        folder = Path(dirpath)
        if folder.resolve() in excluded:
            dirnames[:] = []
            continue
        fmt, files, reason = _classify_dir(folder)
        if fmt or reason:
            dirnames[:] = []  # a checkpoint's own sub-folders are not checkpoints
            if reason:
                skipped.append((str(folder), reason))
            else:
                found.append((folder, fmt, files))
            continue
        if "latest" in filenames:
            for name in sorted(dirnames):
                if name.startswith("global_step"):
                    ds_files = sorted(
                        p for p in (folder / name).iterdir() if p.suffix in (".pt", ".pth")
                    )
                    found.append((folder / name, "deepspeed-zero", ds_files))
        for name in sorted(filenames):
            if name.endswith(".pth") and step_from_name(name) is not None:
                found.append((folder / name, "xtuner-pth", [folder / name]))
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_DIRS and not d.startswith(".") and not d.startswith("global_step")
        )
    checkpoints: list[Checkpoint] = []
    runs: dict[str, RunInfo] = {}
    for path, fmt, files in found:
        newest = _newest_mtime(files)
        if settle_seconds and now - newest < settle_seconds:
            skipped.append((str(path), f"modified {now - newest:.1f} s ago (still being written?)"))
            continue
        ckpt = _make_checkpoint(root, path, fmt, files, runs)
        checkpoints.append(ckpt)
    _number_unknown_steps(checkpoints)
    checkpoints.sort(key=lambda c: (c.run, c.step, str(c.path)))
    for path, why in skipped:
        log.info("skipping %s: %s", path, why)
    return Discovery(runs, checkpoints, skipped)


def _run_dir_for(root: Path, path: Path, fmt: str) -> Path:
    """The run a checkpoint belongs to: the folder holding ``checkpoint-N``/``iter_N.pth``/..."""
    if path == root:
        return root
    if fmt == "deepspeed-zero":
        # HF Trainer + DeepSpeed: checkpoint-N/global_stepN; plain DeepSpeed: run/global_stepN
        holder = path.parent
        return holder.parent if step_from_name(holder.name) is not None else holder
    if step_from_name(path.name) is not None:
        return path.parent
    return path.parent if path.parent != root else path


def _run_name(root: Path, run_dir: Path) -> str:
    if run_dir == root:
        return root.resolve().name or str(root)
    return run_dir.relative_to(root).as_posix()


def _make_checkpoint(root: Path, path: Path, fmt: str, files: list[Path], runs) -> Checkpoint:
    run_dir = _run_dir_for(root, path, fmt)
    name = _run_name(root, run_dir)
    run = runs.get(name) or _load_run(name, run_dir)
    runs[name] = run
    step = step_from_name(path.name)
    if fmt == "deepspeed-zero" and step_from_name(path.parent.name) is not None:
        step = step_from_name(path.parent.name)
    state = _read_json(path / "trainer_state.json") if path.is_dir() else None
    if state and isinstance(state.get("global_step"), int):
        step = state["global_step"]
        train, evals = _losses(state)
        if len(train) + len(evals) > len(run.train_loss) + len(run.eval_loss):
            run.train_loss, run.eval_loss = train, evals  # the latest state holds the most
    base_hint = run.base
    notes: list[str] = []
    if fmt == "peft-adapter":
        cfg = _read_json(path / "adapter_config.json") or {}
        base_hint = cfg.get("base_model_name_or_path") or base_hint
    ckpt = Checkpoint(
        run=name,
        step=step if step is not None else -1,
        path=path,
        format=fmt,
        files=tuple(files),
        run_dir=run_dir,
        base_hint=base_hint,
        chat=run.chat,
        lora=dict(run.lora),
        step_known=step is not None,
        notes=notes,
    )
    return ckpt


def _load_run(name: str, run_dir: Path) -> RunInfo:
    run = RunInfo(name=name, path=run_dir)
    manifest = _read_json(run_dir / MANIFEST) if run_dir.is_dir() else None
    if manifest:
        run.manifest = manifest
        run.base = manifest.get("base")
        if manifest.get("chat") is not None:
            run.chat = ChatFormat.from_dict(manifest["chat"])
    state = _read_json(run_dir / "trainer_state.json") if run_dir.is_dir() else None
    if state:
        run.train_loss, run.eval_loss = _losses(state)
    if run_dir.is_dir():
        from diag.diagnostics.xtuner import find_config, parse_config

        config_path = find_config(run_dir)
        if config_path is not None:
            parsed = parse_config(config_path)
            run.xtuner_config = config_path
            run.lora = parsed.lora
            run.chat = run.chat or parsed.chat
            run.base = run.base or parsed.base
            for problem in parsed.problems:
                log.warning("%s: %s", config_path, problem)
        if not run.train_loss:
            run.train_loss = _xtuner_losses(run_dir)
    return run


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
