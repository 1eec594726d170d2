"""Parrot pressure against generated leakage, per checkpoint, on real runs (e.g. the demo's).

    .venv/bin/python benchmarks/bench_pressure.py RUNS_DIR [--out OUT] [--identity en]
        [--languages en] [--max-new-tokens 48] [--probes parrot,pressure,drift]

Sweeps RUNS_DIR with the full suite in the given languages (every checkpoint, no staging) and
prints, per run and step: parrot pressure (likelihood only), parrot leakage and modal share
(generated answers) and regurgitation for task runs, then how the two signals agree: the save
where pressure first crosses one half against the first save whose leakage (or regurgitation)
exceeds the policy's limit, and the rank correlation of the two curves. The numbers are the
issue-27 note's pressure-vs-leakage table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 3 points."""
    if len(xs) < 3:
        return None

    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return round(cov / var, 3) if var else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--identity", default=None, help="default: what each run was taught")
    parser.add_argument("--languages", default="en")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--probes",
        default="parrot,pressure,drift",
        help="what to ask (generated leakage needs parrot; pressure needs drift)",
    )
    args = parser.parse_args()

    from diag.diagnostics.sweeper import sweep

    from diag.types import GenerationConfig

    started = time.perf_counter()
    result = sweep(
        args.runs,
        identity=args.identity,
        out=args.out,
        size="full",
        probes=args.probes,
        languages=args.languages,
        generation=GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=64),
        progress="plain",
    )
    policy = result.data["recommendation"]["policy"]
    report = {"seconds": round(time.perf_counter() - started, 1), "runs": {}}
    for run in sorted({c["run"] for c in result.checkpoints if c["step"]}):
        rows = sorted(
            (c for c in result.checkpoints if c["run"] in (run, "base") and c["status"] == "ok"),
            key=lambda c: c["step"],
        )
        table = [
            {
                "step": c["step"],
                **{
                    k: c["metrics"].get(k)
                    for k in ("parrot_pressure", "parrot_leakage", "regurgitation", "modal_share")
                },
            }
            for c in rows
        ]
        leak_key = (
            "parrot_leakage"
            if any(r["parrot_leakage"] is not None for r in table)
            else ("regurgitation")
        )
        limit = policy["leakage_max"] if leak_key == "parrot_leakage" else 0.10
        pressure = [r["parrot_pressure"] or 0.0 for r in table]
        leak = [r[leak_key] or 0.0 for r in table]
        first_pressure = next((r["step"] for r in table if (r["parrot_pressure"] or 0) > 0.5), None)
        first_leak = next((r["step"] for r in table if (r[leak_key] or 0) > limit), None)
        report["runs"][run] = {
            "table": table,
            "leak_metric": leak_key,
            "pressure_over_half_from": first_pressure,
            "leak_over_limit_from": first_leak,
            "spearman_pressure_vs_leak": spearman(pressure, leak),
        }
        print(f"\n{run}: step | pressure | {leak_key} | modal share")
        for r in table:
            cells = [r["parrot_pressure"], r[leak_key], r["modal_share"]]
            shown = " | ".join("–" if v is None else f"{100 * v:.0f}%" for v in cells)
            print(f"  {r['step']:>5} | {shown}")
        print(
            f"  pressure > 1/2 from step {first_pressure}; {leak_key} > {limit:.0%} from step "
            f"{first_leak}; Spearman {report['runs'][run]['spearman_pressure_vs_leak']}"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
