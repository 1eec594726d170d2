"""`diag merge SOURCE --out DIR`: merge the gated LoRA checkpoint into its base model."""

from __future__ import annotations

from pathlib import Path

import click

from diag.commands import policy_options


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="New folder for the merged model."
)
@click.option(
    "--checkpoint",
    default="best",
    show_default=True,
    help="best (the policy's recommendation), a STEP, or a checkpoint PATH.",
)
@click.option(
    "--force", is_flag=True, help="Merge even if the gate fails it or cannot decide (recorded)."
)
@policy_options("for the gate; default: the built-in policy")
@click.option("--base", help="Base model, only when no sweep results cover the checkpoint.")
@click.option("--allow-pickle", is_flag=True, help="Allow full unpickling of .bin/.pt/.pth files.")
@click.option(
    "--lora-alpha", type=float, help="LoRA alpha for XTuner checkpoints without a config."
)
@click.option(
    "--trust-remote-code", is_flag=True, help="Allow a base model that ships its own Python code."
)
def merge(
    source,
    out,
    checkpoint,
    force,
    policy_file,
    overrides,
    base,
    allow_pickle,
    lora_alpha,
    trust_remote_code,
):
    """Merge a checkpoint into its base: a plain transformers folder, refused if the gate fails.

    SOURCE is a sweep's results dir, a run folder or one checkpoint (peft adapter, XTuner
    iter_N.pth). The output holds safetensors, tokenizer, chat template, generation config and
    diag-merge.json (source, fingerprint, gate verdict, diag version).
    """
    from diag.diagnostics.merge_guard import merge as run_merge
    from diag.diagnostics.policy import load_policy

    out_path, plan = run_merge(
        source,
        out,
        checkpoint=checkpoint,
        policy=load_policy(policy_file, overrides),
        force=force,
        base=base,
        allow_pickle=allow_pickle,
        lora_alpha=lora_alpha,
        trust_remote_code=trust_remote_code,
    )
    ckpt = plan.checkpoint
    verdict = plan.gate.verdict if plan.gate else "ungated"
    forced = " (forced)" if not plan.approved else ""
    click.echo(
        f"merged {ckpt.run} step {ckpt.step} ({ckpt.path}) into {plan.base} -> {out_path}\n"
        f"gate: {verdict}{forced}; provenance: {out_path / 'diag-merge.json'}"
    )
