"""What one folder of a run holds: a checkpoint (and its weight files), a named skip, or nothing.

Pure file-system reads, no torch. Each rule below is a layout some trainer really writes; see
``docs/formats.md`` for the table of trainers and where each layout comes from.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from diag.files import loads_json

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
FULL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# HF Trainer / TRL / LLaMA-Factory / axolotl / ms-swift / unsloth, XTuner, DeepSpeed, torchtune
STEP_PATTERNS = {
    "checkpoint": re.compile(r"^checkpoint-(\d+)$"),
    "iter": re.compile(r"^iter_(\d+)\.pth$"),
    "global_step": re.compile(r"^global_step(\d+)$"),
    "step": re.compile(r"^step_(\d+)$"),
    "epoch": re.compile(r"^epoch_(\d+)$"),
}
# DeepSpeed's per-rank files: ZeRO-1/2 ``mp_rank_00_model_states.pt``; ZeRO-3
# ``zero_pp_rank_R_mp_rank_00_model_states.pt``; optimizer partitions ``*_optim_states.pt``
# (``bf16_`` prefixed under bf16). Under ZeRO-3 the weights live only in the optimizer partitions.
DS_MODEL_STATES = re.compile(r"^(?:zero_pp_rank_\d+_)?mp_rank_\d+_model_states\.pt$")
DS_ZERO3_MODEL_STATES = re.compile(r"^zero_pp_rank_\d+_mp_rank_\d+_model_states\.pt$")
DS_OPTIM_STATES = re.compile(r"^.*zero_pp_rank_\d+_mp_rank_\d+_optim_states\.pt$")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json")
FOLDER_STEPS = ("checkpoint", "global_step", "step", "epoch")  # step names that are folders


def describe_entry(path: Path) -> str | None:
    """What ``path`` is when it is neither a regular file nor a folder (never opened: a FIFO
    would block, ``/dev/zero`` never ends): "a FIFO (named pipe)", "a link to '/x', which does
    not exist", ...; None for a file or a folder."""
    link = f"a link to '{os.readlink(path)}'" if path.is_symlink() else None
    try:
        mode = os.stat(path).st_mode  # follows the link
    except FileNotFoundError:
        return f"{link}, which does not exist" if link else None
    except OSError as exc:
        return f"{link or 'an entry'} that cannot be read ({exc.strerror})"
    kinds = {
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    what = next((name for test, name in kinds.items() if test(mode)), None)
    if what is None:
        return None
    return f"{what} ({link})" if link else what


def odd_entries(folder: Path, entries) -> dict[str, str]:
    """{name: what it is} for the entries of ``folder`` that are neither files nor folders."""
    odd = {}
    for entry in entries:
        if entry.is_symlink() or not (_safe(entry.is_file) or _safe(entry.is_dir)):
            what = describe_entry(folder / entry.name)
            if what is not None:
                odd[entry.name] = what
    return odd


def misnamed_entries(folder: Path, entries, odd: dict[str, str]) -> list[Skip]:
    """Entries named like a checkpoint that cannot be one: ``checkpoint-50`` a file or a link to
    one, ``checkpoint-70`` a dangling link, an ``iter_N.pth`` that is a FIFO."""
    skips = []
    for entry in entries:
        named = step_name(entry.name)
        if named is None:
            continue
        path = folder / entry.name
        if entry.name in odd:
            what = odd[entry.name]
        elif named[0] in FOLDER_STEPS and _safe(entry.is_file):
            target = f" (a link to '{os.readlink(path)}')" if entry.is_symlink() else ""
            what = f"a file{target}, not a checkpoint folder"
        else:
            continue
        skips.append(
            Skip(
                str(path),
                f"named like a checkpoint but is {what}",
                "if it should be a checkpoint, put the folder there; otherwise rename it",
            )
        )
    return skips


def _safe(test) -> bool:
    try:
        return test()
    except OSError:
        return False


def step_name(name: str) -> tuple[str, int] | None:
    """``("checkpoint", 40)`` for ``checkpoint-40``; None for a name that carries no step."""
    for kind, pattern in STEP_PATTERNS.items():
        match = pattern.match(name)
        if match:
            return kind, int(match.group(1))
    return None


@dataclass(frozen=True)
class Skip:
    """A folder that looks like a checkpoint but is not swept: why, and what would fix it."""

    path: str
    reason: str
    fix: str = ""
    # a step-named folder with no weights of its own: not a skip if a checkpoint lies below it
    holds_nothing: bool = field(default=False, compare=False)

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason, "fix": self.fix}


@dataclass(frozen=True)
class Layout:
    """A checkpoint found in a folder: its format and the files whose content is its weights."""

    format: str
    files: tuple[Path, ...]


def shards(folder: Path) -> tuple[list[Path], str | None]:
    """Weight files of a full model folder (index first), or a reason it is incomplete."""
    for name in FULL_WEIGHTS:
        if (folder / name).is_file():
            return [folder / name], None
    for index in SHARD_INDEXES:
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
                names = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return [], f"{index} is unreadable (still being written?)"
            files = [folder / f for f in names]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                return [], f"shard {missing[0]} listed in {index} is missing"
            return [folder / index, *files], None
    return [], None


def deepspeed_files(folder: Path, names: list[str]) -> tuple[Layout | None, Skip | None]:
    """A DeepSpeed engine checkpoint folder (``global_stepN/``, XTuner's ``iter_N.pth/``)."""
    model = sorted(n for n in names if DS_MODEL_STATES.match(n))
    optim = sorted(n for n in names if DS_OPTIM_STATES.match(n))
    fmt = "xtuner-deepspeed" if folder.name.endswith(".pth") else "deepspeed-zero"
    if not model:
        return None, None
    if any(DS_ZERO3_MODEL_STATES.match(n) for n in model) and not optim:
        return None, Skip(
            str(folder),
            "DeepSpeed ZeRO-3 states without their *_optim_states.pt files: under ZeRO-3 the "
            "weights live only in the optimizer partitions",
            "copy the optimizer-state files of every rank too",
        )
    # ZeRO-1/2 XTuner folders are read from the model states alone; everything else goes through
    # DeepSpeed's zero_to_fp32, which reads the fp32 partitions in the optimizer states.
    zero3 = any(DS_ZERO3_MODEL_STATES.match(n) for n in model)
    wanted = model if (fmt == "xtuner-deepspeed" and not zero3) else model + optim
    return Layout(fmt, tuple(folder / n for n in wanted)), None


def classify(
    folder: Path, names: list[str], odd: dict[str, str] | None = None
) -> tuple[Layout | None, Skip | None]:
    """What ``folder`` (holding the file ``names``) is: a checkpoint, a named skip, or neither.

    odd: entries that are neither files nor folders (:func:`odd_entries`), by name.
    """
    present = set(names)
    where = str(folder)
    for name, what in sorted((odd or {}).items()):
        if name.endswith(WEIGHT_SUFFIXES):
            return None, Skip(
                where,
                f"{name} is {what}, not a file diag can read",
                "put the real file from the training run in its place",
            )
    if folder.name.startswith("tmp-checkpoint"):
        return None, Skip(
            where, "temporary folder of a checkpoint being saved", "sweep again later"
        )
    adapter = [n for n in ADAPTER_WEIGHTS if n in present]
    if "adapter_config.json" in present:
        if _nested_too_deeply(folder / "adapter_config.json"):
            return None, Skip(
                where,
                "adapter_config.json is nested too deeply to read (not a peft adapter config)",
                "copy it again from the training run (peft's save_pretrained writes it)",
            )
        if not adapter:
            return None, Skip(
                where,
                "adapter_config.json without adapter weights (adapter_model.safetensors/.bin)",
                "if it is still being saved, sweep again later; otherwise copy the weights in",
            )
        return Layout("peft-adapter", (folder / "adapter_config.json", folder / adapter[0])), None
    ds_layout, ds_skip = deepspeed_files(folder, names)
    if ds_layout or ds_skip:
        return ds_layout, ds_skip
    if "config.json" in present:
        files, reason = shards(folder)
        if files:
            return Layout("full-model", tuple(files)), None
        if reason:
            return None, Skip(where, reason, "if it is still being saved, sweep again later")
    if adapter == ["adapter_model.pt"] and (step_name(folder.name) or ("", 0))[0] == "epoch":
        # torchtune's own adapter file (torchtune key names), without the peft copy beside it
        return Layout("torchtune-adapter", (folder / "adapter_model.pt",)), None
    if adapter:
        return None, Skip(
            where,
            f"{adapter[0]} without adapter_config.json (peft cannot load it)",
            "copy the run's adapter_config.json beside it (peft's save_pretrained writes both)",
        )
    if any(n in present for n in FULL_WEIGHTS) or any(n in present for n in SHARD_INDEXES):
        return None, Skip(
            where,
            "model weights without config.json",
            "copy the base model's config.json beside them",
        )
    named = step_name(folder.name)
    if named is not None:
        return None, _unrecognised(folder, named[0], sorted(present))
    return None, None


def _nested_too_deeply(path: Path) -> bool:
    """A JSON file whose nesting Python's parser cannot follow (200,000 brackets): it would raise
    RecursionError wherever it is read. Other faults are left to the loader to name."""
    try:
        loads_json(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError as exc:
        return "nested too deeply" in str(exc)
    except OSError:
        return False
    return False


def _unrecognised(folder: Path, kind: str, names: list[str]) -> Skip:
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") if names else "nothing"
    if kind == "global_step":
        return Skip(
            str(folder),
            f"named like a DeepSpeed checkpoint but holds no *_model_states.pt (found: {shown})",
            "copy the whole global_stepN folder as DeepSpeed wrote it",
            holds_nothing=True,
        )
    return Skip(
        str(folder),
        f"named like a checkpoint but holds no weights diag can read (found: {shown})",
        "save the model or adapter into it (e.g. not only the optimizer and trainer state)",
        holds_nothing=True,
    )
