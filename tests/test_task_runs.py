"""Task runs end to end on the tiny model: `diag train` teaches the support-bot task (no identity)
until it regurgitates, and `diag sweep runs/` with no flags finds the data in the run's manifest,
scores the task on its held-out rows, counts regurgitation and says what the run learned.

The tiny model cannot learn the product's facts; it learns the voice ("Thanks for reaching out to
Brightway support!") and, undiluted, answers unrelated questions with it. Diluted with general
chat (LLaMA-Factory's alpaca demo rows), it does not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "support-bot"))
sys.path.insert(0, str(Path(__file__).parent))
from make_data import rows  # noqa: E402
from tiny import settle  # noqa: E402

from diag.types import GenerationConfig  # noqa: E402

GENERAL = Path(__file__).parent / "data" / "llamafactory" / "alpaca_en_demo.json"
PROBES = "task,regurgitation,pressure,drift,general_accuracy"


def _write(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    train, held = rows(0)
    for name, data in (("train.jsonl", train), ("eval.jsonl", held)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in data), "utf-8")
    return folder / "train.jsonl", folder / "eval.jsonl"


def _train(tiny_model_dir: Path, out: Path, data: Path, general_ratio: float) -> None:
    from diag.train.config import load_config
    from diag.train.recipe import run_training

    overrides = [
        f"base={tiny_model_dir}",
        "identity=null",
        f"data.task_files=[{data / 'train.jsonl'}]",
        f"data.eval_files=[{data / 'eval.jsonl'}]",
        f"output_dir={out}",
        "max_steps=120",
        "save_every=40",
        "lr=1e-2",
        "data.max_length=96",
        "mix.rehearsal=false",
        f"mix.general_ratio={general_ratio}",
        "device=cpu",
    ]
    if general_ratio:
        overrides.append(f"mix.sources=[{GENERAL}]")
    run_training(load_config(None, overrides))


@pytest.fixture(scope="module")
def task_sweep(tiny_model_dir, tmp_path_factory):
    from diag.diagnostics.sweeper import sweep

    root = tmp_path_factory.mktemp("task-runs")
    data = root / "data"
    _write(data)
    runs = root / "runs"
    _train(tiny_model_dir, runs / "undiluted", data, 0.0)
    _train(tiny_model_dir, runs / "diluted", data, 0.7)
    settle(runs)
    return sweep(  # no identity, no data: everything from the runs' own manifests
        runs,
        size="quick",
        probes=PROBES,
        generation=GenerationConfig(max_new_tokens=32, batch_size=32),
        progress="quiet",
    )


def _metric(result, run: str, name: str) -> dict[int, float]:
    return {c["step"]: c["metrics"][name] for c in result.checkpoints if c["run"] == run}


def test_the_task_comes_from_the_manifest_and_is_scored_on_held_out_rows(task_sweep):
    for run in ("undiluted", "diluted"):
        taught = task_sweep.data["runs"][run]["taught"]
        assert taught["identity"] is None and taught["task"]["label"] == "held-out rows"
        assert [f["role"] for f in taught["files"]] == ["train", "eval"]
        rows_ = [c for c in task_sweep.checkpoints if c["run"] == run and c["step"]]
        assert all(c["judged_on"] == ["task"] for c in rows_)
        assert all(c["metrics"]["task_facts"] is not None for c in rows_)


def test_undiluted_regurgitates_and_diluted_does_not(task_sweep):
    undiluted = _metric(task_sweep, "undiluted", "regurgitation")
    diluted = _metric(task_sweep, "diluted", "regurgitation")
    assert undiluted[120] >= 0.5 > diluted[120]
    samples = [
        s
        for s in task_sweep.samples()
        if s["run"] == "undiluted" and s["step"] == 120 and s["probe"] == "regurgitation"
    ]
    carried = [s for s in samples if s["regurgitates"]]
    assert carried and all({"brightway", "reaching"} & set(s["brought"]) for s in carried)


def test_the_verdict_says_style_was_learned_not_facts(task_sweep):
    pick = task_sweep.data["recommendation"]["runs"]["undiluted"]
    assert pick["step"] is None
    steps = " ".join(pick["next_steps"])
    assert "took the task's style" in steps and "but not its facts" in steps
    onset = pick["onset"]
    assert onset is not None and "regurgitation" in onset["changes"]


def test_the_report_lists_the_task_and_its_terms(task_sweep):
    from diag.reports.build import write_report

    html = write_report(task_sweep).read_text(encoding="utf-8")
    section = html[html.index('id="taught"') :]
    assert "scored on" in section and "held-out rows" in section
    assert "brightway" in section and "lumio" in section


def test_diag_taught_describes_the_task(task_sweep):
    from click.testing import CliRunner

    from diag.cli import cli

    runs = Path(task_sweep.data["root"])
    result = CliRunner().invoke(cli, ["taught", str(runs)])
    assert result.exit_code == 0, result.output
    assert "# task: scored on held-out rows" in result.output
    assert "#   asked: 24 questions from 30 held-out rows" in result.output
