"""`diag sweep --ray`: the same results as a local sweep, on a local Ray cluster of 2 actors
(CPU, the tiny model); a worker that dies mid-checkpoint has its checkpoint retried elsewhere."""

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
from tiny import build_lora_adapter

from diag.cli import cli
from diag.types import GenerationConfig

ray = pytest.importorskip("ray")  # a dev extra: CI installs it

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS.parent / "benchmarks"))
from compare_results import compare  # noqa: E402

GEN = GenerationConfig(max_new_tokens=8, batch_size=64)
STEPS = (10, 20, 30, 40)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance with 2 CPUs; workers can import the test modules (faults.py)."""
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> Path:
    """One LoRA run of 4 checkpoints on the tiny model, aged past the sweep's settle time."""
    root = tmp_path_factory.mktemp("ray-runs") / "runs"
    for i, step in enumerate(STEPS):
        build_lora_adapter(tiny_model_dir, root / "lora" / f"checkpoint-{step}", seed=200 + i)
    when = time.time() - 600
    for dirpath, _, files in os.walk(root):
        for name in files:
            os.utime(Path(dirpath) / name, (when, when))
    return root


@pytest.fixture(scope="module")
def local(runs, tiny_model_dir, tmp_path_factory):
    """The same sweep in this process: what every Ray sweep must equal."""
    out = tmp_path_factory.mktemp("local") / "out"
    return sweep(
        runs, base=tiny_model_dir, identity="en", out=out, generation=GEN, progress="quiet"
    )


def test_ray_sweep_writes_the_local_sweeps_files(cluster, runs, tiny_model_dir, local, tmp_path):
    out = tmp_path / "ray"
    result = CliRunner().invoke(
        cli,
        [
            "sweep", str(runs), "--base", str(tiny_model_dir), "--identity", "en", "--out", str(out),
            "--max-new-tokens", "8", "--ray", "--actors", "2", "--log-format", "plain",
            "--no-report",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    staged = json.loads((out / "results.json").read_text())
    full = [c["step"] for c in staged["checkpoints"] if c.get("stage") == "full"]
    assert len(full) >= 2, "the staged sweep measured no checkpoint with the full suite"
    assert compare(local.out, out) == []  # every number, every sample, scores.csv byte for byte
    assert "5 checkpoints (5 probed, 0 from cache, 0 failed)" in result.output

    # the driver's cache is the local sweep's: a local rerun of the Ray sweep probes nothing
    again = sweep(
        runs, base=tiny_model_dir, identity="en", out=out, generation=GEN, progress="quiet"
    )
    assert again.data["timing"]["probed"] == 0
    assert [c["metrics"] for c in again.checkpoints] == [c["metrics"] for c in local.checkpoints]


@pytest.fixture(scope="module")
def local_screen(runs, tiny_model_dir, tmp_path_factory):
    """The screen alone (--size quick) in this process. A staged sweep is not the reference for
    a sweep in which a checkpoint fails: an error row changes what the decision rests on, so
    which checkpoints get the full suite differs; the screen asks every checkpoint the same."""
    out = tmp_path_factory.mktemp("local-screen") / "out"
    return sweep(runs, base=tiny_model_dir, identity="en", out=out, generation=GEN,
                 size="quick", progress="quiet")  # fmt: skip


def test_a_worker_that_dies_mid_checkpoint_is_retried_on_another(
    cluster, runs, tiny_model_dir, local_screen, tmp_path
):
    marks = tmp_path / "marks"
    marks.mkdir()
    load = functools.partial(
        load_dying, marks=str(marks), dies_once=("checkpoint-20",), dies_always=("checkpoint-40",)
    )
    result = sweep(runs, base=tiny_model_dir, identity="en", out=tmp_path / "out", generation=GEN,
                   size="quick", progress="quiet", ray="auto", actors=2, load_model=load)  # fmt: skip
    assert (marks / "checkpoint-20").exists()  # its first worker did die
    rows = {c["step"]: c for c in result.checkpoints}
    assert rows[40]["status"] == "error" and rows[40]["error_type"] == "WorkerDied"
    assert "died 2 times" in rows[40]["error"]
    expected = {c["step"]: c for c in local_screen.checkpoints}
    for step in (0, 10, 20, 30):
        assert rows[step]["status"] == "ok"
        assert rows[step]["metrics"] == expected[step]["metrics"]

    # resumed on Ray with healthy workers: only the failed checkpoint is probed again
    resumed = sweep(runs, base=tiny_model_dir, identity="en", out=tmp_path / "out", generation=GEN,
                    size="quick", progress="quiet", ray="auto", actors=2)  # fmt: skip
    rows = {c["step"]: c for c in resumed.checkpoints}
    assert [s for s, c in rows.items() if not c["cached"]] == [40]
    assert all(c["metrics"] == expected[c["step"]]["metrics"] for c in resumed.checkpoints)


def test_without_ray_the_flag_says_how_to_install_it(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    result = CliRunner().invoke(
        cli, ["sweep", str(runs), "--identity", "en", "--out", str(tmp_path), "--ray"]
    )
    assert result.exit_code != 0
    assert "--ray needs Ray, which is not installed" in result.output
    assert "pip install 'diag[ray]'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "resources, actors, expected",
    [
        ({"GPU": 8, "CPU": 64}, None, (8, {"num_gpus": 1.0, "num_cpus": 1.0})),
        ({"GPU": 2, "CPU": 16}, 4, (4, {"num_gpus": 0.5, "num_cpus": 1.0})),
        ({"CPU": 16}, None, (4, {"num_cpus": 4})),
        ({"CPU": 2}, None, (1, {"num_cpus": 2})),
        ({"CPU": 2}, 4, (4, {"num_cpus": 0.5})),
    ],
)
def test_actors_never_ask_for_more_than_the_cluster_has(resources, actors, expected):
    from diag.diagnostics.ray_workers import RayCluster

    cluster = RayCluster("auto", actors, load=None)
    cluster.ray = type("Ray", (), {"cluster_resources": staticmethod(lambda: resources)})
    assert cluster.placement(most=100) == expected
    assert cluster.placement(most=3)[0] == min(3, expected[0])  # no more than models to probe


def test_an_address_where_no_cluster_answers_is_one_line_at_once(runs, tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = CliRunner().invoke(
        cli,
        ["sweep", str(runs), "--identity", "en", "--out", str(tmp_path), f"--ray=127.0.0.1:{port}"],
    )  # diag's own check answers; Ray alone would retry the address for minutes
    assert result.exit_code != 0
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in result.output
    assert "ray start --head" in result.output and "Traceback" not in result.output
