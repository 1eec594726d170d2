"""Checkpoint discovery by content (no model needed): formats, steps, runs, losses, skips, hashes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from diag.diagnostics.cache import Fingerprinter
from diag.diagnostics.discover import discover

from diag.errors import DiagError
from diag.formats.xtuner import parse_config, peft_key

OLD = time.time() - 3600  # files written an hour ago: settled


def _write(path: Path, data: bytes | str = b"x", *, mtime: float = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.utime(path, (mtime, mtime))
    return path


def _adapter(folder: Path, base: str = "HuggingFaceTB/SmolLM2-135M-Instruct", **kw) -> Path:
    _write(folder / "adapter_config.json", json.dumps({"base_model_name_or_path": base}), **kw)
    _write(folder / "adapter_model.safetensors", folder.name.encode(), **kw)
    return folder


def _trainer_state(folder: Path, step: int) -> None:
    history = [{"loss": 3.0 - s / 100, "step": s} for s in range(10, step + 1, 10)]
    history.append({"eval_loss": 2.5, "step": step})
    _write(folder / "trainer_state.json", json.dumps({"global_step": step, "log_history": history}))


XTUNER_CONFIG = """
from xtuner.utils import PROMPT_TEMPLATE
pretrained_model_name_or_path = '/root/model/internlm2-chat-1_8b'
prompt_template = PROMPT_TEMPLATE.internlm2_chat
SYSTEM = ''
model = dict(
    type=SupervisedFinetune,
    llm=dict(type=AutoModelForCausalLM.from_pretrained,
             pretrained_model_name_or_path=pretrained_model_name_or_path),
    lora=dict(type=LoraConfig, r=64, lora_alpha=16, lora_dropout=0.1, bias='none',
              task_type='CAUSAL_LM'))
"""


def test_trainer_runs_ordered_by_step_with_losses(tmp_path):
    for step in (20, 100, 5):
        ckpt = _adapter(tmp_path / "lora-a" / f"checkpoint-{step}")
        _trainer_state(ckpt, step)
    _adapter(tmp_path / "lora-b" / "checkpoint-50")
    found = discover(tmp_path)
    assert [(c.run, c.step) for c in found.checkpoints] == [
        ("lora-a", 5),
        ("lora-a", 20),
        ("lora-a", 100),  # numeric order, not "100" < "20"
        ("lora-b", 50),
    ]
    assert {c.format for c in found.checkpoints} == {"peft-adapter"}
    run = found.runs["lora-a"]
    assert run.train_loss[-1] == [100, 2.0]  # the longest history (latest checkpoint) wins
    assert run.eval_loss == [[100, 2.5]]
    assert found.checkpoints[0].base_hint == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_full_models_sharded_and_incomplete(tmp_path):
    done = tmp_path / "full" / "checkpoint-10"
    _write(done / "config.json", "{}")
    _write(done / "model.safetensors.index.json", json.dumps({"weight_map": {"a": "m-1.st"}}))
    _write(done / "m-1.st")
    partial = tmp_path / "full" / "checkpoint-20"
    _write(partial / "config.json", "{}")
    _write(
        partial / "model.safetensors.index.json",
        json.dumps({"weight_map": {"a": "m-1.st", "b": "m-2.st"}}),
    )
    _write(partial / "m-1.st")
    found = discover(tmp_path)
    assert [(c.step, c.format) for c in found.checkpoints] == [(10, "full-model")]
    assert len(found.checkpoints[0].files) == 2  # index + shard
    assert any("m-2.st" in s.reason for s in found.skipped if s.path.endswith("checkpoint-20"))


def test_xtuner_work_dir_single_file_and_deepspeed_folder(tmp_path):
    work = tmp_path / "work_dirs" / "internlm2_lora"
    _write(work / "internlm2_chat_1_8b_qlora_copy.py", XTUNER_CONFIG)
    _write(work / "iter_600.pth" / "mp_rank_00_model_states.pt")
    _write(work / "iter_600.pth" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    _write(work / "iter_300.pth")
    _write(work / "last_checkpoint", str(work / "iter_600.pth"))
    found = discover(tmp_path)
    got = [(c.run, c.step, c.format) for c in found.checkpoints]
    assert got == [
        ("work_dirs/internlm2_lora", 300, "xtuner-pth"),
        ("work_dirs/internlm2_lora", 600, "xtuner-deepspeed"),
    ]
    ckpt = found.checkpoints[0]
    assert ckpt.lora["lora_alpha"] == 16 and ckpt.lora["r"] == 64
    assert ckpt.base_hint == "/root/model/internlm2-chat-1_8b"
    assert ckpt.chat.system == ""
    assert ckpt.chat.template == "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
    # the optimiser states are not part of the fingerprint: only the model states are
    assert [f.name for f in found.checkpoints[1].files] == ["mp_rank_00_model_states.pt"]


def test_xtuner_config_is_parsed_not_executed(tmp_path):
    marker = tmp_path / "executed"
    config = _write(
        tmp_path / "cfg.py",
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
        "SYSTEM = 'You are Nova.'\nprompt_template = dict(SYSTEM='<s>{system}\\n', "
        "INSTRUCTION='<u>{input}\\n<a>')\nmodel = dict(lora=dict(r=8, lora_alpha=32))\n",
    )
    parsed = parse_config(config)
    assert not marker.exists()
    assert parsed.lora == {"r": 8, "lora_alpha": 32}
    assert parsed.chat.system == "You are Nova."
    assert parsed.chat.template == "<u>{input}\n<a>"
    assert parsed.chat.system_template == "<s>{system}\n"


def test_xtuner_keys_become_peft_keys():
    key = "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert peft_key(key) == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert peft_key("llm.model.layers.0.self_attn.q_proj.weight") is None


def test_deepspeed_zero_global_steps(tmp_path):
    run = tmp_path / "ds-run"
    _write(run / "latest", "global_step40")
    for step in (20, 40):
        _write(run / f"global_step{step}" / "mp_rank_00_model_states.pt")
        _write(run / f"global_step{step}" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    found = discover(tmp_path)
    assert [(c.run, c.step, c.format) for c in found.checkpoints] == [
        ("ds-run", 20, "deepspeed-zero"),
        ("ds-run", 40, "deepspeed-zero"),
    ]


def test_checkpoints_being_written_are_skipped_with_a_note(tmp_path):
    _adapter(tmp_path / "run" / "checkpoint-10")
    _adapter(tmp_path / "run" / "checkpoint-20", mtime=time.time())  # just written
    _write(tmp_path / "run" / "checkpoint-30" / "adapter_config.json", "{}")  # no weights yet
    _adapter(tmp_path / "run" / "tmp-checkpoint-40")
    found = discover(tmp_path, settle_seconds=5)
    assert [c.step for c in found.checkpoints] == [10]
    reasons = {Path(s.path).name: s.reason for s in found.skipped}
    assert "still being written" in reasons["checkpoint-20"]
    assert "without adapter weights" in reasons["checkpoint-30"]
    assert "tmp-checkpoint-40" in reasons
    # next time, once settled, it is picked up
    later = discover(tmp_path, settle_seconds=5, now=time.time() + 60)
    assert [c.step for c in later.checkpoints] == [10, 20]


def test_plain_adapter_folder_is_one_checkpoint(tmp_path):
    folder = _adapter(tmp_path / "my-adapter")
    found = discover(folder)
    assert len(found.checkpoints) == 1
    ckpt = found.checkpoints[0]
    assert (ckpt.run, ckpt.step, ckpt.path) == ("my-adapter", 1, folder)
    assert "numbered by name" in ckpt.notes[0]


def test_excluded_folder_and_missing_root(tmp_path):
    _adapter(tmp_path / "run" / "checkpoint-1")
    _adapter(tmp_path / "diag" / "cache" / "checkpoint-9")
    found = discover(tmp_path, exclude=(tmp_path / "diag" / "cache",))
    assert [c.step for c in found.checkpoints] == [1]
    with pytest.raises(DiagError, match="does not exist"):
        discover(tmp_path / "nope")


def test_fingerprint_is_content_not_path_or_mtime(tmp_path):
    a = _adapter(tmp_path / "a" / "checkpoint-1")
    b = tmp_path / "b" / "checkpoint-1"
    b.mkdir(parents=True)
    for f in a.iterdir():
        _write(b / f.name, f.read_bytes(), mtime=OLD + 10)
    fp = Fingerprinter(None)

    def files(folder):
        return discover(folder, settle_seconds=0).checkpoints[0].files

    first = fp.fingerprint(files(a), root=a)
    assert fp.fingerprint(files(b), root=b) == first  # copied elsewhere, other mtime: same
    _write(b / "adapter_model.safetensors", b"changed")
    assert fp.fingerprint(files(b), root=b) != first


def test_fingerprint_memo_skips_rereading_unchanged_files(tmp_path):
    folder = _adapter(tmp_path / "checkpoint-1")
    files = discover(folder, settle_seconds=0).checkpoints[0].files
    memo = tmp_path / "memo.json"
    first = Fingerprinter(memo)
    value = first.fingerprint(files, root=folder)
    first.save()
    again = Fingerprinter(memo)
    assert again.fingerprint(files, root=folder) == value
    assert again.hashed_bytes == 0


def test_folders_that_look_like_checkpoints_are_named_with_a_fix(tmp_path):
    _adapter(tmp_path / "run" / "checkpoint-10")
    _write(tmp_path / "run" / "checkpoint-20" / "adapter_model.safetensors")  # config missing
    _write(tmp_path / "run" / "checkpoint-30" / "optimizer.pt")  # trainer state only
    _write(tmp_path / "run" / "checkpoint-30" / "trainer_state.json", "{}")
    _write(tmp_path / "full" / "model.safetensors")  # no config.json
    found = discover(tmp_path)
    assert [c.step for c in found.checkpoints] == [10]
    skips = {Path(s.path).name: s for s in found.skipped}
    assert "without adapter_config.json" in skips["checkpoint-20"].reason
    assert "adapter_config.json" in skips["checkpoint-20"].fix
    assert "optimizer.pt, trainer_state.json" in skips["checkpoint-30"].reason
    assert "without config.json" in skips["full"].reason
    assert all(s.fix for s in found.skipped)


def test_final_adapter_beside_its_checkpoints(tmp_path):
    """HF Trainer's save_model(output_dir) after training: the final adapter is the output folder."""
    run = tmp_path / "sft"
    _adapter(run / "checkpoint-10")
    _adapter(run / "checkpoint-20")
    _adapter(run)  # different weights from both (its own bytes), step from trainer_state.json
    _trainer_state(run, 25)
    found = discover(tmp_path)
    assert [(c.run, c.step, c.label) for c in found.checkpoints] == [
        ("sft", 10, None),
        ("sft", 20, None),
        ("sft", 25, "final"),
    ]
    # the same weights as checkpoint-20: one row, both paths
    _write(
        run / "adapter_model.safetensors",
        (run / "checkpoint-20" / "adapter_model.safetensors").read_bytes(),
    )
    found = discover(tmp_path)
    assert [(c.step, c.label) for c in found.checkpoints] == [(10, None), (20, "final")]
    assert found.checkpoints[-1].aliases == [run]
    # other weights and no step of its own: named, not guessed
    _write(run / "adapter_model.safetensors", b"other")
    (run / "trainer_state.json").unlink()
    found = discover(tmp_path)
    assert [c.step for c in found.checkpoints] == [10, 20]
    assert "step is unknown" in found.skipped[0].reason and "diag sweep" in found.skipped[0].fix


def test_symlinks_loops_and_links_out_of_the_tree(tmp_path):
    elsewhere = _adapter(tmp_path / "elsewhere" / "checkpoint-7")
    root = tmp_path / "runs"
    _adapter(root / "run" / "checkpoint-5")
    (root / "run" / "checkpoint-5" / "loop").symlink_to(root)  # a loop back to the top
    (root / "linked").symlink_to(elsewhere.parent)  # a run kept on another disk
    (root / "run" / "last").symlink_to(root / "run" / "checkpoint-5")
    found = discover(root)
    assert [(c.run, c.step) for c in found.checkpoints] == [("linked", 7), ("run", 5)]
    assert found.checkpoints[1].aliases == [root / "run" / "last"]
