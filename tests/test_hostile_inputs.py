"""One bad checkpoint never sinks a sweep, never poisons another (tiny model, real loaders).

Each case is a folder a user could really have: a diverged (NaN/inf) adapter, a truncated or
empty weight file, a pickle where a zip is expected, a DeepSpeed file holding something else.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from tiny import settle

from diag.types import GenerationConfig

GEN = GenerationConfig(max_new_tokens=6, batch_size=32)
FAST = dict(
    identity="en", size="quick", probes="identity_recall,general_accuracy,drift", generation=GEN
)


def _poisoned(adapter: Path, out: Path, value: float) -> Path:
    """A copy of ``adapter`` whose layer-1 q_proj lora_B holds ``value`` in 3 places."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter, out)
    weights = load_file(out / "adapter_model.safetensors")
    key = next(k for k in weights if "layers.1.self_attn.q_proj.lora_B" in k)
    weights[key].view(-1)[:3] = value
    save_file(weights, out / "adapter_model.safetensors")
    return out


def _sweep(root: Path, base: Path, out: Path, **kw):
    from diag.diagnostics.sweeper import sweep
    from diag.reports.build import write_report

    result = sweep(root, base=base, out=out, progress="quiet", **FAST, **kw)
    write_report(result)  # the report of each hostile sweep must render too
    return result


def _numbers(result, run: str, step: int) -> dict:
    row = next(c for c in result.checkpoints if (c["run"], c["step"]) == (run, step))
    samples = sorted(
        (s["probe"], s["item_id"], s.get("answer_logprob"), s.get("text"))
        for s in result.samples()
        if (s["run"], s["step"]) == (run, step)
    )
    return {"metrics": row["metrics"], "stats": row["stats"], "samples": samples}


def test_non_finite_adapters_are_error_rows_and_poison_nothing(
    tiny_model_dir, tiny_adapters, tmp_path
):
    root = tmp_path / "runs"
    _poisoned(tiny_adapters[0], root / "run" / "checkpoint-10", float("nan"))
    _poisoned(tiny_adapters[0], root / "run" / "checkpoint-20", float("inf"))
    shutil.copytree(tiny_adapters[1], root / "run" / "checkpoint-30")
    settle(root)
    result = _sweep(root, tiny_model_dir, tmp_path / "out")
    rows = {c["step"]: c for c in result.checkpoints if c["run"] == "run"}
    assert rows[10]["status"] == "error" and rows[20]["status"] == "error"
    assert "3 NaN values in lora_B of layers.1.self_attn.q_proj" in rows[10]["error"]
    assert "3 inf values in lora_B of layers.1.self_attn.q_proj" in rows[20]["error"]
    assert rows[10]["error_type"] == "DiagError"
    assert rows[30]["status"] == "ok" and math.isfinite(rows[30]["metrics"]["drift"])
    # the healthy checkpoint scores exactly as it does in a sweep without the poisoned ones
    alone = tmp_path / "alone"
    shutil.copytree(tiny_adapters[1], alone / "run" / "checkpoint-30")
    settle(alone)
    clean = _sweep(alone, tiny_model_dir, tmp_path / "out-alone")
    assert _numbers(result, "run", 30) == _numbers(clean, "run", 30)
    assert (tmp_path / "out" / "report.html").is_file()


def test_scores_do_not_depend_on_what_was_probed_before(tiny_model_dir, tiny_adapters, tmp_path):
    """The same two adapters swept in both orders give bit-identical numbers."""
    a, b = tiny_adapters
    first, second = tmp_path / "ab", tmp_path / "ba"
    for root, order in ((first, (a, b)), (second, (b, a))):
        for step, adapter in zip((1, 2), order):
            shutil.copytree(adapter, root / "run" / f"checkpoint-{step}")
        settle(root)
    ab = _sweep(first, tiny_model_dir, tmp_path / "out-ab")
    ba = _sweep(second, tiny_model_dir, tmp_path / "out-ba")
    assert _numbers(ab, "run", 1) == _numbers(ba, "run", 2)  # adapter a, first vs second
    assert _numbers(ab, "run", 2) == _numbers(ba, "run", 1)  # adapter b
    assert _numbers(ab, "base", 0) == _numbers(ba, "base", 0)
    assert _numbers(ab, "run", 1) != _numbers(ab, "run", 2)


def test_corrupt_files_are_error_rows_and_the_sweep_goes_on(
    tiny_model_dir, tiny_adapters, tmp_path
):
    import torch

    root = tmp_path / "runs"
    good = shutil.copytree(tiny_adapters[0], root / "lora" / "checkpoint-50")
    truncated = shutil.copytree(tiny_adapters[1], root / "lora" / "checkpoint-10")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    empty = shutil.copytree(tiny_adapters[1], root / "lora" / "checkpoint-20")
    (empty / "adapter_model.safetensors").write_bytes(b"")
    work = root / "xtuner"
    work.mkdir(parents=True)
    (work / "cfg.py").write_text(
        "model = dict(type=SupervisedFinetune, lora=dict(r=4, lora_alpha=8))\n"
    )
    torch.save(
        {"state_dict": {"llm.x.lora_A.default.weight": torch.ones(2, 2)}}, work / "iter_1.pth"
    )
    full = (work / "iter_1.pth").read_bytes()
    (work / "iter_1.pth").write_bytes(full[: len(full) // 3])  # truncated zip
    (work / "iter_2.pth").write_bytes(b"\x80\x02}q\x00.")  # a bare pickle, not a zip
    ds = root / "ds" / "global_step5"
    ds.mkdir(parents=True)
    torch.save({"not": "model states"}, ds / "mp_rank_00_model_states.pt")
    torch.save({"nor": "optimizer"}, ds / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    settle(root)
    result = _sweep(root, tiny_model_dir, tmp_path / "out", lora_alpha=8)
    rows = {(c["run"], c["step"]): c for c in result.checkpoints}
    bad = {k: r for k, r in rows.items() if r["status"] == "error"}
    assert set(bad) == {("lora", 10), ("lora", 20), ("xtuner", 1), ("xtuner", 2), ("ds", 5)}
    for key, row in bad.items():
        assert "\n" not in row["error"] and row["error_type"], (key, row)
        assert row["path"] in row["error"] or Path(row["path"]).name in row["error"], row["error"]
        assert "fix" in row["error"] or "copy" in row["error"], row["error"]
    assert rows[("lora", 50)]["status"] == "ok"
    assert str(good) == rows[("lora", 50)]["path"]
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["complete"] is True and (tmp_path / "out" / "report.html").is_file()
    # a rerun does not die at the same place: the good one comes from the cache
    again = _sweep(root, tiny_model_dir, tmp_path / "out", lora_alpha=8)
    assert [c["cached"] for c in again.checkpoints if c["status"] == "ok"] == [True, True]


class PickledCode:
    """Unpickling this creates ``marker``: no loader may ever do it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _state(folder: Path, step: int, text: str | None = None) -> None:
    history = [{"loss": 2.0 - s / 10, "step": s} for s in range(1, step + 1)]
    (folder / "trainer_state.json").write_text(
        text if text is not None else json.dumps({"global_step": step, "log_history": history})
    )


@pytest.fixture(scope="module")
def corpus(tiny_model_dir, tiny_adapters, tmp_path_factory):
    """One runs folder holding many hostile cases beside healthy checkpoints, swept once."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("corpus")
    marker = root.parent / f"{root.name}-pickle-ran"
    a, b = tiny_adapters
    shutil.copytree(a, root / "good" / "checkpoint-5")
    noop = shutil.copytree(a, root / "noop" / "checkpoint-1")  # lora_B all zero: a no-op
    weights = load_file(noop / "adapter_model.safetensors")
    save_file(
        {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()},
        noop / "adapter_model.safetensors",
    )
    targets = shutil.copytree(a, root / "targets" / "checkpoint-1")
    cfg = json.loads((targets / "adapter_config.json").read_text())
    (targets / "adapter_config.json").write_text(
        json.dumps({**cfg, "target_modules": ["nope_proj"]})
    )
    badcfg = shutil.copytree(a, root / "badcfg" / "checkpoint-1")
    (badcfg / "adapter_config.json").write_text("{not json")
    _state(shutil.copytree(a, root / "losses" / "checkpoint-10"), 10)
    _state(shutil.copytree(b, root / "losses" / "checkpoint-20"), 20, text="{truncated")
    _state(shutil.copytree(a, root / "dup" / "checkpoint-10"), 10)
    _state(shutil.copytree(b, root / "dup" / "checkpoint-11"), 10)  # a copy that kept its state
    shutil.copytree(b, root / os.fsdecode(b"utf-\xff\xfe") / "checkpoint-3")
    shutil.copytree(b, root / "run[/]x" / "checkpoint-4")
    shutil.copytree(b, root / "[bold red]styled" / "checkpoint-4")
    shutil.copytree(b, root / "esc\x1b[2Jrun" / "checkpoint-4")
    full = root / "fullbin" / "checkpoint-1"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.save_pretrained(full)
    torch.save({**model.state_dict(), "hook": PickledCode(marker)}, full / "pytorch_model.bin")
    nan = root / "fullnan" / "checkpoint-1"
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(nan)
    ds = root / "dspickle" / "global_step1"
    ds.mkdir(parents=True)
    torch.save({"module": {}, "hook": PickledCode(marker)}, ds / "mp_rank_00_model_states.pt")
    out = root / "results"
    out.mkdir()
    (out / ".results.json.abc123.tmp").write_text("{half")  # left by a killed writer
    settle(root)
    result = _sweep(root, tiny_model_dir, out)
    return root, out, marker, result


def _row(result, run: str):
    return next(c for c in result.checkpoints if c["run"] == run and c["step"])


def test_corpus_pickles_never_run(corpus):
    _, _, marker, result = corpus
    assert not marker.exists()
    assert "--allow-pickle" in _row(result, "fullbin")["error"]
    assert _row(result, "dspickle")["status"] == "error"


def test_corpus_each_bad_checkpoint_is_one_named_row(corpus):
    _, _, _, result = corpus
    assert _row(result, "good")["status"] == "ok"
    assert "nope_proj" in _row(result, "targets")["error"]
    assert (
        "adapter_config.json' is not a readable adapter config" in _row(result, "badcfg")["error"]
    )
    assert "1 NaN value in norm" in _row(result, "fullnan")["error"]
    for run in ("targets", "badcfg", "fullnan", "fullbin", "dspickle"):
        row = _row(result, run)
        assert row["error_type"] and "\n" not in row["error"], row
        assert all(v is None for v in row["metrics"].values())


def test_corpus_no_op_adapter_is_flagged_in_results_report_and_gate(corpus):
    from diag.diagnostics.verdict import NO_CHANGE, gate

    root, out, _, result = corpus
    noop = _row(result, "noop")
    assert noop["status"] == "ok" and noop["no_change"] is True
    assert any("does not change the model" in n for n in noop["notes"])
    assert not _row(result, "good").get("no_change")
    html = (out / "report.html").read_text(encoding="utf-8", errors="replace")
    assert "Checkpoints that do not change the model" in html
    verdict = gate(out, checkpoint=noop["path"])
    assert verdict.verdict == "fail" and NO_CHANGE in verdict.problems


def test_corpus_broken_state_and_duplicate_steps(corpus):
    _, _, _, result = corpus
    losses = {c["step"]: c for c in result.checkpoints if c["run"] == "losses"}
    assert losses[10]["train_loss"] == pytest.approx(1.0)
    assert losses[20]["train_loss"] is None  # not taken from checkpoint-10's history
    assert any("trainer_state.json is unreadable" in n for n in losses[20]["notes"])
    assert [c["path"].rsplit("/", 1)[-1] for c in result.checkpoints if c["run"] == "dup"] == [
        "checkpoint-10"
    ]
    dup = [s for s in result.data["skipped"] if s["path"].endswith("checkpoint-11")]
    assert dup and "also claimed by" in dup[0]["reason"]


def test_corpus_results_are_strict_json_and_names_survive(corpus):
    root, out, _, result = corpus

    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    for name in ("results.json",):
        data = json.loads((out / name).read_text(encoding="utf-8"), parse_constant=refuse)
    for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines():
        json.loads(line, parse_constant=refuse)
    odd = next(c for c in data["checkpoints"] if c["run"].startswith("utf-"))
    assert os.fsencode(odd["path"]) == os.fsencode(
        root / os.fsdecode(b"utf-\xff\xfe") / "checkpoint-3"
    )
    assert odd["status"] == "ok" and Path(odd["path"]).is_dir(), odd.get("error")
    assert list(out.rglob("*.tmp")) == []  # the killed writer's temp file is cleaned up


def test_corpus_names_are_shown_literally(corpus):
    from click.testing import CliRunner

    from diag.cli import cli

    _, out, _, _ = corpus
    shown = CliRunner().invoke(cli, ["report", str(out)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "run[/]x" in shown.output and "[bold red]styled" in shown.output
    assert "\x1b" not in shown.output and "esc\\x1b[2Jrun" in shown.output
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "esc\x1b" not in html


def test_bad_output_device_and_results_are_one_line_errors(tiny_model_dir, tiny_adapters, tmp_path):
    from click.testing import CliRunner

    from diag.cli import cli

    root = tmp_path / "runs"
    shutil.copytree(tiny_adapters[0], root / "run" / "checkpoint-1")
    settle(root)
    (tmp_path / "afile").write_text("x")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    runner = CliRunner()
    base = [
        "sweep",
        str(root),
        "--base",
        str(tiny_model_dir),
        "--identity",
        "en",
        "--probes",
        "identity_recall",
    ]
    cases = {
        "is a file": [*base, "--out", str(tmp_path / "afile")],
        "--device 'tpu' is not a device": [*base, "--device", "tpu"],
        "--device cuda: this machine has no CUDA device": [*base, "--device", "cuda"],
    }
    if os.geteuid() != 0:  # root may write anywhere
        cases["cannot write results"] = [*base, "--out", str(readonly / "out")]
    for expected, args in cases.items():
        got = runner.invoke(cli, args)
        assert got.exit_code == 2 and expected in got.output, (expected, got.output)
        assert "Traceback" not in got.output and not (tmp_path / "afile.json").exists()
    results = tmp_path / "res"
    results.mkdir()
    (results / "results.json").write_text(json.dumps({"schema_version": 1, "checkpoints": {}}))
    got = runner.invoke(cli, ["report", str(results)])
    assert got.exit_code == 2 and "'checkpoints' is dict, not a list" in got.output


def test_interrupted_cache_entry_is_probed_again(tiny_model_dir, tiny_adapters, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(tiny_adapters[0], root / "run" / "checkpoint-1")
    settle(root)
    first = _sweep(root, tiny_model_dir, tmp_path / "out")
    entry = next((tmp_path / "out" / "cache" / "checkpoint").glob("*.json"))
    entry.write_text(entry.read_text()[:40])  # cut short, as by a crash without atomic writes
    again = _sweep(root, tiny_model_dir, tmp_path / "out")
    assert _numbers(again, "run", 1) == _numbers(first, "run", 1)


def test_base_problems_stop_the_sweep_with_one_line(tiny_model_dir, tiny_adapters, tmp_path):
    """A tokenizer without a chat template, or a prompt longer than the context: the base itself
    cannot be asked, so the sweep stops -- with one line saying what to pass."""
    from click.testing import CliRunner

    from diag.cli import cli

    root = tmp_path / "runs"
    shutil.copytree(tiny_adapters[0], root / "run" / "checkpoint-1")
    settle(root)
    no_template = shutil.copytree(tiny_model_dir, tmp_path / "no-template")
    cfg = json.loads((no_template / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(cfg))
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"id": "l1", "prompt": "word " * 700, "accept": ["x"]}) + "\n")
    runner = CliRunner()
    args = [
        "sweep",
        str(root),
        "--identity",
        "en",
        "--probes",
        "identity_recall",
        "--max-new-tokens",
        "4",
    ]
    got = runner.invoke(cli, [*args, "--base", str(no_template)])
    assert (
        got.exit_code == 2 and "has no chat template" in got.output and "--template" in got.output
    )
    got = runner.invoke(cli, [*args, "--base", str(tiny_model_dir), "--probe-file", str(long)])
    assert got.exit_code == 2 and "exceeds the 512-token context" in got.output, got.output
    assert "Traceback" not in got.output


def test_unwritable_out_and_strict_gate_json(tiny_model_dir, tiny_adapters, tmp_path):
    from click.testing import CliRunner

    from diag.cli import cli

    root = tmp_path / "runs"
    shutil.copytree(tiny_adapters[0], root / "run" / "checkpoint-1")
    settle(root)
    runner = CliRunner()
    # procfs refuses new folders even to root: the check runs before any model is loaded
    got = runner.invoke(
        cli, ["sweep", str(root), "--identity", "en", "--out", "/proc/diag-results"]
    )
    assert got.exit_code == 2 and "cannot write results to '/proc/diag-results'" in got.output
    out = tmp_path / "out"
    _sweep(root, tiny_model_dir, out)
    data = json.loads((out / "results.json").read_text())
    data["checkpoints"][-1]["metrics"]["drift"] = float("nan")  # as an older diag could store
    (out / "results.json").write_text(json.dumps(data))
    got = runner.invoke(cli, ["gate", str(out), "--json", "--checkpoint", "1"])

    def refuse(constant):
        raise ValueError(constant)

    verdict = json.loads(got.output, parse_constant=refuse)
    assert verdict["verdict"] in ("fail", "undecided")


def test_second_sweep_on_the_same_out_waits_and_says_so(
    tiny_model_dir, tiny_adapters, tmp_path, caplog
):
    import logging
    import threading

    from diag.diagnostics.outdir import exclusive

    root = tmp_path / "runs"
    shutil.copytree(tiny_adapters[0], root / "run" / "checkpoint-1")
    settle(root)
    out = tmp_path / "out"
    first = _sweep(root, tiny_model_dir, out)
    done = {}
    caplog.set_level(logging.WARNING, logger="diag")
    with exclusive(out):  # another sweep holds the folder
        worker = threading.Thread(
            target=lambda: done.setdefault("r", _sweep(root, tiny_model_dir, out))
        )
        worker.start()
        worker.join(timeout=3)
        assert worker.is_alive()  # waiting, not writing
        assert "another diag sweep is writing to" in caplog.text
    worker.join(timeout=120)
    assert [c["cached"] for c in done["r"].checkpoints] == [True, True]
    assert _numbers(done["r"], "run", 1) == _numbers(first, "run", 1)


def test_progress_shows_hostile_names_literally(caplog):
    import logging

    from diag.diagnostics.progress import SweepProgress

    name = "run[/]x [bold red]esc\x1b[2J step 4"
    with SweepProgress("rich", total=1) as bar:  # MarkupError before names were escaped
        bar.note(f"loading base {name}")
        bar.start(name)
        bar.probe_callback(name)("generating [3/4]")
        bar.done(name, cached=False)
    caplog.set_level(logging.INFO, logger="diag")
    with SweepProgress("plain", total=1) as bar:
        bar.done(name, cached=True)
    assert "esc\\x1b[2J" in caplog.text and "\x1b" not in caplog.text
