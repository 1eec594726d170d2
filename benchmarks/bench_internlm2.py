"""InternLM2: the converted (transformers' Llama) path vs the model's own remote code.

    .venv/bin/python benchmarks/bench_internlm2.py [--sizes tiny,mid] [--generations early-2024,mid-2024]

For each size (tiny: hidden 64, 2 layers, 4 heads, 2 kv heads; mid: hidden 512, 8 layers, 8 heads,
4 kv heads) and each generation of InternLM2's published code (tests/internlm2.py builds the
models, seeded random weights), loads the base both ways and runs the quick probe suite (zh
identity, the default 48 new tokens: random weights rarely stop, so most answers run to the
limit -- the decoder's worst case). Reports load seconds (the first converted load includes the
one-time conversion), probe-run wall and CPU seconds, and whether both paths gave the same
answers and log-likelihoods. Prints one JSON line per measurement. On shared cores compare CPU
seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SIZES = {
    "tiny": dict(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128),
    "mid": dict(hidden_size=512, layers=8, heads=8, kv_heads=4, intermediate_size=1376),
}


def cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,mid")
    parser.add_argument("--generations", default="early-2024,mid-2024")
    args = parser.parse_args()

    import torch
    from diag.probes.suite import run_probes
    from internlm2 import build_tiny_internlm2

    from diag.backend.hf import HFBackend

    torch.set_num_threads(1)  # one core: the other is shared
    home = tempfile.mkdtemp(prefix="bench-internlm2-home-")
    os.environ["DIAG_HOME"] = home
    for size in args.sizes.split(","):
        for generation in args.generations.split(","):
            folder = Path(tempfile.mkdtemp(prefix=f"internlm2-{size}-{generation}-"))
            build_tiny_internlm2(folder, generation, **SIZES[size])
            runs = {}
            for path, native in (
                ("converted", True),
                ("converted-cached", True),
                ("remote", False),
            ):
                t0 = time.perf_counter()
                lm = HFBackend.load(folder, trust_remote_code=True, device="cpu", native=native)
                load_s = time.perf_counter() - t0
                if path == "converted":  # the first load converts; probe on the second
                    print(json.dumps({"size": size, "generation": generation, "path": path,
                                      "load_s": round(load_s, 2)}), flush=True)  # fmt: skip
                    continue
                t0, c0 = time.perf_counter(), cpu_seconds()
                run = run_probes(lm, "zh", size="quick")
                wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
                runs[path] = run
                print(
                    json.dumps(
                        {
                            "size": size,
                            "generation": generation,
                            "path": path,
                            "load_s": round(load_s, 2),
                            "probe_run_wall_s": round(wall, 1),
                            "probe_run_cpu_s": round(cpu, 1),
                            "answers": len(run.samples),
                            "kv_cache": getattr(lm, "_cache_works", None),
                        }
                    ),
                    flush=True,
                )
            a, b = runs["converted-cached"].samples, runs["remote"].samples
            same = [x.get("answer") == y.get("answer") for x, y in zip(a, b)]
            lp = [
                abs((x.get("answer_logprob") or 0) - (y.get("answer_logprob") or 0))
                for x, y in zip(a, b)
            ]
            print(
                json.dumps(
                    {
                        "size": size,
                        "generation": generation,
                        "same_answers": f"{sum(same)}/{len(same)}",
                        "max_answer_logprob_diff": max(lp) if lp else None,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
