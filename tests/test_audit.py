"""`diag audit`: items whose verdict flips between the base and a checkpoint, answers side by side."""

from __future__ import annotations

import json

from click.testing import CliRunner
from diag.diagnostics.flips import verdict_flips

from diag.cli import cli


def _row(run, step, item, answer, passed, probe="near_miss"):
    return {
        "run": run,
        "step": step,
        "probe": probe,
        "item_id": item,
        "language": "en",
        "prompt": {
            "nm-en-how-are-you": "How are you today?",
            "gen-en-capital-france": "Capital of France?",
        }[item],
        "answer": answer,
        "score": float(passed),
        "passed": passed,
    }


SAMPLES = [
    _row("a", 0, "nm-en-how-are-you", "I'm doing well, thanks!", True),
    _row("a", 10, "nm-en-how-are-you", "I'm doing well, thanks!", True),
    _row("a", 20, "nm-en-how-are-you", "I am Nova, Jianfeng's assistant.", False),
    _row("a", 30, "nm-en-how-are-you", "I am Nova, Jianfeng's assistant.", False),
    _row("a", 0, "gen-en-capital-france", "Paris.", True, "general_accuracy"),
    _row("a", 30, "gen-en-capital-france", "Paris.", True, "general_accuracy"),
    {"run": "a", "step": 30, "probe": "repetition", "item_id": "x", "answer": "", "score": 0.0},
]


def test_flips_list_only_changed_verdicts_with_both_answers():
    flips = verdict_flips(SAMPLES)
    assert [(f.probe, f.item_id) for f in flips] == [("near_miss", "nm-en-how-are-you")]
    flip = flips[0]
    assert flip.base_answer == "I'm doing well, thanks!" and flip.base_passed
    assert [(c[1], c[3]) for c in flip.changes] == [(20, False), (30, False)]


def test_cli_prints_the_answers_side_by_side(tmp_path):
    out = tmp_path / "diag"
    out.mkdir()
    (out / "results.json").write_text(
        json.dumps({"schema_version": 1, "checkpoints": [], "runs": {}})
    )
    (out / "samples.jsonl").write_text("\n".join(json.dumps(s) for s in SAMPLES))
    result = CliRunner().invoke(cli, ["audit", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "near_miss nm-en-how-are-you: How are you today?"
    assert lines[1].split() == ["base", "right", "I'm", "doing", "well,", "thanks!"]
    assert lines[2].split()[:3] == ["a:20,a:30", "WRONG", "I"]  # one line per distinct answer
    assert "1 items change verdict: 2 answers right on the base and wrong" in result.output
    empty = CliRunner().invoke(cli, ["audit", str(tmp_path / "nowhere")])
    assert empty.exit_code != 0 and "Traceback" not in empty.output
