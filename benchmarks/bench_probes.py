"""Probe-suite speed and base-model scores on the real default model (SmolLM2-135M-Instruct).

    .venv/bin/python benchmarks/bench_probes.py [--out DIR] [--identity zh] [--skip-naive]

Measures, in one process on this machine:
  1. the full suite on the base (this also builds the base Reference: one batched generate call,
     finishing cut drift answers, one loglikelihood pass) -- target <= 180 s on CPU;
  2. the quick suite read against that reference (what the demo and in-training probing use);
  3. the naive way: the quick suite's prompts generated one at a time (batch_size=1), against
     the batched quick suite, to report the batching speed-up.
Prints one JSON object (scores per probe and language, wall and CPU seconds, ratio) and writes
the full run's records/samples/summary/reference under --out as soon as it is done. On shared
cores compare CPU seconds: wall time there mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path


def cpu_seconds() -> float:
    """User + system CPU time of this process: robust to other processes sharing the cores."""
    usage = os.times()
    return usage.user + usage.system


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/out/probes", help="where to write the run")
    parser.add_argument("--identity", default="zh", help="identity spec (file, 'en' or 'zh')")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-naive", action="store_true", help="skip the batch_size=1 run")
    args = parser.parse_args()

    from diag.probes.suite import DEFAULT_GENERATION, run_probes

    from diag.backend.hf import HFBackend
    from diag.files import write_json_atomic
    from diag.identity import load_identity

    identity = load_identity(args.identity)
    started = time.perf_counter()
    lm = HFBackend.load(None, device=args.device)
    load_s = time.perf_counter() - started

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)

    t0, cpu0 = time.perf_counter(), cpu_seconds()
    full = run_probes(lm, identity, size="full", progress=log)
    full_s, full_cpu = time.perf_counter() - t0, cpu_seconds() - cpu0

    out = Path(args.out)  # saved at once: the full run is the expensive part
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("records", full.records), ("samples", full.samples)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8")
    write_json_atomic(out / "summary.json", full.summary)
    write_json_atomic(out / "reference.json", full.reference.to_dict())
    log(f"full suite: {full_s:.1f} s wall, {cpu_seconds() - cpu0:.1f} s CPU; wrote {out}")

    t0, cpu1 = time.perf_counter(), cpu_seconds()
    quick = run_probes(lm, identity, size="quick", reference=full.reference, progress=log)
    quick_s, quick_cpu = time.perf_counter() - t0, cpu_seconds() - cpu1

    naive = None
    if not args.skip_naive:
        one_by_one = replace(DEFAULT_GENERATION, batch_size=1)
        t0 = time.perf_counter()
        run_probes(
            lm,
            identity,
            size="quick",
            reference=full.reference,
            generation=one_by_one,
            progress=log,
        )
        naive_s = time.perf_counter() - t0
        naive = {"quick_batch_size_1_s": round(naive_s, 1), "speedup": round(naive_s / quick_s, 2)}

    hits = [r for r in full.records if r.get("kind") == "generation" and r["hit_limit"]]
    report = {
        "model": lm.name,
        "device": args.device,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "identity": identity.name,
        "load_model_s": round(load_s, 1),
        "full_suite_s": round(full_s, 1),
        "full_suite_cpu_s": round(full_cpu, 1),
        "quick_suite_s": round(quick_s, 1),
        "quick_suite_cpu_s": round(quick_cpu, 1),
        "torch_threads": torch_threads(),
        "naive": naive,
        "counts": full.summary["counts"],
        "drift_answers": len(full.reference.drift),
        "drift_regenerated": sum(d.get("source") == "regenerated" for d in full.reference.drift),
        "generations_hit_limit": len(hits),
        "metrics_full": full.summary["metrics"],
        "by_language_full": full.summary["by_language"],
        "identity_answer_logprob": full.summary["stats"]
        .get("identity_recall", {})
        .get("extra", {})
        .get("answer_logprob"),
        "metrics_quick": quick.summary["metrics"],
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
