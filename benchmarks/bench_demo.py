"""`diag demo` end to end, timed by part: both training runs, self-rehearsal, the sweep's tasks.

    .venv/bin/python benchmarks/bench_demo.py --work DIR [--fresh-home] [KEY=VALUE ...]
    .venv/bin/python benchmarks/bench_demo.py --work DIR --sweep-only RUNS [--unshared-ll]

Runs ``run_demo`` in this process into DIR/demo with benchmarks/profiler.py patched in, as
``make demo`` does on a fresh clone. ``--fresh-home``: a new ``$DIAG_HOME`` under DIR whose
converted models are the user's own (linked), so nothing cached from an earlier run (the
rehearsal answers) is reused. Writes DIR/demo-profile.json: the demo's own timing, the wall time
of self-rehearsal, every probe task (label, stage, seconds, where its time went, what it asked)
and a summary per stage; prints the summary and the picks.

``--sweep-only RUNS``: only the demo's sweep (the same call ``run_demo`` makes) of runs already
trained (e.g. an earlier DIR/demo/runs), into DIR/results. ``--unshared-ll``: log-likelihoods
with every row scored in full (the path before issue 28), to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def fresh_home(work: Path) -> Path:
    """A new DIAG_HOME sharing only the converted models of the current one."""
    from diag.models import diag_home

    home = work / "diag-home"
    home.mkdir(parents=True, exist_ok=True)
    models = diag_home() / "models"
    if models.is_dir() and not (home / "models").exists():
        (home / "models").symlink_to(models)
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--fresh-home", action="store_true")
    parser.add_argument("--size", default="staged")
    parser.add_argument("--sweep-only", type=Path)
    parser.add_argument("--unshared-ll", action="store_true")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own; on "
                        "a CPU other jobs keep busy, 1 avoids OpenMP spin-waiting)")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.fresh_home:
        os.environ["DIAG_HOME"] = str(fresh_home(args.work))

    if args.sweep_only:
        sweep_only(args)
        return
    import diag.train.general_data as general_data
    from diag.train.demo_pipeline import run_demo
    from profiler import Profiler

    rehearsal = {}
    original = general_data.self_rehearsal

    def timed_rehearsal(*a, **k):
        started = time.perf_counter()
        out = original(*a, **k)
        rehearsal["seconds"] = round(time.perf_counter() - started, 1)
        rehearsal["kept"] = len(out)
        return out

    general_data.self_rehearsal = timed_rehearsal
    started = time.perf_counter()
    with Profiler() as prof:
        result = run_demo(args.work / "demo", args.overrides, size=args.size, progress="plain")
    wall = time.perf_counter() - started
    rec = result.results["recommendation"]
    picks = {
        run: {"step": info.get("step"), "onset": (info.get("onset") or {}).get("collapsing_from")}
        for run, info in sorted(rec["runs"].items())
    }
    report = {
        "wall_seconds": round(wall, 1),
        "timing": result.timing,
        "rehearsal": rehearsal,
        "summary": prof.summary(),
        "outside_tasks": {k: round(v, 2) for k, v in prof.outside.items()},
        "recommended": [rec.get("run"), rec.get("step")],
        "picks": picks,
        "tasks": prof.tasks,
        "load_average": os.getloadavg(),
    }
    (args.work / "demo-profile.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("wall_seconds", "timing", "rehearsal")}))
    print(json.dumps(report["summary"], indent=1))
    print(json.dumps({"recommended": report["recommended"], "picks": picks}))


def sweep_only(args) -> None:
    """The demo's sweep of ``args.sweep_only``, profiled, as ``run_demo`` calls it."""
    from diag.diagnostics.sweeper import sweep
    from profiler import Profiler

    from diag.backend.hf import HFBackend
    from diag.identity import load_identity

    if args.unshared_ll:
        score = HFBackend._score_batch

        def every_row(lm, contexts, conts):
            lm.share_prefix = False
            try:
                return score(lm, contexts, conts)
            finally:
                lm.share_prefix = True

        HFBackend._score_batch = every_row
    identity = load_identity("en")
    out = args.work / "results"
    started = time.perf_counter()
    with Profiler() as prof:
        result = sweep(
            args.sweep_only,
            identity=identity,
            out=out,
            size=args.size,
            languages=identity.languages,
            progress="quiet",
            settle_seconds=0.0,
        )
    rec = result.data["recommendation"]
    report = {
        "sweep_seconds": round(time.perf_counter() - started, 1),
        "summary": prof.summary(),
        "outside_tasks": {k: round(v, 2) for k, v in prof.outside.items()},
        "recommended": [rec.get("run"), rec.get("step")],
        "picks": {
            run: {"step": i.get("step"), "onset": (i.get("onset") or {}).get("collapsing_from")}
            for run, i in sorted(rec["runs"].items())
        },
        "tasks": prof.tasks,
        "load_average": os.getloadavg(),
    }
    (args.work / "sweep-profile.json").write_text(json.dumps(report, indent=1))
    for task in prof.tasks:
        print(json.dumps({k: task[k] for k in ("label", "seconds", "counts", "sequential")}))
    print(json.dumps({k: report[k] for k in ("sweep_seconds", "summary", "recommended", "picks")}))


if __name__ == "__main__":
    main()
