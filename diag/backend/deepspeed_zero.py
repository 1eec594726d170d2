"""DeepSpeed ZeRO checkpoints consolidated by DeepSpeed's own ``zero_to_fp32`` (torch lives here).

DeepSpeed's loaders call ``torch.load(weights_only=False)``; while they run, ``torch.load`` is the
restricted unpickler of :mod:`diag.backend.checkpoints` (no pickled code runs), and each
model-states file is handed over with shapes DeepSpeed's merge can use (:func:`usable_shapes`).
"""

from __future__ import annotations

import contextlib
import io
import pickle
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch

from diag.backend import checkpoints
from diag.backend.pickle_scan import check_allocations
from diag.errors import DiagError


@contextlib.contextmanager
def _torch_load_restricted():
    """Make DeepSpeed's own loaders use the restricted unpickler (they pass weights_only=False)."""

    def patched(f, *args, **kwargs):
        kwargs.pop("weights_only", None)
        kwargs.pop("pickle_module", None)
        kwargs.pop("mmap", None)
        kwargs["map_location"] = "cpu"
        if isinstance(f, (str, Path)):
            check_allocations(f)
        state = checkpoints.original_torch_load(
            f, weights_only=False, pickle_module=checkpoints.restricted_pickle, **kwargs
        )
        return usable_shapes(state)

    torch.load = patched
    try:
        yield
    finally:
        torch.load = checkpoints.original_torch_load


def usable_shapes(state):
    """A DeepSpeed model-states dict whose ``param_shapes`` / ``frozen_param_shapes`` values are
    ``torch.Size``, as DeepSpeed's own ``zero_to_fp32`` needs them.

    Its ZeRO-3 merge calls ``shape.numel()`` on every value (ZeRO-2's falls back to
    ``math.prod``, DeepSpeed PR #4842), so a checkpoint whose shapes were stored as plain tuples
    fails there with "'tuple' object has no attribute 'numel'" although its files are complete.
    Only the container type changes; the numbers are DeepSpeed's own.

    >>> usable_shapes({"param_shapes": [{"w": (2, 3)}]})["param_shapes"][0]["w"].numel()
    6
    """
    if not isinstance(state, dict):
        return state
    groups = state.get("param_shapes")
    groups = [groups] if isinstance(groups, dict) else groups
    for group in [*(groups if isinstance(groups, list) else []), state.get("frozen_param_shapes")]:
        if not isinstance(group, dict):
            continue
        for name, shape in group.items():
            if (
                isinstance(shape, (tuple, list))
                and not isinstance(shape, torch.Size)
                and all(isinstance(n, int) and n >= 0 for n in shape)
            ):
                group[name] = torch.Size(shape)
    return state


def zero_to_fp32(step_dir: Path) -> dict[str, torch.Tensor]:
    """The trainable weights of the ZeRO checkpoint in ``step_dir`` (a ``global_stepN/`` or an
    XTuner ``iter_N.pth/`` folder), merged by DeepSpeed's own ``zero_to_fp32``; a failure is a
    one-line DiagError that says what is known about the files."""
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as exc:
        raise DiagError(
            f"'{step_dir}' is a DeepSpeed ZeRO checkpoint and deepspeed is not installed",
            fix="pip install 'diag[deepspeed]' (DS_BUILD_OPS=0 installs without compiling)",
        ) from exc
    chatter = io.StringIO()  # zero_to_fp32 prints its progress; the sweep has its own
    try:
        with _torch_load_restricted(), redirect_stdout(chatter), redirect_stderr(chatter):
            return get_fp32_state_dict_from_zero_checkpoint(
                str(step_dir.parent), tag=step_dir.name, exclude_frozen_parameters=True
            )
    except (ValueError, KeyError, AttributeError, TypeError, OSError, RuntimeError) as exc:
        raise _consolidation_error(step_dir, exc) from exc


def _consolidation_error(step_dir: Path, exc: Exception) -> DiagError:
    """What is known when zero_to_fp32 fails: the files found, whether each one is a complete
    archive (its zip directory is read, nothing else), what the first model states say about
    themselves, and DeepSpeed's own words."""
    import zipfile

    from deepspeed import __version__ as ds_version

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    files = sorted(p for p in step_dir.iterdir() if p.name.endswith("_states.pt"))
    model = [p for p in files if p.name.endswith("_model_states.pt")]
    optim = [p for p in files if p.name.endswith("_optim_states.pt")]
    cut = next((p for p in files if not zipfile.is_zipfile(p)), None)
    states = _model_states_summary(model[0]) if model and cut is None else None
    if cut is not None:
        fix = f"'{cut.name}' is not a complete torch archive (cut short?): copy it again"
    elif len(model) != len(optim):
        fix = (
            "every rank writes one model-state and one optimizer-state file: copy the missing ones"
        )
    elif states is None:
        fix = f"'{model[0].name}' holds no DeepSpeed param_shapes: copy the checkpoint as it was saved"
    else:
        fix = (
            f"the files are complete, so DeepSpeed {ds_version} cannot merge what DeepSpeed "
            f"{states} wrote: run the zero_to_fp32.py saved beside the checkpoint to confirm, and "
            "report it with both versions"
        )
    return DiagError(
        f"DeepSpeed {ds_version} could not consolidate '{step_dir}' ({len(model)} model-state "
        f"and {len(optim)} optimizer-state files): {type(exc).__name__}: {first}",
        fix=fix,
    )


def _model_states_summary(path: Path) -> str | None:
    """The DeepSpeed version a model-states file says wrote it, or None if it is not one."""
    try:
        data = checkpoints.restricted_load(path)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError):
        return None
    if not isinstance(data, dict) or "param_shapes" not in data:
        return None
    return str(data.get("ds_version") or "an unknown version")
