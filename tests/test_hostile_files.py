"""Hostile files in a runs folder (issue 25): each is refused or skipped with one line that says
what the file is, before it can take memory or time, and the sweep goes on with the others.

Memory and time bombs run in a child process under an address-space limit and a timeout
(``faults.run_bounded``): on code that lets them through, the child fails at the bound.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from faults import run_bounded
from tiny import settle


class _Bomb:
    """Pickles as ``bytearray(4_000_000_000)``: torch's weights-only allow-list admits it."""

    def __reduce__(self):
        return (bytearray, (4_000_000_000,))


def _sweep_args(root: Path, base: Path, out: Path, *more: str) -> list[str]:
    return [
        "sweep", str(root), "--identity", "en", "--base", str(base), "--out", str(out), "--probes",
        "identity_recall", "--size", "quick", "--max-new-tokens", "4", "--no-report", *more,
    ]  # fmt: skip


def test_bytearray_bomb_is_refused_before_it_allocates(tiny_model_dir, tiny_adapters, tmp_path):
    """A 2 KB XTuner .pth whose pickle asks for a 4 GB bytearray: one error row naming the file,
    the healthy checkpoint probed, and the sweep never near the 3 GB bound."""
    import torch

    root = tmp_path / "runs"
    shutil.copytree(tiny_adapters[0], root / "lora" / "checkpoint-10")
    work = root / "xtuner"
    work.mkdir(parents=True)
    (work / "cfg.py").write_text("model = dict(type=SupervisedFinetune, lora=dict(lora_alpha=8))\n")
    state = {"state_dict": {"llm.x.lora_A.default.weight": torch.ones(2, 2)}, "meta": _Bomb()}
    torch.save(state, work / "iter_1.pth")
    settle(root)
    args = _sweep_args(root, tiny_model_dir, tmp_path / "out")
    code, out, err, peak = run_bounded(["-m", "diag", *args], memory_mb=3000, timeout=180)
    assert code == 0, err[-2000:]
    assert f"error xtuner step 1: '{work / 'iter_1.pth'}' asks for 4,000,000,000 bytes" in err
    assert "refused before loading" in err and "Traceback" not in err
    assert "3 checkpoints (2 probed, 0 from cache, 1 failed)" in out  # the base, lora 10, bomb
    assert peak is not None and peak < 1500, peak


def test_allocation_scan_follows_every_pickle_form(tmp_path):
    """The same bomb as a bare pickle (protocol 2 and 4) and in torch's legacy format is refused
    by the opcode scan; the trainers' real pickled files in the fixtures pass it."""
    import pickle

    import torch

    from diag.backend.pickle_scan import check_allocations
    from diag.errors import DiagError

    bombs = {
        "p2.pt": pickle.dumps(_Bomb(), protocol=2),  # GLOBAL '__builtin__ bytearray'
        "p4.pt": pickle.dumps(_Bomb(), protocol=4),  # STACK_GLOBAL, memoized
    }
    for name, data in bombs.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"x": _Bomb()}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in (*bombs, "legacy.pt"):
        with pytest.raises(DiagError, match=r"asks for 4,000,000,000 bytes \(builtins.bytearray\)"):
            check_allocations(tmp_path / name)
    fixtures = Path(__file__).parent / "fixtures" / "trainers"
    real = [p for p in fixtures.rglob("*") if p.suffix in (".pt", ".pth", ".bin") and p.is_file()]
    assert len(real) > 10
    for path in real:
        check_allocations(path)


def test_odd_entries_are_named_skips_and_the_sweep_goes_on(tiny_model_dir, tiny_adapters, tmp_path):
    """adapter_config.json nested 200,000 deep, checkpoint-50 a link to a file, checkpoint-70 a
    dangling link, a FIFO and a /dev/zero link as adapter weights: each a skip saying what it is
    (nothing is opened that would block or never end), and the healthy checkpoint is probed."""
    import os

    root = tmp_path / "runs"
    run = root / "lora"
    shutil.copytree(tiny_adapters[0], run / "checkpoint-10")
    deep = shutil.copytree(tiny_adapters[1], run / "checkpoint-20")
    (deep / "adapter_config.json").write_text("[" * 200_000 + "]" * 200_000)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (run / "checkpoint-50").symlink_to(tmp_path / "notes.txt")
    (run / "checkpoint-70").symlink_to(tmp_path / "gone")
    (run / "checkpoint-80").mkdir()  # empty: a named skip already
    for name, make in (("fifo", os.mkfifo), ("zero", lambda p: p.symlink_to("/dev/zero"))):
        folder = root / name / "checkpoint-1"
        folder.mkdir(parents=True)
        shutil.copy(tiny_adapters[0] / "adapter_config.json", folder)
        make(folder / "adapter_model.safetensors")
    settle(root)
    args = _sweep_args(root, tiny_model_dir, tmp_path / "out")
    code, out, err, _ = run_bounded(["-m", "diag", *args], timeout=120)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert "2 checkpoints (2 probed, 0 from cache, 0 failed)" in out  # the base and lora 10
    expected = {
        run / "checkpoint-20": "adapter_config.json is nested too deeply to read",
        run
        / "checkpoint-50": f"is a file (a link to '{tmp_path / 'notes.txt'}'), not a checkpoint",
        run / "checkpoint-70": f"is a link to '{tmp_path / 'gone'}', which does not exist",
        run / "checkpoint-80": "holds no weights diag can read",
        root / "fifo" / "checkpoint-1": "adapter_model.safetensors is a FIFO (named pipe)",
        root / "zero" / "checkpoint-1": "is a character device (a link to '/dev/zero')",
    }
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == len(expected), skipped
    for path, reason in expected.items():
        assert any(f"skipped {path}: " in s and reason in s for s in skipped), (path, skipped)


def test_merge_force_refuses_non_finite_weights(tiny_adapters, tmp_path):
    """--force overrides the gate, never the arithmetic: a NaN or inf adapter is one line naming
    the tensor, and no output folder is written."""
    from click.testing import CliRunner
    from safetensors.torch import load_file, save_file

    from diag.cli import cli

    for value, kind in ((float("nan"), "NaN"), (float("inf"), "inf")):
        folder = shutil.copytree(tiny_adapters[0], tmp_path / kind / "checkpoint-10")
        weights = load_file(folder / "adapter_model.safetensors")
        key = next(k for k in weights if "layers.1.self_attn.q_proj.lora_B" in k)
        weights[key].view(-1)[:3] = value
        save_file(weights, folder / "adapter_model.safetensors")
        out = tmp_path / f"merged-{kind}"
        got = CliRunner().invoke(cli, ["merge", str(folder), "--out", str(out), "--force"])
        assert got.exit_code == 2, got.output
        assert f"3 {kind} values in lora_B of layers.1.self_attn.q_proj" in got.output
        assert "non-finite weights cannot be merged, not even with --force" in got.output
        assert got.output.count("Error:") == 1 and "Traceback" not in got.output
        assert not out.exists() and not list(tmp_path.glob(f".merged-{kind}*"))


def test_adapter_for_another_base_names_the_tensor_and_the_fix(
    tiny_model_dir, tiny_adapters, tmp_path
):
    """An adapter trained on a wider model, and one whose config's rank is not its weights':
    each error row names the first tensor that differs, both shapes, and the fix that fits."""
    import json

    from tiny import build_lora_adapter, build_tiny_model, identity_sweep

    wide = build_tiny_model(tmp_path / "wide-model", hidden_size=64)
    root = tmp_path / "runs"
    build_lora_adapter(wide, root / "run" / "checkpoint-1", seed=5)
    broken = shutil.copytree(tiny_adapters[0], root / "run" / "checkpoint-2")
    config = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    shutil.copytree(tiny_adapters[1], root / "run" / "checkpoint-3")
    settle(root)
    result = identity_sweep(root, tiny_model_dir, tmp_path / "out")
    rows = {c["step"]: c for c in result.checkpoints if c["run"] == "run"}
    assert rows[3]["status"] == "ok"
    other, bad = rows[1]["error"], rows[2]["error"]
    assert f"does not fit base model '{tiny_model_dir}'" in other
    assert "(8 tensors differ), so it was trained on another base" in other
    assert "lora_A of layers.0.self_attn.q_proj is [4, 64] in the adapter, [4, 32] in the base" in (
        other
    )
    assert "(8 tensors differ)" in other
    assert (
        f"Fix: pass --base with the model it was trained on (its adapter_config.json names '{wide.resolve()}')"
        in other
    )
    assert "is broken: lora_A of layers.0.self_attn.q_proj has rank 4 ([4, 32])" in bad
    assert "adapter_config.json says r=8" in bad and "Fix: copy the adapter again" in bad
    assert "--base" not in bad


def test_header_claiming_4_gb_is_refused_before_hashing(tiny_model_dir, tiny_adapters, tmp_path):
    """An adapter whose safetensors header claims a 4 GB tensor (a sparse file of zeros): an
    error row saying so, and the file is never hashed (the fingerprint memo does not list it)."""
    import json
    import struct

    root = tmp_path / "runs"
    bad = shutil.copytree(tiny_adapters[0], root / "run" / "checkpoint-1")
    shutil.copytree(tiny_adapters[1], root / "run" / "checkpoint-2")
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    n = 1_000_000_000
    header = json.dumps({name: {"dtype": "F32", "shape": [4, n // 4], "data_offsets": [0, 4 * n]}})
    header = header.encode() + b" " * (-len(header) % 8)
    weights = bad / "adapter_model.safetensors"
    with open(weights, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + 4 * n)  # sparse: no disk used
    settle(root)
    out = tmp_path / "out"
    args = _sweep_args(root, tiny_model_dir, out, "--log-format", "plain")
    code, stdout, err, _ = run_bounded(["-m", "diag", *args], timeout=120)
    assert code == 0, err[-2000:]
    assert f"error run step 1: '{weights}' claims tensor '{name}' of shape [4, 250000000]" in err
    assert "wider than any dimension of its base model" in err
    assert "3 checkpoints (2 probed, 0 from cache, 1 failed)" in stdout
    memo = json.loads((out / "cache" / "fingerprints.json").read_text())
    assert not [key for key in memo if str(weights) in key]  # never read in full


def test_base_not_available_offline_is_an_error_row_at_once(
    tiny_model_dir, tiny_adapters, tmp_path
):
    """An adapter naming a hub base that is not in the local cache: an error row before anything
    is probed (no default base substituted); with --base it is probed on that base."""
    import json

    root = tmp_path / "runs"
    shutil.copytree(tiny_adapters[0], root / "run" / "checkpoint-1")  # names the tiny model
    hub = shutil.copytree(tiny_adapters[1], root / "run" / "checkpoint-2")
    config = json.loads((hub / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-org/a-model-not-cached-here"
    (hub / "adapter_config.json").write_text(json.dumps(config))
    settle(root)
    sweep = ["-m", "diag", "sweep", str(root), "--identity", "en", "--probes", "identity_recall", "--size", "quick",
             "--max-new-tokens", "4", "--no-report", "--log-format", "plain"]  # fmt: skip
    code, out, err, _ = run_bounded([*sweep, "--out", str(tmp_path / "a")], timeout=90)
    assert code == 0, err[-2000:]
    assert err.count("loading base") == 1 and f"loading base {tiny_model_dir}" in err  # only
    assert (
        f"error run step 2: '{hub}' was trained on 'some-org/a-model-not-cached-here' (its "
        "adapter_config.json says so), which is not available here" in err
    )
    assert "3 checkpoints (2 probed, 0 from cache, 1 failed)" in out
    args = [*sweep, "--out", str(tmp_path / "b"), "--base", str(tiny_model_dir)]
    code, out, err, _ = run_bounded(args, timeout=90)
    assert code == 0 and "3 checkpoints (3 probed, 0 from cache, 0 failed)" in out, err[-2000:]
