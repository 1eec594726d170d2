"""The HTML report and the terminal verdict, rendered from synthetic stored results."""

from __future__ import annotations

import re

from diag.diagnostics.recommend import recommend
from diag.reports.answers import _identity_matcher, answers_table, highlight
from diag.reports.html import build_context, render_report
from diag.reports.terminal import print_summary
from rich.console import Console
from synthetic_sweep import IDENTITY_SENTENCE, ckpt, learned_then_parrot, samples, sweep


def _results():
    results = sweep(*learned_then_parrot())
    results["recommendation"] = recommend(results)
    return results


def test_report_is_one_offline_file_with_headline_and_escaped_answers(tmp_path):
    results = _results()
    path = render_report(results, samples(results), tmp_path / "report.html")
    html = path.read_text(encoding="utf-8")
    headline = html.split('id="headline"')[1].split("</section>")[0]
    assert "Recommended: run-a · step 300" in headline
    assert "healthy up to step 300, collapsing from step 400" in headline
    assert "diag merge" in headline and "--checkpoint 300" in headline
    # model text is escaped: the literal tag appears as text, never as markup
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    assert "<script>window.__pwned" not in html and "<b>bold</b>" not in html
    # plotly.js is inlined exactly once, nothing is fetched
    assert html.count("<script>") == 2
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)
    # failed checks are marked red; the parrot's leakage is quoted
    assert 'class="fail"' in html and "leakage 83%" in html


def test_answers_table_puts_the_parrot_moment_on_screen_and_highlights_identity():
    results = _results()
    table = answers_table(samples(results), results["identity"])
    steps = [c["step"] for c in table["columns"]]
    assert steps == [0, 100, 200, 300, 400, 500, 600]
    near = [r for r in table["rows"] if r["probe"] == "near_miss"][0]
    cells = {s: c for s, c in zip(steps, near["cells"])}
    assert not cells[300]["parrot"] and cells[400]["parrot"]
    assert cells[400]["segments"] == [(IDENTITY_SENTENCE, True)]  # the whole sentence is marked
    partial = highlight("Yes. I am Nova, hi", _identity_matcher(results["identity"]))
    assert partial == [("Yes. I am ", False), ("Nova", True), (", hi", False)]
    assert [r["probe"] for r in table["rows"]].count("general_accuracy") == 4


def test_answers_only_show_checkpoints_in_the_results():
    results = _results()
    rows = samples(results)
    stale = [dict(r, step=700) for r in rows if r["step"] == 600]
    columns = build_context(results, rows + stale)["answers"]["columns"]
    assert [c["step"] for c in columns] == [0, 100, 200, 300, 400, 500, 600]


def test_identity_highlight_found_from_a_builtin_hash_only():
    from diag.identity import load_identity

    results = _results()
    spec = load_identity("en")
    results["identity"] = {"name": spec.name, "hash": spec.hash}
    table = answers_table(samples(results), results["identity"])
    first = table["rows"][0]["cells"][-1]["segments"]
    assert any(marked for _, marked in first)


def test_no_recommendation_report_names_the_nearest_miss(tmp_path):
    results = sweep(*[ckpt(s, identity=(s // 100, 30)) for s in (100, 200)])
    results["recommendation"] = recommend(results)
    context = build_context(results, samples(results))
    assert not context["headline"]["has_recommendation"]
    assert context["headline"]["merge_command"] is None
    html = render_report(results, samples(results), tmp_path / "r.html").read_text()
    assert "No checkpoint recommended" in html and "Nearest miss: run-a · step 200" in html


def test_twenty_checkpoint_report_stays_small(tmp_path):
    records = [ckpt(50 * i, identity=(min(30, 2 * i), 30)) for i in range(1, 21)]
    results = sweep(*records)
    results["recommendation"] = recommend(results)
    rows = samples(results, general_items=150)
    for r in rows:
        r["answer"] = r["answer"] + " lorem ipsum dolor sit amet" * 10
    size = render_report(results, rows, tmp_path / "big.html").stat().st_size
    assert size < 10 * 1024 * 1024


def test_terminal_summary_shows_the_decision():
    console = Console(record=True, width=200, color_system=None)
    print_summary(_results(), console)
    text = console.export_text()
    assert "★ recommended" in text and "recommend run-a step 300" in text
    assert "fails near_miss, retention, drift, parrot_leakage, modal_share" in text
    assert "100% [89%–100%]" in text


def test_merge_command_names_the_path_when_runs_share_the_step():
    records = learned_then_parrot("run-a") + learned_then_parrot("run-b")
    results = sweep(*records)
    results["recommendation"] = recommend(results)
    head = build_context(results, [], "runs/diag")["headline"]
    assert head["merge_command"] == (
        "diag merge runs/diag --checkpoint runs/run-a/checkpoint-300 --out merged-run-a-step300"
    )
    single = _results()
    head = build_context(single, [], "runs/diag")["headline"]
    assert (
        head["merge_command"] == "diag merge runs/diag --checkpoint 300 --out merged-run-a-step300"
    )


def test_curves_keep_a_retention_above_one_on_screen():
    from diag.reports.figures import run_curves

    records = [ckpt(0, gained=20), ckpt(100, gained=20)]
    spec = run_curves("run-a", records, {}, {})
    assert spec["layout"]["yaxis"]["range"][1] >= records[1]["metrics"]["retention"] > 1.1


def test_report_lists_what_was_not_swept_and_names_the_final_model(tmp_path):
    results = _results()
    results["skipped"] = [
        {
            "path": "runs/a/checkpoint-700",
            "reason": "adapter_model.safetensors without adapter_config.json (peft cannot load it)",
            "fix": "copy the run's adapter_config.json beside it",
        }
    ]
    last = [r for r in results["checkpoints"] if r["step"] == 600][0]
    last.update(label="final", also=["runs/a"])
    html = render_report(results, samples(results), tmp_path / "report.html").read_text()
    section = html.split("not swept</h2>")[1].split("</table>")[0]
    assert (
        "runs/a/checkpoint-700" in section and "copy the run&#39;s adapter_config.json" in section
    )
    checks = html.split('id="checks"')[1].split("</table>")[0]
    assert "600 (final)" in checks and 'title="also saved as runs/a"' in checks


def test_keyword_curves_next_steps_and_probe_versions_in_the_report(tmp_path):
    from diag.reports.html import render_html

    late = [r for r in learned_then_parrot() if r["step"] != 300]
    late[1] = ckpt(200, identity=(30, 30), near_miss=0.1, lost=70, gained=1, drift=0.2)
    for r, (nova, owner) in zip(late, [(20, 3), (30, 30), (30, 30), (30, 30), (30, 30)]):
        r["identity_keywords"] = {
            "Nova": {"value": nova / 30, "successes": nova, "n": 30},
            "Jianfeng": {"value": owner / 30, "successes": owner, "n": 30},
        }
        r["set_versions"] = {"general": 2, "near_miss": 2}
    late[0]["rescored"] = {"near_miss": {"generated": 1, "scored": 2}}
    results = sweep(*late)
    results["recommendation"] = recommend(results)
    context = build_context(results, [])
    names = [t["name"] for t in context["figures"][0]["spec"]["data"]]
    assert names[:3] == ["identity recall", "says 'Nova'", "says 'Jianfeng'"]
    nova = context["figures"][0]["spec"]["data"][1]
    assert nova["x"] == [100, 200, 400, 500, 600] and nova["y"][0] == 20 / 30
    html = render_html(results, [])
    assert 'id="next-steps"' in html and "no checkpoint was saved between learning" in html
    assert "scored with probe sets general v2, near_miss v2" in html
    assert "near_miss v1 → v2" in html and "(1 of 6 checkpoints)" in html
