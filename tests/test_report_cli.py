"""`diag report RESULTS_DIR` re-renders from stored files, without a model."""

from __future__ import annotations

import json

from click.testing import CliRunner
from diag.diagnostics.recommend import recommend
from synthetic_sweep import learned_then_parrot, samples, sweep

from diag.cli import cli
from diag.files import write_json_atomic


def _results():
    results = sweep(*learned_then_parrot())
    results["recommendation"] = recommend(results)
    return results


def test_diag_report_rerenders_from_stored_files(tmp_path):
    results = _results()
    write_json_atomic(tmp_path / "results.json", results)
    (tmp_path / "samples.jsonl").write_text(
        "\n".join(json.dumps(r) for r in samples(results)), encoding="utf-8"
    )
    runner = CliRunner()
    out = runner.invoke(cli, ["report", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "recommend run-a step 300" in out.output
    assert (tmp_path / "report.html").stat().st_size > 1_000_000
    # re-judged with a stricter identity bound: nothing qualifies, stored results untouched
    before = (tmp_path / "results.json").read_text()
    strict = runner.invoke(
        cli,
        [
            "report",
            str(tmp_path),
            "--set",
            "identity_min_low=0.95",
            "--out",
            str(tmp_path / "s.html"),
        ],
    )
    assert strict.exit_code == 0, strict.output
    assert "no checkpoint is eligible" in strict.output
    assert (tmp_path / "results.json").read_text() == before
    bad = runner.invoke(cli, ["report", str(tmp_path), "--set", "drift_mx=1"])
    assert bad.exit_code == 2 and "did you mean 'drift_max'" in bad.output
    missing = runner.invoke(cli, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no sweep results" in missing.output
