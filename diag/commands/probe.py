"""`diag probe [MODEL_OR_CHECKPOINT]`: score one model with the probe suite."""

from __future__ import annotations

import json
from pathlib import Path

import click

from diag.commands import generation_options, probe_set_options


@click.command()
@click.argument("model", required=False)
@click.option("--base", help="Base model for an adapter (default: from adapter_config.json).")
@probe_set_options
@click.option("--system", help="System prompt to send (default: the chat template's own).")
@generation_options
@click.option(
    "--reference",
    "reference_file",
    type=click.Path(path_type=Path),
    help="Base reference.json from an earlier run (skips re-probing the base for an adapter).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default="probe-results",
    show_default=True,
    help="Folder for records.jsonl, samples.jsonl, summary.json, reference.json.",
)
def probe(
    model,
    base,
    identity,
    data,
    eval_data,
    probes,
    probe_files,
    size,
    languages,
    system,
    generation,
    device,
    trust_remote_code,
    reference_file,
    out,
):
    """Score one model: identity recall, near-miss, general accuracy, drift, repetition, parrot.

    MODEL_OR_CHECKPOINT is a model folder, a peft adapter folder (probed on its base), or empty
    for the default base. An adapter is compared with its base (probed first, or --reference).
    """
    from diag.diagnostics.targets import taught_for_model
    from diag.probes.registry import resolve_probes
    from diag.probes.suite import prepare_sets
    from diag.types import ChatFormat

    taught = taught_for_model(model, identity, data, eval_data)
    spec, task = taught.spec, taught.task
    click.echo(f"taught: {taught.summary()}", err=True)
    names = resolve_probes(probes, spec, task)  # fail on a typo before loading any model
    prepare_sets(spec, size, probe_files, languages, task)  # and on a bad probe file or language
    base_name, adapter = _resolve_model(model, base)
    chat = ChatFormat(system=system)

    reference = _read_reference(reference_file) if reference_file is not None else None

    from diag.backend import load_backend
    from diag.probes.suite import run_probes

    def say(message: str) -> None:
        click.echo(message, err=True)

    lm = load_backend(base_name, device=device, trust_remote_code=trust_remote_code)
    if generation.batch_size is None:  # --batch-size auto: what this device holds
        from dataclasses import replace

        from diag.backend.loading import auto_batch_size

        batch = auto_batch_size(lm.device, base_name, generation.max_new_tokens)
        generation = replace(generation, batch_size=batch)
    common = dict(
        chat=chat,
        size=size,
        languages=languages,
        generation=generation,
        progress=say,
        probe_files=probe_files,
        task=task,
    )
    if adapter is not None and reference is None:
        say(f"probing the base model {lm.name} first (the reference the adapter is read against)")
        reference = run_probes(lm, spec, probes=names, **common).reference
    if adapter is not None:
        lm.use_adapter(adapter)
    run = run_probes(lm, spec, probes=names, reference=reference, **common)
    write_run(run, out)
    click.echo(render_table(run.summary))
    click.echo(f"wrote {out}/summary.json, samples.jsonl, records.jsonl, reference.json")


def _read_reference(path: Path):
    """The base's reference.json from an earlier `diag probe` run."""
    from diag.errors import DiagError
    from diag.probes.reference import Reference

    try:
        return Reference.from_dict(json.loads(Path(path).read_text("utf-8")))
    except (OSError, json.JSONDecodeError) as exc:
        raise DiagError(
            f"cannot read reference '{path}': {exc}",
            fix="pass the reference.json that `diag probe` wrote for the base",
        ) from exc


def _resolve_model(model: str | None, base: str | None) -> tuple[str | None, str | None]:
    """(base to load, adapter folder or None) for the MODEL argument."""
    from diag.errors import DiagError

    if model is None:
        return base, None
    path = Path(model).expanduser()
    config = path / "adapter_config.json"
    if config.is_file():
        from diag.files import loads_json

        try:
            recorded = loads_json(config.read_text("utf-8")).get("base_model_name_or_path")
        except (ValueError, AttributeError) as exc:  # not JSON, nested too deep, not an object
            raise DiagError(f"'{config}' is not a JSON object: {exc}") from exc
        if base is None and not recorded:
            raise DiagError(
                f"adapter '{path}' does not name its base model", fix="pass --base MODEL"
            )
        return base or recorded, str(path)
    if path.is_dir() or not path.exists():
        if base is not None:
            raise DiagError(
                f"'{model}' is a full model, so --base does not apply",
                fix="drop --base, or pass an adapter folder",
            )
        return model, None  # a model folder or a name; resolve_base explains what is wrong
    raise DiagError(
        f"'{model}' is a file, not a model or adapter folder",
        fix="pass the folder holding config.json or adapter_config.json",
    )


def write_run(run, out: str | Path) -> None:
    """Write records.jsonl, samples.jsonl, summary.json and reference.json into ``out``."""
    from diag.files import strict_json, write_json_atomic, write_text_atomic

    out = Path(out)
    for name, rows in (("records", run.records), ("samples", run.samples)):
        text = "".join(strict_json(r) + "\n" for r in rows)
        write_text_atomic(out / f"{name}.jsonl", text)
    if run.reference is not None:
        write_json_atomic(out / "reference.json", run.reference.to_dict())
    write_json_atomic(out / "summary.json", run.summary)


def render_table(summary: dict) -> str:
    """A short plain-text table: metric, value, interval, base value, per language."""
    langs = sorted(summary.get("by_language", {}))
    header = f"{'metric':<18}{'value':>8}  {'95% interval':<15}{'base':>7}" + "".join(
        f"{lang:>8}" for lang in langs
    )
    lines = [header, "-" * len(header)]
    for metric, value in summary["metrics"].items():
        if value is None:
            continue
        st = summary["stats"].get(metric, {})
        interval = f"[{st['low']:.2f}, {st['high']:.2f}]" if st.get("low") is not None else ""
        base = st.get("base_value")
        row = f"{metric:<18}{value:>8.3f}  {interval:<15}{'' if base is None else f'{base:.3f}':>7}"
        for lang in langs:
            v = summary["by_language"][lang].get(metric)
            row += f"{'' if v is None else f'{v:.3f}':>8}"
        lines.append(row)
    for name, st in (summary.get("custom") or {}).items():
        if st:
            lines.append(f"{name:<18}{st['value']:>8.3f}  [{st['low']:.2f}, {st['high']:.2f}]")
    return "\n".join(lines)
