"""Issue 2 benchmark: embedded-model load times and batched vs one-by-one generation.

    .venv/bin/python benchmarks/bench_backend.py [--threads 1,2]

Measures, in one run (other processes share the cores, so compare ratios):
- load of the embedded SmolLM2 from its GGUF (conversion into a fresh temporary DIAG_HOME),
- load from the converted safetensors cache,
- tokens/s for 16 prompts x 48 new tokens, batched (one batch of 16) vs one prompt at a time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 12 times 12?",
    "Write a haiku about autumn.",
    "How many days are in a leap year?",
    "What is the boiling point of water in Celsius?",
    "Translate 'thank you' into Spanish.",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in the solar system?",
    "Give me a synonym for 'happy'.",
    "What gas do plants absorb from the air?",
    "How many legs does a spider have?",
    "What is the square root of 81?",
    "Explain what a noun is in one sentence.",
    "What is the freezing point of water in Fahrenheit?",
    "List the days of the week.",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", default="", help="comma-separated torch thread counts to try")
    parser.add_argument("--skip-gguf", action="store_true", help="do not time the GGUF conversion")
    args = parser.parse_args()

    import torch

    from diag.backend.hf import HFBackend
    from diag.types import GenerationConfig

    if not args.skip_gguf:
        with tempfile.TemporaryDirectory() as home:
            os.environ["DIAG_HOME"] = home
            t = time.perf_counter()
            HFBackend.load(None, device="cpu")
            print(f"load from GGUF (convert + cache): {time.perf_counter() - t:6.1f} s")
        del os.environ["DIAG_HOME"]
    HFBackend.load(None, device="cpu")  # make sure the default cache exists
    t = time.perf_counter()
    lm = HFBackend.load(None, device="cpu")
    print(f"load from safetensors cache:      {time.perf_counter() - t:6.1f} s")

    config = GenerationConfig(max_new_tokens=48, batch_size=16)
    lm.generate(PROMPTS[:2], config)  # warm-up
    for threads in [int(x) for x in args.threads.split(",") if x] or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        t = time.perf_counter()
        batched = lm.generate(PROMPTS, config)
        t_batched = time.perf_counter() - t
        t = time.perf_counter()
        single = [lm.generate([p], config)[0] for p in PROMPTS]
        t_single = time.perf_counter() - t
        tok_b = sum(g.new_tokens for g in batched)
        tok_s = sum(g.new_tokens for g in single)
        print(
            f"threads={threads}: batched {tok_b / t_batched:6.1f} tok/s ({t_batched:.1f} s), "
            f"one-by-one {tok_s / t_single:6.1f} tok/s ({t_single:.1f} s), "
            f"speed-up x{(tok_b / t_batched) / (tok_s / t_single):.1f}; "
            f"same answers: {sum(a.text == b.text for a, b in zip(batched, single))}/16"
        )


if __name__ == "__main__":
    main()
