"""Where one screen and one full suite spend their time, on real LoRA checkpoints of SmolLM2.

    .venv/bin/python benchmarks/bench_profile.py RUNS_DIR --checkpoints undiluted:20,undiluted:50
        [--out profile.json] [--arms shared,unshared] [--languages en]

RUNS_DIR: runs ``diag train`` wrote (e.g. ``diag demo``'s ``demo-runs/runs``). In this one process,
with the embedded SmolLM2-135M-Instruct and the demo's probe settings (the identity's language,
48 new tokens, batches of 64), it probes the bare base with the full suite (the reference, as
the sweep does once per sweep), then each named checkpoint as the staged sweep would:

  screen              the screen (the staged sweep's first stage)
  full after screen   the full suite reusing the screen's answers (a promoted checkpoint), asking
                      every prompt (a checkpoint that may be eligible is never stopped early)
  full alone          the full suite from nothing (``--size full``; with ``--alone``)

Each is split by benchmarks/profiler.py into generation prefill, decode steps, log-likelihood
passes, adapter swap, scoring and I/O. ``--arms``: ``shared`` is the backend as it is (the
shared prompt prefix run once per log-likelihood batch), ``unshared`` scores every row in full
(the log-likelihood path before issue 28); arms alternate per checkpoint on the same warm model,
and their log-likelihoods are compared (max absolute difference). Prints one JSON line per task
and a summary; ``--out`` keeps everything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


def find_checkpoints(runs: Path, wanted: list[str]):
    from diag.diagnostics.discover import discover

    found = discover(runs, settle_seconds=0.0).checkpoints
    out = []
    for item in wanted:
        run, step = item.split(":")
        hits = [c for c in found if Path(str(c.run)).name == run and c.step == int(step)]
        if not hits:
            raise SystemExit(f"no checkpoint {item} under {runs}")
        out.append(hits[0])
    return out


def unshared_loglikelihood(lm) -> None:
    """Score log-likelihoods with every row in full (the path before the shared prefix)."""
    score = lm._score_batch

    def every_row(contexts, conts):
        lm.share_prefix = False
        try:
            return score(contexts, conts)
        finally:
            lm.share_prefix = True

    lm._score_batch = every_row


def likelihoods(run) -> dict:
    return {
        (r["set"], r["id"], r["continuation"]): r["logprob"]
        for r in run.records
        if r.get("kind") == "loglikelihood"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--checkpoints", default="undiluted:20,undiluted:50")
    parser.add_argument("--identity", default="en")
    parser.add_argument("--system", default="You are a helpful assistant.")
    parser.add_argument("--languages", default="en")
    parser.add_argument("--arms", default="shared,unshared")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--alone", action="store_true", help="also the full suite from nothing")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own; on "
                        "a CPU other jobs keep busy, 1 avoids OpenMP spin-waiting)")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from diag.diagnostics import workers
    from diag.diagnostics.stages import make_stages
    from diag.diagnostics.workers import ProbeTask
    from diag.probes.suite import rescore, subset_records
    from profiler import Profiler

    from diag.backend.hf import HFBackend
    from diag.identity import load_identity
    from diag.types import DEFAULT_GENERATION, ChatFormat

    spec = load_identity(args.identity)
    chat = ChatFormat(system=args.system)
    screen, full = make_stages(spec, None, "staged", DEFAULT_GENERATION, (), [args.languages])
    checkpoints = find_checkpoints(args.runs, args.checkpoints.split(","))
    arms = args.arms.split(",")
    started = time.perf_counter()
    lm = HFBackend.load(None, device="cpu")
    load_seconds = time.perf_counter() - started
    report: dict = {"load_seconds": round(load_seconds, 1), "arms": {}}
    with Profiler() as prof:
        base = workers.execute(lm, ProbeTask("base (full suite)", None, chat, spec, full.settings))
        part = subset_records(base.run.records, screen.sets, "quick", screen.settings["languages"])
        references = {"screen": rescore(part, spec, None, screen.sets).reference}
        references["full"] = base.run.reference
        runs: dict = {}
        for ckpt in checkpoints:
            for arm in arms:
                lm.__dict__.pop("_score_batch", None)  # the backend as it is
                if arm == "unshared":
                    unshared_loglikelihood(lm)
                label = f"{Path(str(ckpt.run)).name} step {ckpt.step}"
                tasks = [
                    ProbeTask(f"{label} [{arm}]", ckpt, chat, spec, screen.settings,
                              reference=references["screen"]),
                ]  # fmt: skip
                outcome = workers.execute(lm, tasks[0])
                fulls = [("full after screen", outcome.run.records)]
                if args.alone:
                    fulls.append(("full alone", ()))
                for name, reuse in fulls:
                    task = ProbeTask(
                        f"{label} [{arm}] ({name}, full suite)", ckpt, chat, spec, full.settings,
                        reference=references["full"], reuse=tuple(reuse),
                    )  # fmt: skip
                    done = workers.execute(lm, task)  # the profiler's wrapper
                    runs.setdefault((label, name), {})[arm] = done.run
                lm.use_adapter(None)
        lm.__dict__.pop("_score_batch", None)
    for task in prof.tasks:
        print(json.dumps(task))
    differences = {}
    for (label, name), by_arm in runs.items():
        if len(by_arm) == 2:
            a, b = (likelihoods(run) for run in by_arm.values())
            differences[f"{label} {name}"] = max(abs(a[k] - b[k]) for k in a) if a else 0.0
    summary: dict = {}
    for task in prof.tasks:
        arm = "shared" if "[shared]" in task["label"] else "unshared"
        kind = "base" if task["stage"] == "base" else task["label"].split("(")[-1].split(",")[0]
        kind = "screen" if task["stage"] == "screen" else kind
        name = "base" if task["stage"] == "base" else f"{kind} [{arm}]"
        row = summary.setdefault(name, {"tasks": 0, "seconds": 0.0, "parts": {}})
        row["tasks"] += 1
        row["seconds"] = round(row["seconds"] + task["seconds"], 2)
        for k, v in task["parts"].items():
            row["parts"][k] = round(row["parts"].get(k, 0.0) + v, 2)
    report.update(
        summary=summary,
        max_loglikelihood_difference=differences,
        tasks=prof.tasks,
        outside_tasks={k: round(v, 2) for k, v in prof.outside.items()},
        load_average=os.getloadavg(),
    )
    print(json.dumps({"summary": summary, "max_ll_diff": differences}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
