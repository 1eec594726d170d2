"""Cost of swapping LoRA adapters on the default model: in place, new modules, unmerge alone.

    .venv/bin/python benchmarks/bench_swap.py [--targets all-linear|q_proj,v_proj] [--rounds 5]

The backend folds the active adapter into the base weights and, since issue 12, restores the
touched layers' saved base weights bit for bit afterwards instead of trusting unmerge's
subtraction. Since issue 28, an adapter with the same LoRA settings as the loaded one is copied
into the loaded one's modules instead of peft building every module anew. In one process, per
mode: the swap time, the extra memory of the saved copy, and how far the base weights drift
(max |w - w0| after the rounds).

  in place      as the backend is now
  new modules   peft's load_adapter every time (before issue 28)
  unmerge only  new modules, and unmerge's subtraction instead of the restore (the naive way)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def unmerge_only(lm) -> None:
    """peft's unmerge alone: the product subtracted again, no saved weights put back."""
    if lm._merged:
        lm._peft.unmerge_adapter()
        lm._merged = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="all-linear")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model

    from diag.backend.hf import HFBackend

    targets = args.targets if args.targets == "all-linear" else args.targets.split(",")
    folders = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        donor = HFBackend.load(None, device="cpu").model
        config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)
        folder = tempfile.mkdtemp(prefix="diag-swap-")
        get_peft_model(donor, config).save_pretrained(folder)
        folders.append(folder)
        del donor
    for mode in ("in place", "new modules", "unmerge only"):
        lm = HFBackend.load(None, device="cpu")
        before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
        if mode != "in place":
            lm._reload_in_place = lambda key: False
        if mode == "unmerge only":
            lm._save_pristine = lambda: None
            lm._unmerge = lambda lm=lm: unmerge_only(lm)
        times = []
        for i in range(args.rounds):
            started = time.perf_counter()
            lm.use_adapter(folders[i % 2])
            times.append(time.perf_counter() - started)
        lm.use_adapter(None)
        drift = max(
            (p.detach() - before[n.replace("base_layer.", "").removeprefix("base_model.model.")])
            .abs()
            .max()
            .item()
            for n, p in lm.model.named_parameters()
            if "lora_" not in n
        )
        saved = sum(t.numel() * t.element_size() for d in lm._pristine.values() for t in d.values())
        print(
            f"{mode:12s}: swap median {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}) over {args.rounds}; "
            f"saved copy {saved / 2**20:.0f} MiB; max |w - w0| after {args.rounds} swaps {drift:.3g}"
        )


if __name__ == "__main__":
    main()
