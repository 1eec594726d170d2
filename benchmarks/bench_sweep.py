"""Benchmark `diag sweep` against the naive way, on 8 LoRA checkpoints of the default model.

    .venv/bin/python benchmarks/bench_sweep.py [--size quick|full] [--naive-subset 2]
        [--probes identity_recall] [--max-new-tokens 16]   # smaller, for a starved CPU

Measures, in one run (each part in its own process, so peak RSS is its own):
  (a) `diag sweep` cold: one base load, batched greedy generation, adapters swapped, base as step 0;
  (b) naive: for each checkpoint reload base + adapter and generate one prompt at a time, with the
      same prompts and token limit (timed on --naive-subset checkpoints, extrapolated to 8);
  (c) `diag sweep` again with the cache warm;
  (d) peak RSS of (a), RSS after the first vs the last checkpoint (flat in their number), and the
      peak RSS of one model answering the same prompts once (a single model's inference RSS).
The checkpoints are random-init LoRA adapters of the right shape (r=8 on q/k/v/o), made in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

STEPS = [100 * (i + 1) for i in range(8)]


def vm(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_checkpoints(root: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from diag.backend.hf import HFBackend

    lm = HFBackend.load(None, device="cpu")
    model = get_peft_model(
        lm.model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        ),
    )
    for i, step in enumerate(STEPS):
        torch.manual_seed(step)
        with torch.no_grad():  # mild, different adapters: the model still talks
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.002 * (i + 1))
        out = root / "lora-run" / f"checkpoint-{step}"
        model.save_pretrained(out)
        cfg = json.loads((out / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
        (out / "adapter_config.json").write_text(json.dumps(cfg))
    old = time.time() - 600
    for dirpath, _, files in os.walk(root):
        for name in files:
            os.utime(Path(dirpath) / name, (old, old))


def child_sweep(root: Path, args: argparse.Namespace, out: Path) -> dict:
    from diag.diagnostics import progress
    from diag.diagnostics.sweeper import sweep

    rss_after = []
    done = progress.SweepProgress.done

    def recording(self, label, cached, error=False):
        rss_after.append([label, round(vm("VmRSS"), 1)])
        return done(self, label, cached, error)

    progress.SweepProgress.done = recording
    started = time.perf_counter()
    generation = None
    if args.max_new_tokens:
        from diag.types import GenerationConfig

        generation = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=64)
    result = sweep(
        root,
        identity="en",
        size=args.size,
        probes=args.probes,
        generation=generation,
        out=out,
        progress="plain",
        device="cpu",
    )
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mib": vm("VmHWM"),
        "rss_after_each": rss_after,
        "timing": result.data["timing"],
    }


def _prompts(out: Path) -> tuple[list[str], int]:
    """The generation prompts and token limit the sweep used for one checkpoint (from its cache)."""
    entry = next((out / "cache" / "checkpoint").glob("*.json"))
    records = json.loads(entry.read_text())["records"]
    meta = records[0]
    prompts = [r["prompt"] for r in records if r.get("kind") == "generation"]
    return prompts, meta["generation"]["max_new_tokens"]


def child_naive(root: Path, out: Path, subset: int) -> dict:
    """What users do by hand: reload base + adapter per checkpoint, one prompt at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from diag.backend.loading import ensure_local_weights
    from diag.models import resolve_base

    torch.set_grad_enabled(False)
    folder = ensure_local_weights(resolve_base(None))
    prompts, max_new = _prompts(out)
    per_ckpt = []
    for step in STEPS[:subset]:
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, root / "lora-run" / f"checkpoint-{step}").eval()
        for prompt in prompts:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, return_tensors="pt")
            model.generate(
                **ids,
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.pad_token_id,
            )
        per_ckpt.append(time.perf_counter() - started)
        del model
    return {"per_checkpoint_s": per_ckpt, "prompts": len(prompts), "max_new_tokens": max_new}


def child_single_model(out: Path) -> dict:
    """One model answering the sweep's prompts once with the suite's generation settings (same
    batch size): a single model's inference RSS."""
    from dataclasses import replace

    from diag.probes.suite import DEFAULT_GENERATION

    from diag.backend.hf import HFBackend

    prompts, max_new = _prompts(out)
    lm = HFBackend.load(None, device="cpu")
    lm.generate(prompts, replace(DEFAULT_GENERATION, max_new_tokens=max_new))
    return {"peak_rss_mib": vm("VmHWM")}


def run_child(mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--work", str(args.work), "--size", args.size]
    cmd += ["--naive-subset", str(args.naive_subset)]
    if args.probes:
        cmd += ["--probes", args.probes]
    if args.max_new_tokens:
        cmd += ["--max-new-tokens", str(args.max_new_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["quick", "full"], default="quick")
    parser.add_argument("--naive-subset", type=int, default=2, help="checkpoints timed for (b)")
    parser.add_argument("--probes", help="probe subset (default: the whole suite)")
    parser.add_argument("--max-new-tokens", type=int, help="answer limit (default: the suite's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/diag-bench-sweep"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root, out = args.work / "runs", args.work / "out"
    if args.child:
        result = {
            "make": lambda: make_checkpoints(root) or {},
            "sweep": lambda: child_sweep(root, args, out),
            "naive": lambda: child_naive(root, out, args.naive_subset),
            "single": lambda: child_single_model(out),
        }[args.child]()
        print(json.dumps(result))
        return

    shutil.rmtree(args.work, ignore_errors=True)
    run_child("make", args)
    print(
        f"8 LoRA checkpoints of the default model in {root}; suite size {args.size}, "
        f"probes {args.probes or 'all'}, max_new_tokens {args.max_new_tokens or 'default'}",
        flush=True,
    )
    a = run_child("sweep", args)
    print(f"(a) cold sweep: {a['seconds']:.1f} s, peak RSS {a['peak_rss_mib']:.0f} MiB", flush=True)
    b = run_child("naive", args)
    naive_total = sum(b["per_checkpoint_s"]) / len(b["per_checkpoint_s"]) * len(STEPS)
    print(
        f"(b) naive: {b['per_checkpoint_s']} s per checkpoint on {len(b['per_checkpoint_s'])} "
        f"({b['prompts']} prompts, {b['max_new_tokens']} tokens) -> {naive_total:.0f} s for 8",
        flush=True,
    )
    c = run_child("sweep", args)
    print(f"(c) warm sweep: {c['seconds']:.2f} s ({c['timing']})", flush=True)
    d = run_child("single", args)
    rss = [r for _, r in a["rss_after_each"]]
    report = {
        "size": args.size,
        "probes": args.probes or "all",
        "max_new_tokens": b["max_new_tokens"],
        "prompts_per_checkpoint": b["prompts"],
        "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "a_cold_s": round(a["seconds"], 1),
        "b_naive_8_s_extrapolated": round(naive_total, 1),
        "b_naive_measured_checkpoints": len(b["per_checkpoint_s"]),
        "c_warm_s": round(c["seconds"], 2),
        "b_over_a": round(naive_total / a["seconds"], 1),
        "a_over_c": round(a["seconds"] / c["seconds"], 1),
        "peak_rss_sweep_mib": round(a["peak_rss_mib"]),
        "peak_rss_single_model_mib": round(d["peak_rss_mib"]),
        "rss_ratio": round(a["peak_rss_mib"] / d["peak_rss_mib"], 2),
        "rss_after_first_and_last_checkpoint_mib": [rss[1], rss[-1]],
    }
    print(json.dumps(report, indent=2))
    (args.work / "bench_sweep.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
