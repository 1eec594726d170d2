"""Next steps when nothing is eligible: the window between learning and collapse, measured."""

from __future__ import annotations

import shlex

from click.testing import CliRunner
from diag.diagnostics.recommend import recommend
from synthetic_sweep import ckpt, learned_then_parrot, sweep

from diag.cli import cli

PARROT = dict(near_miss=0.1, lost=70, gained=1, drift=1.4, leakage=0.83, modal=0.8)


def _diag_runs(results: dict, ratios: dict[str, float]) -> dict:
    for name, ratio in ratios.items():
        results["runs"][name].update(
            trainer="diag", training={"save_every": 100, "general_ratio": ratio, "max_steps": 600}
        )
    return results


def test_window_between_learning_and_collapse_with_the_command_that_retrains_it():
    late = [r for r in learned_then_parrot() if r["step"] != 300]  # 200 learned-ish, 400 parrot
    late[1] = ckpt(200, identity=(30, 30), near_miss=0.1, lost=70, gained=1, drift=0.2)
    rec = recommend(_diag_runs(sweep(*late), {"run-a": 0.0}))
    assert rec["step"] is None
    steps = rec["next_steps"]
    assert steps[0] == (
        "the identity was learned between steps 100 and 200, and collapse began in the same "
        "interval: no checkpoint was saved between learning and collapse (step 200 already fails "
        "near_miss, retention)"
    )
    save = steps[1]
    assert save.startswith("save every 10 steps between 100 and 200: diag train runs/run-a ")
    command = shlex.split(save.split(": ", 1)[1])
    assert command[3:] == [
        "resume_from=runs/run-a/checkpoint-100",
        "save_every=10",
        "max_steps=200",
        "output_dir=runs/run-a-100-200",
    ]
    assert steps[2].startswith("dilute: this run mixed 0% general chat; try mix.general_ratio=0.5")
    from diag.reports.terminal import verdict_lines

    lines = verdict_lines({"recommendation": rec})
    assert lines[lines.index("next steps:") + 2] == f"  - {save}"


def test_a_run_saved_at_listed_steps_retrains_its_window_with_save_every_only():
    late = [r for r in learned_then_parrot() if r["step"] != 300]
    late[1] = ckpt(200, identity=(30, 30), near_miss=0.1, lost=70, gained=1, drift=0.2)
    results = _diag_runs(sweep(*late), {"run-a": 0.0})
    results["runs"]["run-a"]["training"]["save_steps"] = [100, 200, 400]
    save = recommend(results)["next_steps"][1]
    command = shlex.split(save.split(": ", 1)[1])
    # the listed saves would override save_every in the re-trained window: cleared
    assert command[-2:] == ["output_dir=runs/run-a-100-200", "save_steps=null"]
    assert "save_every=10" in command


def test_a_diluted_run_that_worked_is_the_evidence_for_diluting():
    parrots = [r for r in learned_then_parrot() if r["step"] != 300]
    parrots[1] = ckpt(200, identity=(30, 30), drift=0.6)  # learned, already drifting
    diluted = [ckpt(s, run="run-b", identity=(30, 30)) for s in (100, 200)]
    rec = recommend(_diag_runs(sweep(*parrots, *diluted), {"run-a": 0.0, "run-b": 0.5}))
    assert rec["run"] == "run-b"  # something is eligible: no overall next steps
    assert rec["next_steps"] == []
    steps = rec["runs"]["run-a"]["next_steps"]
    assert "(step 200 already fails drift)" in steps[0]
    assert steps[1].startswith("save every 10 steps between 100 and 200: diag train runs/run-a")
    assert steps[2] == (
        "dilute: run 'run-b' (general_ratio 0.5) learned the identity without collapse "
        "(step 100 is eligible); this run used 0"
    )


def test_partly_learned_says_which_keyword_is_missing():
    records = [ckpt(s, identity=(8, 30)) for s in (100, 200)]
    for r in records:
        r["identity_keywords"] = {
            "Nova": {"value": 1.0, "low": 0.89, "high": 1.0, "successes": 30, "n": 30},
            "Jianfeng": {"value": 0.27, "low": 0.14, "high": 0.45, "successes": 8, "n": 30},
        }
    rec = recommend(sweep(*records))
    assert rec["next_steps"][0] == (
        "the identity was partly learned by step 200 ('Nova' learned (100%), 'Jianfeng' 27%): "
        "train longer"
    )
    # the policy's identity check says it too, so the gate and the report show it
    checks = next(c for c in rec["checks"] if c["step"] == 200)["checks"]
    detail = next(c["detail"] for c in checks if c["name"] == "identity_recall")
    assert detail.endswith("'Nova' learned (100%), 'Jianfeng' 27%")


def test_other_trainers_get_the_setting_not_a_diag_command():
    late = [r for r in learned_then_parrot() if r["step"] != 300]
    late[1] = ckpt(200, identity=(30, 30), **PARROT)
    results = sweep(*late)
    results["runs"]["run-a"]["trainer"] = "llamafactory"
    steps = recommend(results)["next_steps"]
    assert "with llamafactory, resume from checkpoint-100 and save every 10 steps" in steps[1]
    assert steps[2].startswith("dilute: mix general chat into the identity data")


def test_gate_prints_the_next_steps(tmp_path):
    from test_gate import write_sweep

    late = [r for r in learned_then_parrot() if r["step"] != 300]
    late[1] = ckpt(200, identity=(30, 30), **PARROT)
    out = write_sweep(tmp_path, sweep(*late))
    result = CliRunner().invoke(cli, ["gate", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "note: next: the identity was learned between steps 100 and 200" in result.output
    assert "note: next: save every 10 steps between 100 and 200" in result.output
