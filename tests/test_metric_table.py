"""A metric is declared once (diag.metrics.METRICS): everything else is derived from the table."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner
from diag.diagnostics.sweeper import sweep
from diag.probes.aggregate import AGGREGATORS
from diag.probes.registry import PROBES
from test_sweep_cache import GEN, _run_dir

from diag.cli import cli
from diag.metrics import AGGREGATIONS, METRICS, Metric, markdown_table

DOCS = Path(__file__).resolve().parents[1] / "docs" / "probes.md"


def test_docs_list_exactly_the_metric_table():
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"<!-- metrics:start -->\n(.*?)<!-- metrics:end -->", text, re.S)
    assert block is not None, "docs/probes.md lost its generated metric table"
    assert block.group(1) == markdown_table()


def test_every_metric_has_a_probe_and_an_aggregator():
    for metric in METRICS.values():
        assert metric.probe in PROBES, metric.name
        assert metric.aggregate in AGGREGATORS, metric.name
    assert set(AGGREGATORS) == set(AGGREGATIONS)
    assert all(PROBES[p].metrics for p in PROBES)  # no probe without a metric
    assert PROBES["parrot"].metrics == ("parrot_leakage", "modal_share")
    assert PROBES["drift"].direction == "lower" and PROBES["near_miss"].direction == "higher"


def test_a_metric_added_in_one_place_reaches_results_report_and_gate(
    tiny_model_dir, tiny_adapters, tmp_path, monkeypatch
):
    toy = Metric(
        "limit_hit_rate", "repetition", "hit_limit", "proportion", False, "fraction",
        "Answers cut at the token limit", "cut", "share of general answers cut by max_new_tokens",
        curve="#123456",
    )  # fmt: skip
    monkeypatch.setitem(METRICS, toy.name, toy)
    root = _run_dir(tmp_path, tiny_adapters[:1], steps=(10,))
    result = sweep(
        root,
        base=tiny_model_dir,
        identity="en",
        progress="quiet",
        size="quick",
        probes="identity_recall,repetition",
        generation=GEN,
    )
    out = root / "diag"
    stored = json.loads((out / "results.json").read_text(encoding="utf-8"))
    ckpt = next(c for c in stored["checkpoints"] if c["step"] == 10)
    # the tiny model rambles: 8 new tokens cut nearly every answer
    assert ckpt["metrics"]["limit_hit_rate"] > 0.5
    assert ckpt["stats"]["limit_hit_rate"]["n"] == ckpt["stats"]["seq_rep_4"]["n"]
    assert "limit_hit_rate" in ckpt["by_language"]["en"]
    assert "limit_hit_rate" in (out / "scores.csv").read_text(encoding="utf-8")
    assert result.checkpoint("lora", 10)["metrics"]["limit_hit_rate"] is not None

    runner = CliRunner()
    report = runner.invoke(cli, ["report", str(out), "--quiet"])
    assert report.exit_code == 0, report.output
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Answers cut at the token limit" in html  # its table and its curve
    assert "#123456" in html

    gate = runner.invoke(cli, ["gate", str(out), "--checkpoint", "10", "--json"])
    measured = {m["metric"]: m for m in json.loads(gate.stdout)["measured"]}
    assert measured["limit_hit_rate"]["label"] == "Answers cut at the token limit"
    assert measured["limit_hit_rate"]["higher_is_better"] is False
    summary = tmp_path / "summary.md"
    runner.invoke(cli, ["gate", str(out), "--checkpoint", "10", "--summary", str(summary)])
    assert "| Answers cut at the token limit |" in summary.read_text(encoding="utf-8")
