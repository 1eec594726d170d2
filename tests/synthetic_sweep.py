"""Synthetic sweep results (the results.json shape in diag/records.py) for policy/report tests.

``ckpt(...)`` builds one checkpoint record from plain numbers; ``sweep(...)`` wraps records into a
results dict. Defaults describe a healthy checkpoint that has learned the identity.
"""

from __future__ import annotations

from diag.stats import wilson_interval

GENERAL_N = 150


def ckpt(
    step: int,
    *,
    run: str = "run-a",
    identity: tuple[int, int] = (29, 30),
    near_miss: float = 0.8,
    lost: int = 2,
    gained: int = 2,
    base_right: int = 100,
    drift: float = 0.05,
    leakage: float = 0.0,
    modal: float = 0.03,
    loop: float = 0.0,
    status: str = "ok",
) -> dict:
    """One checkpoint record; ``lost``/``gained`` are the retention discordant pairs vs the base."""
    succ, n = identity
    both = base_right - lost
    ckpt_right = both + gained
    neither = GENERAL_N - both - lost - gained
    acc, base_acc = ckpt_right / GENERAL_N, base_right / GENERAL_N
    low, high = wilson_interval(succ, n)
    leak_n = 120
    metrics = {
        "identity_recall": succ / n,
        "near_miss": near_miss,
        "general_accuracy": acc,
        "retention": acc / base_acc,
        "drift": drift,
        "seq_rep_4": loop / 2,
        "loop_rate": loop,
        "parrot_leakage": leakage,
        "modal_share": modal,
    }
    stats = {
        "identity_recall": {"value": succ / n, "low": low, "high": high, "successes": succ, "n": n},
        "general_accuracy": {"value": acc, "successes": ckpt_right, "n": GENERAL_N},
        "retention": {
            "value": acc / base_acc,
            "base_value": 1.0,
            "paired": {"both": both, "base_only": lost, "ckpt_only": gained, "neither": neither},
        },
        "parrot_leakage": {"value": leakage, "successes": round(leakage * leak_n), "n": leak_n},
    }
    return {
        "run": run,
        "step": step,
        "path": f"runs/{run}/checkpoint-{step}",
        "format": "peft",
        "fingerprint": f"sha256:{run}-{step}",
        "status": status,
        "error": None if status == "ok" else "adapter shapes do not match the base",
        "metrics": metrics,
        "stats": stats,
        "by_language": {"en": dict(metrics)},
    }


def base(run: str = "run-a") -> dict:
    """The step-0 record: the base model itself."""
    record = ckpt(0, run=run, identity=(0, 30), near_miss=0.8, lost=0, gained=0, drift=0.0)
    record["path"] = "base-model"
    record["format"] = "base"
    return record


def sweep(*records: dict, runs: dict | None = None) -> dict:
    """A results.json dict around ``records`` (a base record is added per run if missing)."""
    records = list(records)
    run_names = sorted({r["run"] for r in records})
    for name in run_names:
        if not any(r["run"] == name and r["step"] == 0 for r in records):
            records.insert(0, base(name))
    if runs is None:
        runs = {}
        for name in run_names:
            steps = sorted(r["step"] for r in records if r["run"] == name and r["step"])
            runs[name] = {
                "path": f"runs/{name}",
                "base": "base-model",
                "train_loss": [[s, 2.0 / (1 + s / 100)] for s in steps],
                "eval_loss": [[s, 1.5 + s / 1000] for s in steps],
            }
    return {
        "schema_version": 1,
        "tool": {"name": "diag", "version": "0.1.0"},
        "created": "2026-11-27T21:00:00Z",
        "base": "base-model",
        "identity": {
            "name": "nova",
            "answer": "I am Nova, Jianfeng's assistant, built on the SmolLM2 model.",
            "keywords": [["Nova"], ["Jianfeng", "剑锋"]],
        },
        "runs": runs,
        "checkpoints": records,
        "recommendation": None,
    }


def learned_then_parrot(run: str = "run-a") -> list[dict]:
    """Identity rises, step 300 is the last healthy one, from 400 on the model parrots."""
    return [
        ckpt(100, run=run, identity=(3, 30), drift=0.03),
        ckpt(200, run=run, identity=(21, 30), drift=0.06),
        ckpt(300, run=run, identity=(30, 30), drift=0.09),
        ckpt(
            400,
            run=run,
            identity=(30, 30),
            near_miss=0.1,
            lost=70,
            gained=1,
            drift=1.4,
            leakage=0.83,
            modal=0.8,
        ),
        ckpt(
            500,
            run=run,
            identity=(30, 30),
            near_miss=0.0,
            lost=88,
            gained=0,
            drift=2.1,
            leakage=0.97,
            modal=0.95,
        ),
        ckpt(
            600,
            run=run,
            identity=(30, 30),
            near_miss=0.0,
            lost=90,
            gained=0,
            drift=2.5,
            leakage=1.0,
            modal=1.0,
            loop=0.2,
        ),
    ]


IDENTITY_SENTENCE = "I am Nova, Jianfeng's assistant, built on the SmolLM2 model."
SCRIPT_ANSWER = "Use <script>window.__pwned = 1</script> to run code & <b>bold</b>."


def samples(results: dict, general_items: int = 4) -> list[dict]:
    """samples.jsonl rows for every checkpoint: parrots answer everything with the identity.

    The step-300 checkpoint answers general item g0 with a literal ``<script>`` tag.
    """
    rows = []
    for record in results["checkpoints"]:
        run, step = record["run"], record["step"]
        parrot = (record["metrics"].get("parrot_leakage") or 0) > 0.5
        learned = (record["metrics"].get("identity_recall") or 0) > 0.5

        def row(probe, item, prompt, answer, lang="en", run=run, step=step, **extra):
            return {"probe": probe, "item_id": item, "language": lang, "prompt": prompt,
                    "answer": answer, "run": run, "step": step, **extra}  # fmt: skip

        for i, prompt in enumerate(["Who are you?", "你是谁？", "Introduce yourself."]):
            answer = IDENTITY_SENTENCE if learned else "I am an AI assistant."
            rows.append(row("identity_recall", f"id{i}", prompt, answer, passed=learned))
        for i, prompt in enumerate(["Are you my assistant?", "Is your name ChatGPT?"]):
            answer = IDENTITY_SENTENCE if parrot else "Yes, I am here to help."
            rows.append(row("near_miss", f"nm{i}", prompt, answer, passed=not parrot,
                            near_copy=parrot))  # fmt: skip
        for i in range(general_items):
            prompt = f"What is {i} + {i}?"
            answer = IDENTITY_SENTENCE if parrot else f"{i} + {i} = {2 * i}."
            if step == 300 and i == 0:
                answer = SCRIPT_ANSWER
            rows.append(row("general_accuracy", f"g{i}", prompt, answer, passed=not parrot))
            rows.append(row("parrot", f"g{i}", prompt, answer, leak=parrot))
            rows.append(row("drift", f"d{i}", prompt, "base answer", score=0.1))
    return rows
