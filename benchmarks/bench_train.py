"""LoRA training-step speed on the embedded SmolLM2-135M-Instruct: CPU thread choice.

    .venv/bin/python benchmarks/bench_train.py [--steps 4] [--threads 1 2]

Runs each thread count in a fresh process (torch's thread pool is per process) and times
optimizer steps of the demo's recipe (LoRA r16/alpha32 on all linear layers, batch 4, ~50 tokens).
The naive way is torch's default (one thread per core); on a CPU shared with other jobs its OpenMP
threads spin-wait on each other, which is why ``diag train`` uses 1 thread when the load average
reaches the core count. Prints one JSON object: seconds per step per thread count, load average,
and the ratio default/1-thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

STEP_CODE = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from diag.backend.loading import ensure_local_weights
from diag.models import resolve_base
threads, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
folder = ensure_local_weights(resolve_base(None))
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(0, 49000, (4, 50))
times = []
for _ in range(steps + 1):  # the first step warms up and is not counted
    t = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    times.append(time.perf_counter() - t)
print(json.dumps({"threads": threads, "seconds_per_step": sum(times[1:]) / steps}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    per_thread = {}
    for n in args.threads:
        proc = subprocess.run(
            [sys.executable, "-c", STEP_CODE, str(n), str(args.steps)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        per_thread[n] = json.loads(proc.stdout.strip().splitlines()[-1])["seconds_per_step"]
    default = os.cpu_count() or 1
    report = {
        "cores": default,
        "load_average_before": round(load_before, 2),
        "seconds_per_step": {str(k): round(v, 2) for k, v in per_thread.items()},
    }
    if 1 in per_thread and default in per_thread:
        report["default_over_1_thread"] = round(per_thread[default] / per_thread[1], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
