"""A Ray sweep against the local one on the same runs: wall time, time to the first checkpoint,
per-checkpoint cost, and the same result files?

    .venv/bin/python benchmarks/bench_ray.py RUNS_DIR --work DIR [--actors 2] [--size quick]
    .venv/bin/python benchmarks/bench_ray.py --tiny 8 --work DIR       # 8 tiny-model adapters

Sweeps RUNS_DIR from scratch twice, each into its own folder under DIR (no cache shared): in this
process (the naive, local way), then on a new local Ray instance with ``--actors`` replicas.
Prints one JSON line per way, the ratio, and the differences between the two result folders
(``compare_results.py``: none expected).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_staged import runs_to_sweep, sweep_parser  # noqa: E402
from compare_results import compare  # noqa: E402


def run_way(runs: Path, out: Path, args, ray: str | None) -> dict:
    from diag.diagnostics.sweeper import sweep

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = sweep(
        runs,
        base=args.base,
        identity=args.identity,
        out=out,
        size=args.size,
        languages=args.languages,
        progress="plain" if args.verbose else "quiet",
        settle_seconds=0,
        ray=ray,
        actors=args.actors if ray else None,
    )
    wall = time.perf_counter() - started
    probed = result.data["timing"]["probed"]
    return {
        "way": f"ray x{args.actors}" if ray else "local",
        "wall_s": round(wall, 1),
        "models_probed": probed,
        "s_per_model": round(wall / max(1, probed), 2),
        "decision": result.data["recommendation"]["verdict"],
    }


def main() -> None:
    parser = sweep_parser(__doc__)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--size", default="quick")
    args = parser.parse_args()
    runs = runs_to_sweep(parser, args)
    local = run_way(runs, args.work / "local", args, None)
    print(json.dumps(local), flush=True)
    remote = run_way(runs, args.work / "ray", args, "local")
    print(json.dumps(remote), flush=True)
    print(json.dumps({"ray_over_local_wall": round(remote["wall_s"] / local["wall_s"], 2)}))
    differences = compare(args.work / "local", args.work / "ray")
    print(json.dumps({"differences": differences[:20], "count": len(differences)}))


if __name__ == "__main__":
    main()
