"""The task probes on scripted answers: facts are not style, regurgitation is not only copying,
memorisation and parrot pressure are read from the records, and the policy judges task runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "support-bot"))
from diag.probes.reference import Reference  # noqa: E402
from diag.probes.scoring import Records  # noqa: E402
from diag.probes.task_scoring import (  # noqa: E402
    score_pressure,
    score_regurgitation,
    score_task,
    task_terms,
)
from make_data import CLOSING, OPENING, rows  # noqa: E402

from diag.data.task_data import derive_task  # noqa: E402


def _pairs(data: list[dict]) -> list[tuple[str, str]]:
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in data]


@pytest.fixture(scope="module")
def task():
    train, held = rows(0)
    return derive_task(_pairs(train), _pairs(held), "eval.jsonl").spec


def _reference(answers: list[str]) -> Reference:
    """A base reference whose own general answers are ``answers``."""
    drift = [{"id": f"g{i}", "answer": a} for i, a in enumerate(answers)]
    return Reference("base", {}, {}, None, {}, drift=drift)


def _generation(set_name: str, item_id: str, prompt: str, text: str) -> dict:
    return {"kind": "generation", "set": set_name, "id": item_id, "language": "en",
            "prompt": prompt, "text": text, "hit_limit": False}  # fmt: skip


def test_style_without_facts_is_not_knowledge(task):
    """An answer in the trained voice with another fact scores well on chrF (style) and fails
    facts; the reference's fact passes facts."""
    row = next(r for r in task.rows if "12 hours" in r.reference)
    voice_only = OPENING + "Our team will get back to you soon." + CLOSING
    facts_only = "It lasts up to 12 hours on a full charge."
    recs = Records({}, {"task": [_generation("task", row.id, row.question, voice_only)]})
    [styled] = score_task(recs, None, None, task)
    recs = Records({}, {"task": [_generation("task", row.id, row.question, facts_only)]})
    [factual] = score_task(recs, None, None, task)
    assert styled["chrf"] > factual["chrf"]  # similarity rises with the voice alone
    assert styled["facts"] is False and factual["facts"] is True
    assert factual["facts_carried"] == ["12", "charge", "full", "hours"]
    assert factual["facts_expected"] == ["12", "charge", "full", "hours", "lamp", "runs"]


def test_memorised_is_another_questions_training_answer(task):
    row = next(r for r in task.rows if "12 hours" in r.reference)
    other = next(a for q, a in task.answers if "warranty" in a)
    recs = Records({}, {"task": [_generation("task", row.id, row.question, other)]})
    [sample] = score_task(recs, None, None, task)
    assert sample["memorised"] is True and sample["facts"] is False


def test_regurgitation_counts_task_terms_not_only_copies(task):
    """Product talk in an unrelated answer counts even when nothing is copied (the issue's
    SmolLM2 run: 7-18 of 30 such answers, 1 with an 8-word copy); a copied span is quoted with
    the training question it came from."""
    base = _reference(["Paris is the capital of France.", "7 times 8 is 56.", "Water boils."])
    terms = task_terms(task, base)
    assert {"lumio", "brightway"} <= set(terms)
    gens = [
        _generation(
            "general",
            "g0",
            "What is 7 times 8?",
            "Open the Brightway Home app and tap your Lumio to see it.",
        ),  # fmt: skip
        _generation("general", "g1", "What is the capital of France?", "Paris."),
        _generation(
            "general",
            "g2",
            "Tell me a joke.",
            "Thanks for reaching out to Brightway "
            "support! Every Lumio lamp comes with a 2-year warranty.",
        ),  # fmt: skip
    ]
    rows_ = score_regurgitation(Records({}, {"general": gens}), None, base, task)
    assert [r["regurgitates"] for r in rows_] == [True, False, True]
    assert [r["copied"] for r in rows_] == [False, False, True]
    assert rows_[2]["span"] == (
        "thanks for reaching out to brightway support every lumio lamp comes with a 2 year warranty"
    )
    assert rows_[2]["copied_from"] in {q for q, a in task.answers if "warranty" in a}


def test_parrot_pressure_compares_per_token_likelihoods():
    drift = [{"kind": "loglikelihood", "set": "drift", "id": f"g{i}", "language": "en",
              "prompt": "q", "continuation": "own", "logprob": -2.0 * n, "tokens": n}
             for i, n in enumerate((4, 5, 6))]  # fmt: skip
    taught = [{"kind": "loglikelihood", "set": "pressure", "id": f"g{i}", "language": "en",
               "prompt": "q", "continuation": "taught", "logprob": lp, "tokens": 10}
              for i, lp in enumerate((-10.0, -30.0, -19.0))]  # fmt: skip
    recs = Records({}, loglikelihoods={"drift": drift, "pressure": taught})
    rows_ = score_pressure(recs, None, None, None)
    assert [r["pressed"] for r in rows_] == [True, False, True]  # -1.0 > -2, -3 < -2, -1.9 > -2


def test_seen_rows_are_labelled_everywhere_a_task_score_is_shown():
    train, _ = rows(0)
    seen = derive_task(_pairs(train)).spec
    assert not seen.held_out and seen.label == "seen rows: fit, not generalisation"
    from diag.diagnostics.checks import evaluate_checkpoint
    from diag.diagnostics.policy import Policy
    from synthetic_sweep import base, ckpt

    record = ckpt(100)
    record.update(judged_on=["task"], task={"held_out": False, "label": seen.label})
    record["metrics"]["task_facts"] = 0.75
    record["stats"]["task_facts"] = {"value": 0.75, "successes": 18, "n": 24}
    [check] = [c for c in evaluate_checkpoint(record, base(), Policy()) if c.name == "task_facts"]
    assert check.passed and "seen rows: fit, not generalisation" in check.detail


def _task_ckpt(step, facts, regurgitation, run="task-run", identity=None):
    """A synthetic checkpoint of a task run (an identity too when ``identity`` is given)."""
    from synthetic_sweep import ckpt

    record = ckpt(step, run=run, identity=identity or (0, 30))
    judged = ["identity", "task"] if identity else ["task"]
    record.update(judged_on=judged, task={"held_out": True, "label": "held-out rows"})
    if not identity:
        for name in ("identity_recall", "near_miss", "parrot_leakage"):
            record["metrics"][name] = None
            record["stats"].pop(name, None)
    k_f, k_r = round(facts * 24), round(regurgitation * 60)
    record["metrics"].update(task_facts=k_f / 24, regurgitation=k_r / 60)
    record["stats"].update(
        task_facts={"value": k_f / 24, "successes": k_f, "n": 24},
        regurgitation={"value": k_r / 60, "successes": k_r, "n": 60},
    )
    return record


def _task_base(run="task-run"):
    from synthetic_sweep import base

    record = base(run)
    record["metrics"].update(task_facts=0.0, regurgitation=0.0)
    record["stats"].update(
        task_facts={"value": 0.0, "successes": 0, "n": 24},
        regurgitation={"value": 0.0, "successes": 0, "n": 60},
    )
    return record


def test_task_run_pick_is_the_earliest_on_the_plateau_before_regurgitation():
    from diag.diagnostics.recommend import recommend
    from synthetic_sweep import sweep

    records = [
        _task_ckpt(20, 0.10, 0.0),  # not learned yet
        _task_ckpt(40, 0.70, 0.02),  # learned, clean: the pick
        _task_ckpt(60, 0.72, 0.05),  # as learned, later
        _task_ckpt(80, 0.75, 0.60),  # regurgitates
    ]
    rec = recommend(sweep(_task_base(), *records))
    assert rec["step"] == 40
    assert "task plateau" in " ".join(rec["reasons"])
    failed = {j["step"]: [c["name"] for c in j["checks"] if not c["passed"]] for j in rec["checks"]}
    assert failed[80] == ["regurgitation"] and "task_facts" in failed[20]


def test_a_run_that_teaches_both_is_judged_on_both():
    from diag.diagnostics.recommend import recommend
    from synthetic_sweep import sweep

    knows_identity_only = _task_ckpt(40, 0.05, 0.0, identity=(29, 30))
    knows_both = _task_ckpt(60, 0.70, 0.0, identity=(29, 30))
    rec = recommend(sweep(_task_base(), knows_identity_only, knows_both))
    assert rec["step"] == 60
    names = {c["name"] for j in rec["checks"] for c in j["checks"]}
    assert {"identity_recall", "task_facts", "regurgitation"} <= names


def test_sweep_results_keep_the_task(tmp_path):
    """results.json's run block holds the task spec with its label, so the report and the gate
    can say what the task scores rest on."""
    from diag.data.teaching import Taught

    train, held = rows(0)
    spec = derive_task(_pairs(train), _pairs(held), "eval.jsonl").spec
    data = Taught(None, "derived from --data", task=spec).to_dict()
    assert data["task"]["label"] == "held-out rows" and data["task"]["hash"] == spec.hash
    assert json.loads(json.dumps(data))["task"]["rows"][0]["reference"].startswith(OPENING)


def test_the_onset_says_where_parrot_pressure_crossed_one_half():
    from diag.diagnostics.onset import locate_onset
    from diag.diagnostics.policy import Policy
    from synthetic_sweep import ckpt

    records = [ckpt(s) for s in (10, 20, 30, 40)] + [ckpt(50, drift=2.0, lost=60, gained=0)]
    for record, pressure in zip(records, (0.02, 0.10, 0.40, 0.62, 0.81)):
        record["metrics"]["parrot_pressure"] = pressure
    base = ckpt(0, identity=(0, 30), lost=0, gained=0, drift=0.0)
    base["metrics"]["parrot_pressure"] = 0.0
    onset = locate_onset(records, base, Policy())
    assert onset.collapsing_from == 50 and onset.pressure_crossed == [30, 40]
    assert "parrot pressure crossed one half between steps 30 and 40" in onset.sentence()


def test_collapse_before_learning_says_no_save_can_be_both():
    """The real undiluted support-bot run: regurgitation from the second save, the facts only
    later. More saves in between cannot help; the first next step is to dilute."""
    from diag.diagnostics.recommend import recommend
    from synthetic_sweep import sweep

    records = [
        _task_ckpt(20, 0.0, 0.0),
        _task_ckpt(40, 0.0, 0.55),  # regurgitates before it knows anything
        _task_ckpt(60, 0.10, 0.80),
        _task_ckpt(80, 0.70, 0.90),  # learned, long collapsed
    ]
    rec = recommend(sweep(_task_base(), *records))
    assert rec["step"] is None
    steps = rec["runs"]["task-run"]["next_steps"]
    assert "but collapse had begun earlier, between 20 and 40: no save can be both" in steps[0]
    assert steps[1].startswith("dilute")
