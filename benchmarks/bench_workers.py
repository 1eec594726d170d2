"""One process against several worker processes on this CPU (``diag sweep --workers N``).

    .venv/bin/python benchmarks/bench_workers.py RUNS_DIR --work DIR [--workers 1,2] [--languages en]
    .venv/bin/python benchmarks/bench_workers.py --tiny 8 --work DIR

Each worker count sweeps RUNS_DIR from scratch (staged) into DIR/workers-<N>, one after the
other in this session, so the counts see the same machine. Prints one JSON line per count (wall
seconds, full-suite checkpoints, the decision), then the wall ratio against the first count and
whether the result files are the same (every number, every sample, scores.csv byte for byte;
benchmarks/compare_results.py).
"""

from __future__ import annotations

import json
import shutil
import time

from bench_staged import decision, runs_to_sweep, sweep_parser
from compare_results import compare


def run_workers(runs, out, workers: int, args) -> dict:
    from diag.diagnostics.sweeper import sweep

    shutil.rmtree(out, ignore_errors=True)
    wall = time.perf_counter()
    result = sweep(
        runs,
        base=args.base,
        identity=args.identity,
        out=out,
        languages=args.languages,
        progress="plain" if args.verbose else "quiet",
        settle_seconds=0,
        workers=workers,
    )
    records = [c for c in result.data["checkpoints"] if c["step"]]
    return {
        "workers": workers,
        "wall_s": round(time.perf_counter() - wall, 1),
        "checkpoints": len(records),
        "full_suite_checkpoints": sum(c.get("stage") != "screen" for c in records),
        "decision": decision(result.data),
    }


def main() -> None:
    parser = sweep_parser(__doc__)
    parser.add_argument("--workers", default="1,2", help="worker counts, in the order run")
    args = parser.parse_args()
    runs = runs_to_sweep(parser, args)
    counts = [int(n) for n in args.workers.split(",")]
    rows = []
    for count in counts:
        rows.append(run_workers(runs, args.work / f"workers-{count}", count, args))
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    first = rows[0]
    summary = {}
    for row in rows[1:]:
        name = f"workers {row['workers']}/{first['workers']}"
        summary[f"{name} wall"] = round(row["wall_s"] / max(first["wall_s"], 1e-9), 2)
        summary[f"{name} same files"] = (
            compare(
                args.work / f"workers-{first['workers']}", args.work / f"workers-{row['workers']}"
            )
            == []
        )
        summary[f"{name} same decision"] = row["decision"] == first["decision"]
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
