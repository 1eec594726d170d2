"""Per-checkpoint generation cost on the fixed task: 64 general prompts, 48 new tokens, greedy.

    .venv/bin/python benchmarks/bench_generation.py [CHECKPOINT ...] [--naive]

For the base model and each LoRA CHECKPOINT (default: none, the base only), in one process:
- ``padded``: every prompt left-padded and run whole (diag before the shared-prefix change);
- ``shared_prefix``: the chat template's system block run once per batch, its KV cache copied
  to every row (what diag does now); the answers must be identical to ``padded``;
- ``last_by_slice``: ``shared_prefix`` with the prompt pass keeping its last position's logits by
  ``logits_to_keep=1`` (a strided slice: the output layer then ran as a batched product over one
  copy of its weight per row; diag before issue 28's third part); the answers must be identical;
  ``prompt_pass_median_s`` times that pass alone both ways (median of 5, alternating);
- with ``--naive``: what a one-process-per-checkpoint loop pays (a fresh Python process that
  loads the base, applies the adapter and generates), as lm-evaluation-harness runs do.
Prints one JSON line per model and a summary with the ratios. Wall and CPU seconds are both
given: on shared cores compare CPU seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

N_PROMPTS, NEW_TOKENS = 64, 48


def cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


def task_prompts() -> list[str]:
    from diag.probes.suite import prepare_sets

    from diag.identity import load_identity

    items = prepare_sets(load_identity("en"), "full", (), ["en"])["general"].items
    return [item.prompt for item in items][:N_PROMPTS]


def timed(lm, prompts, config) -> tuple[list, float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    gens = lm.generate(prompts, config)
    return gens, time.perf_counter() - wall, cpu_seconds() - cpu


@contextlib.contextmanager
def last_by_slice():
    """The prompt pass keeps ``logits_to_keep=1`` as given (a slice), as before issue 28's third
    part."""
    from diag.backend import decoding

    index = decoding._last_only
    decoding._last_only = lambda keep_kwarg, inputs: keep_kwarg
    try:
        yield
    finally:
        decoding._last_only = index


def prompt_pass_seconds(lm, prompts, config, repeats: int = 5) -> dict:
    """Median wall seconds of the prompt pass alone (one new token), by index (as now) and by
    slice (before), the two alternating."""
    import statistics

    one = replace(config, max_new_tokens=1)
    seconds: dict[str, list[float]] = {"by_index": [], "by_slice": []}
    for _ in range(repeats):
        for arm, times in seconds.items():
            with last_by_slice() if arm == "by_slice" else contextlib.nullcontext():
                times.append(timed(lm, prompts, one)[1])
    return {arm: round(statistics.median(times), 3) for arm, times in seconds.items()}


def naive_run(adapter: str | None) -> float:
    """Wall seconds of one fresh process: import, load the base, apply the adapter, generate."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import sys; sys.path.insert(0, {here!r})\n"
        "from bench_generation import task_prompts, NEW_TOKENS\n"
        "from diag.backend.hf import HFBackend\n"
        "from diag.types import GenerationConfig\n"
        "lm = HFBackend.load(None)\n"
        f"lm.use_adapter({adapter!r})\n"
        "lm.generate(task_prompts(), GenerationConfig(max_new_tokens=NEW_TOKENS, batch_size=64))\n"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", nargs="*", help="LoRA adapter folders on the base")
    parser.add_argument("--naive", action="store_true", help="also time one process per model")
    args = parser.parse_args()
    from diag.backend.hf import HFBackend
    from diag.types import DEFAULT_GENERATION, ChatFormat

    lm = HFBackend.load(None)
    prompts = task_prompts()
    config = replace(
        DEFAULT_GENERATION, max_new_tokens=NEW_TOKENS, batch_size=64, chat=ChatFormat()
    )
    rows = []
    for adapter in [None, *args.checkpoints]:
        lm.use_adapter(adapter)
        lm.share_prefix = False
        padded, padded_wall, padded_cpu = timed(lm, prompts, config)
        lm.share_prefix = True
        shared, shared_wall, shared_cpu = timed(lm, prompts, config)
        with last_by_slice():
            sliced, sliced_wall, sliced_cpu = timed(lm, prompts, config)
        prompt_pass = prompt_pass_seconds(lm, prompts, config)
        row = {
            "model": adapter or "base",
            "padded": {"wall_s": round(padded_wall, 2), "cpu_s": round(padded_cpu, 2)},
            "shared_prefix": {"wall_s": round(shared_wall, 2), "cpu_s": round(shared_cpu, 2)},
            "last_by_slice": {"wall_s": round(sliced_wall, 2), "cpu_s": round(sliced_cpu, 2)},
            "prompt_pass_median_s": prompt_pass,
            "identical_answers": sum(
                a.text == b.text == c.text for a, b, c in zip(padded, shared, sliced)
            ),
            "of": len(prompts),
        }
        if args.naive:
            row["naive_process_wall_s"] = round(naive_run(adapter), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    mean = lambda key, field: sum(r[key][field] for r in rows) / len(rows)  # noqa: E731
    summary = {
        "models": len(rows),
        "per_checkpoint_wall_s": {"padded": round(mean("padded", "wall_s"), 2),
                                  "shared_prefix": round(mean("shared_prefix", "wall_s"), 2)},
        "shared_prefix_speedup_cpu": round(mean("padded", "cpu_s") / mean("shared_prefix", "cpu_s"), 2),
        "last_by_index_speedup_cpu": round(mean("last_by_slice", "cpu_s") / mean("shared_prefix", "cpu_s"), 2),
        "all_answers_identical": all(r["identical_answers"] == r["of"] for r in rows),
    }  # fmt: skip
    if args.naive:
        naive = sum(r["naive_process_wall_s"] for r in rows) / len(rows)
        summary["naive_process_wall_s"] = round(naive, 2)
        summary["naive_over_shared_prefix"] = round(naive / mean("shared_prefix", "wall_s"), 2)
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
