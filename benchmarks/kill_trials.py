"""Crash safety: kill -9 a sweep at random moments, rerun it, compare with an uninterrupted one.

    .venv/bin/python benchmarks/kill_trials.py --trials 20 [--seed 0] [--work /tmp/kill-trials]

On the tiny seeded model of tests/tiny.py (no download): a run of 4 LoRA checkpoints is swept
once without interruption (the reference). Each trial starts the same sweep into a fresh result
folder in a subprocess, kills it with SIGKILL at a random moment of its run, checks that every
JSON file it left parses (atomic writes: never half-written), reruns the sweep to completion and
compares every checkpoint's metrics, intervals, fingerprint and every stored answer with the
reference, exactly. It also checks that no temp file is left behind. Prints one line per trial and
a summary; exit 1 if any trial differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

SWEEP = """
import sys
from diag.diagnostics.sweeper import sweep
from diag.types import GenerationConfig
sweep(sys.argv[1], base=sys.argv[2], out=sys.argv[3], identity="en", size="quick",
      probes="identity_recall,general_accuracy,drift",
      generation=GenerationConfig(max_new_tokens=8, batch_size=32), progress="quiet")
"""


def _age(root: Path) -> None:
    when = time.time() - 600
    for dirpath, _, files in os.walk(root):
        for name in files:
            os.utime(Path(dirpath) / name, (when, when))


def _run(runs: Path, base: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SWEEP, str(runs), str(base), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _comparable(out: Path) -> dict:
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = {
        (c["run"], c["step"]): (c["status"], c["metrics"], c["stats"], c["fingerprint"])
        for c in data["checkpoints"]
    }
    samples = sorted((out / "samples.jsonl").read_text(encoding="utf-8").splitlines())
    return {"rows": rows, "samples": samples, "complete": data["complete"]}


def _left_json_is_valid(out: Path) -> bool:
    for path in out.rglob("*.json"):
        if path.name.startswith("."):
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/diag-kill-trials"))
    args = parser.parse_args()
    from tiny import build_lora_adapter, build_tiny_model

    shutil.rmtree(args.work, ignore_errors=True)
    base = build_tiny_model(args.work / "base")
    runs = args.work / "runs"
    for i, step in enumerate((10, 20, 30, 40)):
        build_lora_adapter(base, runs / "lora" / f"checkpoint-{step}", seed=200 + i)
    _age(runs)

    started = time.perf_counter()
    reference = args.work / "reference"
    if _run(runs, base, reference).wait() != 0:
        print("reference sweep failed")
        return 1
    duration = time.perf_counter() - started
    expected = _comparable(reference)
    print(f"reference sweep: {duration:.1f} s, {len(expected['rows'])} rows")

    rng = random.Random(args.seed)
    failures = 0
    for trial in range(args.trials):
        out = args.work / f"trial-{trial:02d}"
        delay = rng.uniform(0.3, duration)
        proc = _run(runs, base, out)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        valid = _left_json_is_valid(out) if out.exists() else True
        rerun = _run(runs, base, out).wait()
        leftovers = [p for p in out.rglob("*.tmp")]
        same = rerun == 0 and _comparable(out) == expected
        ok = valid and same and not leftovers
        failures += not ok
        print(
            f"trial {trial:2d}: kill at {delay:5.1f} s ({'killed' if killed else 'had finished'}), "
            f"files left valid={valid}, rerun equal={same}, temp files left={len(leftovers)} "
            f"-> {'ok' if ok else 'FAIL'}"
        )
    print(f"{args.trials - failures}/{args.trials} trials equal to the uninterrupted sweep")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
