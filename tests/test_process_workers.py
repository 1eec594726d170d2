"""`diag sweep --workers 2`: the same files as a sweep in one process, from two worker processes
on this machine's CPU (the tiny model); a worker that dies mid-checkpoint has its checkpoint
retried in a new one; what cannot work says so in one line before anything loads."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from diag.diagnostics.sweeper import sweep
from faults import load_dying
from tiny import build_lora_adapter, settle

from diag.cli import cli
from diag.errors import DiagError
from diag.types import GenerationConfig

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS.parent / "benchmarks"))
from compare_results import compare  # noqa: E402

GEN = GenerationConfig(max_new_tokens=8, batch_size=64)
STEPS = (10, 20, 30, 40)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> Path:
    """One LoRA run of 4 checkpoints on the tiny model, aged past the sweep's settle time."""
    root = tmp_path_factory.mktemp("process-runs") / "runs"
    for i, step in enumerate(STEPS):
        build_lora_adapter(tiny_model_dir, root / "lora" / f"checkpoint-{step}", seed=300 + i)
    settle(root)
    return root


@pytest.fixture(scope="module")
def local(runs, tiny_model_dir, tmp_path_factory):
    """The same sweep in this process: what every sweep with workers must equal."""
    out = tmp_path_factory.mktemp("local") / "out"
    return sweep(
        runs, base=tiny_model_dir, identity="en", out=out, generation=GEN, progress="quiet"
    )


def test_two_worker_processes_write_the_one_process_sweeps_files(
    runs, tiny_model_dir, local, tmp_path, caplog
):
    caplog.set_level("INFO", logger="diag")
    out = tmp_path / "workers"
    result = CliRunner().invoke(
        cli,
        [
            "sweep", str(runs), "--base", str(tiny_model_dir), "--identity", "en", "--out", str(out),
            "--max-new-tokens", "8", "--workers", "2", "--log-format", "plain", "--no-report",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "starting 2 worker processes" in caplog.text
    staged = json.loads((out / "results.json").read_text())
    full = [c["step"] for c in staged["checkpoints"] if c.get("stage") == "full"]
    assert len(full) >= 2, "the staged sweep measured no checkpoint with the full suite"
    assert compare(local.out, out) == []  # every number, every sample, scores.csv byte for byte
    assert "5 checkpoints (5 probed, 0 from cache, 0 failed)" in result.output

    # the cache is the one-process sweep's: rerun in one process, nothing is probed again
    again = sweep(
        runs, base=tiny_model_dir, identity="en", out=out, generation=GEN, progress="quiet"
    )
    assert again.data["timing"]["probed"] == 0
    assert [c["metrics"] for c in again.checkpoints] == [c["metrics"] for c in local.checkpoints]


def test_a_worker_that_dies_mid_checkpoint_is_retried_in_a_new_one(runs, tiny_model_dir, tmp_path):
    screen = sweep(runs, base=tiny_model_dir, identity="en", out=tmp_path / "one", generation=GEN,
                   size="quick", progress="quiet")  # fmt: skip
    marks = tmp_path / "marks"
    marks.mkdir()
    load = functools.partial(
        load_dying, marks=str(marks), dies_once=("checkpoint-20",), dies_always=("checkpoint-40",)
    )
    result = sweep(runs, base=tiny_model_dir, identity="en", out=tmp_path / "out", generation=GEN,
                   size="quick", progress="quiet", workers=2, load_model=load)  # fmt: skip
    assert (marks / "checkpoint-20").exists()  # its first worker did die
    rows = {c["step"]: c for c in result.checkpoints}
    assert rows[40]["status"] == "error" and rows[40]["error_type"] == "WorkerDied"
    assert "died 2 times" in rows[40]["error"]
    expected = {c["step"]: c for c in screen.checkpoints}
    for step in (0, 10, 20, 30):
        assert rows[step]["status"] == "ok"
        assert rows[step]["metrics"] == expected[step]["metrics"]


def test_a_base_that_does_not_load_in_the_workers_is_one_line(runs, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["sweep", str(runs), "--base", str(tmp_path / "no-such-model"), "--identity", "en",
         "--out", str(tmp_path / "out"), "--workers", "2", "--no-report"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "no-such-model" in result.output and "Traceback" not in result.output


def test_workers_with_ray_say_so_before_loading(runs, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["sweep", str(runs), "--identity", "en", "--out", str(tmp_path / "out"),
         "--workers", "2", "--no-report", "--ray", "local"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "a Ray sweep places --actors" in result.output
    assert not (tmp_path / "out" / "results.json").exists()


def test_workers_refuse_a_gpu(monkeypatch):
    """Copies of the model in several processes are for the CPU: on a GPU (this machine has
    none, so the device check answers "cuda:0" here) the sweep says what to do instead."""
    from diag.diagnostics.process_workers import ProcessPool

    from diag.backend import load_backend, loading

    monkeypatch.setattr(loading, "check_device", lambda device: "cuda:0")
    with pytest.raises(DiagError, match="on this machine's CPU, not on cuda:0"):
        ProcessPool(load_backend, "cuda:0", 2).device_memory()


def test_a_loader_that_cannot_be_sent_to_a_process_is_one_line(runs, tiny_model_dir, tmp_path):
    from diag.backend.hf import HFBackend

    with pytest.raises(DiagError, match="cannot be sent to a worker process"):
        sweep(runs, base=tiny_model_dir, identity="en", out=tmp_path / "out", workers=2,
              load_model=lambda name: HFBackend.load(name), progress="quiet")  # fmt: skip


def test_the_last_task_waits_for_all_the_cores_only_when_the_other_is_about_to_end():
    import time as clock

    from diag.diagnostics.process_workers import ProcessWorkers

    workers = ProcessWorkers("base", None, None, 2)
    workers.threads = 2
    now = clock.perf_counter()
    last, other = ["the last task"], {"worker": "running"}
    took = [55.0, 56.0]  # two full suites, side by side
    # started with the others 53 s ago: nearly done, so the last task waits for both cores, at
    # most until the running one is a quarter over the typical 55.5 s
    assert workers._hold(last, other, {"worker": now - 53}, took) == pytest.approx(16.4, abs=0.5)
    # started 10 s ago: most of it left, so the last task starts now on its share
    assert workers._hold(last, other, {"worker": now - 10}, took) == 0
    # running far past what the others took: no estimate, no waiting
    assert workers._hold(last, other, {"worker": now - 75}, took) == 0
    # more than one task left, or nothing finished yet to go by: never held
    assert workers._hold(["a", "b"], other, {"worker": now - 53}, took) == 0
    assert workers._hold(last, other, {"worker": now - 53}, []) == 0


def test_ctrl_c_stops_the_sweep_and_its_busy_workers_at_once(runs, tiny_model_dir, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) while both workers are busy: the sweep
    ends within seconds, and no worker process is left behind."""
    import signal
    import subprocess

    marks = tmp_path / "stuck"
    marks.mkdir()
    code = (
        "import functools, sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from faults import load_stuck\n"
        "from diag.diagnostics.sweeper import sweep\n"
        f"sweep({str(runs)!r}, base={str(tiny_model_dir)!r}, identity='en', "
        f"out={str(tmp_path / 'out')!r}, size='quick', progress='quiet', workers=2, "
        f"load_model=functools.partial(load_stuck, marks={str(marks)!r}))\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.time() + 120
        while len(list(marks.iterdir())) < 2:  # both workers stuck in a checkpoint
            assert child.poll() is None and time.time() < deadline, child.stdout.read()
            time.sleep(0.5)
        os.killpg(child.pid, signal.SIGINT)
        started = time.perf_counter()
        out, _ = child.communicate(timeout=60)
        assert time.perf_counter() - started < 8, "the busy workers were waited for"
        assert child.returncode != 0 and "KeyboardInterrupt" in out  # the driver was stopped
        stuck = [int(p.name) for p in marks.iterdir()]
        assert not [pid for pid in stuck if os.path.exists(f"/proc/{pid}")], "a worker survived"
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
