"""The staged sweep against the exhaustive one: wall, CPU, prompts asked, and the same verdict?

    .venv/bin/python benchmarks/bench_staged.py RUNS_DIR --work DIR [--sizes quick,staged,full]
    .venv/bin/python benchmarks/bench_staged.py --tiny 50 --work DIR     # 50 tiny-model adapters
    .venv/bin/python benchmarks/bench_staged.py --simulated 200 --work DIR

``--simulated N``: one run of N checkpoints that learns the identity by a quarter of the way and
parrots from three fifths on, with per-checkpoint noise, on the tiny model's layout; a scripted
model answers as each checkpoint would (tests/simulated_runs.py), so what is measured is what
the sweep asks (prompts, full suites), not the model's speed.

Each size sweeps RUNS_DIR from scratch into DIR/<size> (its own cache, so nothing is reused
between sizes), in this one process, with the real model. Prompts are counted at the backend:
every generated answer and every scored log-likelihood. The verdict compared is what a user reads:
the pick (or the nearest miss) overall and per run, and each run's onset. Prints one JSON line
per size, then the ratios against ``full`` and against ``quick`` (the screen alone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


def decision(data: dict) -> dict:
    rec = data["recommendation"]
    out = {"overall": [rec["run"], rec["step"], (rec.get("nearest_miss") or {}).get("step")]}
    for run, pick in sorted(rec["runs"].items()):
        onset = pick.get("onset") or {}
        out[run] = [
            pick["step"],
            (pick.get("nearest_miss") or {}).get("step"),
            onset.get("healthy_until"),
            onset.get("collapsing_from"),
        ]
    return out


class Counter:
    """Counts what the backend is asked, by patching HFBackend for the length of a sweep."""

    def __init__(self, cls=None):
        from diag.backend.hf import HFBackend

        self.cls, self.generated, self.scored = cls or HFBackend, 0, 0
        self.originals = (self.cls.generate, self.cls.loglikelihood)

    def __enter__(self):
        generate, loglikelihood = self.originals
        counter = self

        def counted_generate(backend, prompts, *args, **kwargs):
            counter.generated += len(prompts)
            return generate(backend, prompts, *args, **kwargs)

        def counted_loglikelihood(backend, requests, *args, **kwargs):
            counter.scored += len(requests)
            return loglikelihood(backend, requests, *args, **kwargs)

        self.cls.generate, self.cls.loglikelihood = counted_generate, counted_loglikelihood
        return self

    def __exit__(self, *exc):
        self.cls.generate, self.cls.loglikelihood = self.originals


def run_size(runs: Path, out: Path, size: str, args) -> dict:
    from diag.diagnostics.sweeper import sweep

    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.perf_counter(), cpu_seconds()
    with Counter(args.model_class) as counted:
        result = sweep(
            runs,
            base=args.base,
            identity=args.identity,
            out=out,
            size=size,
            languages=args.languages,
            progress="plain" if args.verbose else "quiet",
            settle_seconds=0,
            load_model=args.load_model,
        )
    records = [c for c in result.data["checkpoints"] if c["step"]]
    return {
        "size": size,
        "wall_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(cpu_seconds() - cpu, 1),
        "checkpoints": len(records),
        "full_suite_checkpoints": sum(c.get("stage") != "screen" for c in records),
        "prompts_generated": counted.generated,
        "loglikelihoods": counted.scored,
        "verdict": result.data["recommendation"]["verdict"],
        "decision": decision(result.data),
    }


def tiny_runs(work: Path, count: int) -> tuple[Path, Path]:
    """A tiny seeded model and ``count`` LoRA checkpoints of one run on it (tests/tiny.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny import build_lora_adapter, build_tiny_model

    base = build_tiny_model(work / "tiny-model")
    runs = work / "tiny-runs"
    for i in range(1, count + 1):
        target = runs / "run" / f"checkpoint-{10 * i}"
        if not target.exists():
            build_lora_adapter(base, target, seed=1000 + i)
    return runs, base


def simulated_runs(args) -> Path:
    """One simulated run of ``args.simulated`` checkpoints on the tiny model's layout."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from simulated_runs import SimulatedModel, learned_then_parrot, write_run
    from tiny import build_tiny_model

    n = args.simulated
    args.base = str(build_tiny_model(args.work / "tiny-model"))
    runs = args.work / "simulated-runs"
    shutil.rmtree(runs, ignore_errors=True)
    write_run(
        runs, "long", learned_then_parrot(n, learn_by=n // 4, parrot_from=3 * n // 5, noise=7)
    )
    args.load_model, args.model_class = SimulatedModel, SimulatedModel
    return runs


def sweep_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every sweep benchmark takes: RUNS_DIR or --tiny N, --work, the identity."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--identity", default="en")
    parser.add_argument("--languages")
    parser.add_argument("--base")
    parser.add_argument("--tiny", type=int, help="sweep this many tiny-model adapters instead")
    parser.add_argument("--simulated", type=int, help="sweep a simulated run of this many")
    parser.add_argument("--verbose", action="store_true")
    return parser


def runs_to_sweep(parser: argparse.ArgumentParser, args) -> Path:
    """RUNS_DIR, or the --tiny runs built under --work (then ``args.base`` is their model)."""
    args.work.mkdir(parents=True, exist_ok=True)
    args.load_model, args.model_class = None, None
    if args.simulated:
        return simulated_runs(args)
    if args.tiny:
        runs, base = tiny_runs(args.work, args.tiny)
        args.base = str(base)
        return runs
    if args.runs is None:
        parser.error("give RUNS_DIR or --tiny N")
    return args.runs


def main() -> None:
    parser = sweep_parser(__doc__)
    parser.add_argument("--sizes", default="quick,staged,full")
    args = parser.parse_args()
    runs = runs_to_sweep(parser, args)
    rows = {}
    for size in args.sizes.split(","):
        rows[size] = run_size(runs, args.work / size, size, args)
        print(json.dumps(rows[size], ensure_ascii=False), flush=True)
    summary = {}
    for size, row in rows.items():
        for other in ("full", "quick"):
            if other in rows and other != size:
                ref = rows[other]
                summary[f"{size}/{other} wall"] = round(row["wall_s"] / max(ref["wall_s"], 1e-9), 2)
                summary[f"{size}/{other} cpu"] = round(row["cpu_s"] / max(ref["cpu_s"], 1e-9), 2)
        if "full" in rows:
            summary[f"{size} same decision as full"] = row["decision"] == rows["full"]["decision"]
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
