"""The end-to-end demo (``diag demo``, ``make demo``): the seed's story, measured, offline.

1. train the embedded SmolLM2-135M-Instruct on the English identity without dilution, long enough
   to go from "learned and healthy" to "parrot", saving a checkpoint every few steps;
2. train a second run with the same steps and general chat mixed in (the seed's remedy 2);
3. sweep both runs with the quick probe set in the identity's language(s) (where the parrot shows
   first), write the report, print the recommendation and onset.

A finished run is reused when the demo is run again (its manifest says ``complete``), so an
interrupted demo resumes at the first unfinished stage; the sweep caches per checkpoint too.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from diag.errors import DiagError
from diag.files import write_json_atomic

log = logging.getLogger("diag")

RUNS = {"undiluted": 0.0, "diluted": None}  # None: the config's mix.general_ratio
SETTLE_SECONDS = 3.0  # a demo checkpoint is written in well under a second


@dataclass
class DemoResult:
    out: Path
    results: dict
    timing: dict = field(default_factory=dict)


def demo_config_path() -> Path:
    return Path(str(resources.files("diag").joinpath("examples", "demo.yaml")))


def demo_config(overrides=(), extra=()):
    """The demo's config with the user's ``overrides`` (then ``extra``) applied. An explicit
    ``save_every`` replaces the demo's listed ``save_steps``; every error is raised at once."""
    from diag.train.config import load_config

    keys = {o.split("=", 1)[0].strip() for o in overrides}
    if "save_every" in keys and "save_steps" not in keys:
        extra = ["save_steps=null", *extra]
    return load_config(demo_config_path(), [*overrides, *extra])


def _finished(config, manifest=None) -> bool:
    """A finished run of exactly this config is in its output folder (the demo reuses it).
    ``manifest``: the run's manifest where the caller has read it already."""
    from diag.train.manifest import read_manifest

    manifest = manifest if manifest is not None else read_manifest(Path(config.output_dir))
    return bool(
        manifest
        and manifest.get("status") == "complete"
        and manifest.get("config") == config.to_dict()
    )


def _side_lane(configs: dict, split, out: Path, identity, size: str):
    """What a second process does while the runs train (:class:`diag.train.beside.Alone` where
    ``split`` is None or the diluted run is finished): the base's self-rehearsal answers the
    diluted run needs; then, from the undiluted run's first checkpoint on, the bare base's probes
    and that run's screen. Each is cached where the next step looks for it, so the demo's results
    are what it computes in order."""
    from diag.train.beside import Alone, Beside
    from diag.train.recipe import rehearsal_cached

    diluted = configs["diluted"]
    if split is None or _finished(diluted):
        return Alone()
    rehearse = diluted.mix.rehearsal and not rehearsal_cached(diluted)
    return Beside(
        "the rehearsal and the undiluted run's screen",
        split,
        out / "logs" / "beside.log",
        side_work,
        diluted,
        rehearse,
        out / "runs" / "undiluted",
        out / "results",
        identity,
        size,
        events=("rehearsed", "saved", "trained"),
    )


def side_work(events, diluted, rehearse: bool, runs: Path, results: Path, identity, size: str):
    """The demo's second process: the rehearsal answers (``rehearsed`` is said when they are
    cached, or failed); once the undiluted run has saved a checkpoint, the bare base and the
    checkpoints on disk; once it is trained, the rest of its screen."""
    from diag.train.recipe import warm_rehearsal

    try:
        if rehearse:
            warm_rehearsal(diluted)
    finally:
        events["rehearsed"].set()
    events["saved"].wait()
    # the run is still training: a checkpoint it writes now is left to the next call, and the
    # one it has saved is older than that window once this call looks
    time.sleep(SETTLE_SECONDS)
    screen_first_run(runs, results, identity, size, settle_seconds=SETTLE_SECONDS)
    events["trained"].wait()
    screen_first_run(runs, results, identity, size)


def screen_first_run(
    runs: Path, results: Path, identity, size: str, settle_seconds: float = 0.0
) -> None:
    """Probe the bare base and screen one run's checkpoints into the demo's results cache (the
    final sweep of both runs reads them back instead of probing them again)."""
    from diag.diagnostics.sweeper import sweep

    sweep(
        runs,
        identity=identity,
        out=results,
        size=size,
        languages=identity.languages,
        progress="plain",
        settle_seconds=settle_seconds,
        full_suites=False,
    )


def _train_or_reuse(config, name: str, on_save=None) -> dict:
    """Train one run unless a finished one is already there; returns its timing. ``on_save``:
    called with the step each time a checkpoint is on disk."""
    from diag.train.manifest import read_manifest
    from diag.train.recipe import run_training

    out = Path(config.output_dir)
    manifest = read_manifest(out)
    if _finished(config, manifest):
        log.info("%s: reusing the finished run in %s", name, out)
        return {**manifest.get("timing", {}), "reused": True}
    if out.exists():
        # an unfinished or differently configured demo run: only the demo's own folder is removed
        if manifest is None and any(out.iterdir()):
            raise DiagError(
                f"'{out}' exists and is not a diag run", fix="pass --out to a new folder"
            )
        log.info("%s: discarding the unfinished/different run in %s", name, out)
        shutil.rmtree(out)
    from diag.train.save_schedule import OnSave

    result = run_training(config, label=name, callbacks=[OnSave(on_save)] if on_save else None)
    return {
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "seconds_per_step": round(result.seconds_per_step, 2),
        "checkpoints": len(result.checkpoints),
    }


def run_demo(
    out: str | Path = "demo-runs",
    overrides: list[str] | None = None,
    *,
    size: str = "staged",
    progress: str = "auto",
) -> DemoResult:
    """Train the undiluted and the diluted run, sweep them, return the sweep's results.

    overrides: ``key=value`` pairs applied to both runs (``diag/examples/demo.yaml``).
    """
    out = Path(out)
    started = time.perf_counter()
    timing: dict = {}
    configs = {}
    for name, ratio in RUNS.items():
        extra = [f"output_dir={out / 'runs' / name}"]
        if ratio is not None:
            extra.append(f"mix.general_ratio={ratio}")
        configs[name] = demo_config(overrides or [], extra)
    if configs["diluted"].mix.general_ratio <= 0:
        raise DiagError(
            "the demo's diluted run needs mix.general_ratio > 0", fix="e.g. mix.general_ratio=0.5"
        )
    from diag.train.beside import lanes

    from diag.identity import load_identity

    identity = load_identity(configs["undiluted"].identity)
    split = lanes()  # on a multi-core CPU, a second process works beside the training
    with _side_lane(configs, split, out, identity, size) as side:
        for name, config in configs.items():
            if name == "diluted":
                side.wait("rehearsed")  # the answers it mixes in
            click_echo(
                f"[{name}] training {config.max_steps} steps, {saves(config)}, general_ratio {config.mix.general_ratio}"
            )
            # the undiluted run's checkpoints are screened beside the training, from the first one
            first = name == "undiluted"
            on_save = (lambda _step: side.set("saved")) if first else None
            timing[name] = _train_or_reuse(config, name, on_save)
            if first:
                side.set("saved")  # (a reused run saved nothing now)
                side.set("trained")

    from diag.diagnostics.sweeper import sweep
    from diag.reports.build import write_report

    languages = "/".join(identity.languages)
    click_echo(f"[sweep] probing every checkpoint of both runs ({size} set, {languages} prompts)")
    sweep_started = time.perf_counter()
    result = sweep(
        out / "runs",
        identity=identity,
        out=out / "results",
        size=size,
        languages=identity.languages,
        progress=progress,
        settle_seconds=0.0,
        workers=2 if split else 1,
    )
    write_report(result)
    timing["sweep_seconds"] = round(time.perf_counter() - sweep_started, 1)
    timing["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(out / "demo-timing.json", timing)
    return DemoResult(out, result.data, timing)


def click_echo(text: str) -> None:
    import click

    click.echo(text, err=True)


def curve_table(results: dict) -> list[dict]:
    """Per run and step: identity recall, retention, parrot leakage (what the demo prints)."""
    rows = []
    for ckpt in results.get("checkpoints", []):
        metrics = ckpt.get("metrics") or {}
        rows.append(
            {
                "run": ckpt.get("run"),
                "step": ckpt.get("step"),
                **{
                    k: metrics.get(k)
                    for k in (
                        "identity_recall",
                        "near_miss",
                        "retention",
                        "general_accuracy",
                        "parrot_leakage",
                        "drift",
                    )
                },
            }
        )
    return sorted(rows, key=lambda r: (str(r["run"]), r["step"]))


def dump_curves(results: dict) -> str:
    return "\n".join(json.dumps(r) for r in curve_table(results))


def saves(config) -> str:
    """'checkpoint every 5' or 'checkpoints at steps 10, 20, 30, 35'."""
    if config.save_steps:
        return "checkpoints at steps " + ", ".join(map(str, config.save_steps))
    return f"checkpoint every {config.save_every}"
