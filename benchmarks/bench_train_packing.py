"""Training speed of the demo's recipe: padded batches (before issue 28) vs packed ones, same data.

    .venv/bin/python benchmarks/bench_train_packing.py --work DIR [--steps 15] [--repeats 2]
        [--threads N] [--arms padded,packed] [--runs undiluted,diluted]

Trains ``diag/examples/demo.yaml`` (LoRA r16 on all linear layers of SmolLM2-135M, batch 4,
a checkpoint every 5 steps) for ``--steps`` steps, undiluted (general_ratio 0) and diluted (the
config's 0.5, with self-rehearsal), once per arm, each in a fresh process, the arms alternating
(padded, packed, padded, packed, ...) so a machine shared with other jobs slows both alike:

  padded   every batch padded to its longest example (``PadCollator``, the collator before)
  packed   every batch packed end to end in one row, logits only where a token is trained
           (``PackCollator``, chosen by ``choose_collator`` after its check)

Both arms train on the same examples in the same order (the rehearsal answers are generated
once, into DIR's own DIAG_HOME, before the first timed run). Seconds per step are Trainer's
train() time over the steps, checkpoint saving included, as ``diag demo`` reports it. Prints
one JSON line per run (with the per-step losses, to compare the curves), then per run kind the
median s/step of each arm and the ratio padded/packed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

TRAIN_CODE = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
arm, ratio, steps, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
import diag.train.packing as packing
from diag.train.config import load_config
from diag.train.dataset import PadCollator
from diag.train.demo_pipeline import demo_config_path
from diag.train.recipe import run_training
chosen = {}
choose = packing.choose_collator
def collator(model, examples, pad_id, batch_size):
    made = PadCollator(pad_id) if arm == "padded" else choose(model, examples, pad_id, batch_size)
    chosen["collator"] = type(made).__name__
    return made
packing.choose_collator = collator
overrides = [f"output_dir={out}", f"max_steps={steps}", f"mix.general_ratio={ratio}"]
if threads != "auto":
    overrides.append(f"cpu_threads={threads}")
result = run_training(load_config(demo_config_path(), overrides))
last = result.checkpoints[-1] if result.checkpoints else None  # its state logs every step so far
state = json.load(open(last / "trainer_state.json")) if last else {"log_history": []}
print(json.dumps({"seconds_per_step": result.seconds_per_step, "steps": result.steps,
                  "collator": chosen.get("collator"), "checkpoints": [p.name for p in result.checkpoints],
                  "losses": [round(h["loss"], 4) for h in state["log_history"] if "loss" in h]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", default=None, help="torch threads for every run (default: "
                        "what diag train picks now, the same for every run)")  # fmt: skip
    parser.add_argument("--arms", default="padded,packed")
    parser.add_argument("--runs", default="undiluted,diluted")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DIAG_HOME=str(args.work / "diag-home"))
    home = Path(env["DIAG_HOME"])
    home.mkdir(exist_ok=True)
    models = Path.home() / ".cache" / "diag" / "models"
    if models.is_dir() and not (home / "models").exists():
        (home / "models").symlink_to(models)
    if args.threads is None:
        from diag.train.threads import set_cpu_threads

        args.threads = str(set_cpu_threads(None))
    ratios = {"undiluted": "0.0", "diluted": "0.5"}
    results: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for run in args.runs.split(","):
            for arm in args.arms.split(","):
                out = args.work / f"{run}-{arm}-{repeat}"
                shutil.rmtree(out, ignore_errors=True)
                proc = subprocess.run(
                    [sys.executable, "-c", TRAIN_CODE, arm, ratios[run], str(args.steps),
                     str(out), args.threads],
                    capture_output=True, text=True, env=env,
                )  # fmt: skip
                if proc.returncode:
                    sys.exit(proc.stderr[-3000:])
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row.update(run=run, arm=arm, repeat=repeat, load_average=os.getloadavg()[0])
                print(json.dumps(row), flush=True)
                results.setdefault((run, arm), []).append(row)
    summary = {"threads": args.threads, "steps": args.steps}
    for run in args.runs.split(","):
        medians = {
            arm: statistics.median(r["seconds_per_step"] for r in results[(run, arm)])
            for arm in args.arms.split(",")
        }
        summary[run] = {arm: round(v, 3) for arm, v in medians.items()}
        if {"padded", "packed"} <= medians.keys():
            summary[run]["padded_over_packed"] = round(medians["padded"] / medians["packed"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
