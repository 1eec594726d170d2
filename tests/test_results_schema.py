"""results.json is written from typed records and matches the published JSON Schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from diag.diagnostics.sweeper import sweep
from test_sweep_cache import FAST, _run_dir, _settle

from diag.records import SCHEMA_VERSION, CheckpointRecord, SweepRecord, json_schema

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "results.schema.json"


def test_published_schema_is_generated_from_the_records():
    published = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert published == json_schema(), (
        "regenerate: python -m diag.records > docs/results.schema.json"
    )
    assert str(SCHEMA_VERSION) in published["title"]


@pytest.fixture(scope="module")
def real_results(tiny_model_dir, tiny_adapters, tmp_path_factory) -> dict:
    """A sweep with every kind of row: the base, two adapters, an unreadable one, a skip."""
    tmp = tmp_path_factory.mktemp("schema")
    root = _run_dir(tmp, tiny_adapters, steps=(10, 20))
    broken = root / "lora" / "checkpoint-30"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(
        (root / "lora" / "checkpoint-10" / "adapter_config.json").read_text()
    )
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    (root / "lora" / "checkpoint-40").mkdir()
    (root / "lora" / "checkpoint-40" / "optimizer.pt").write_bytes(b"")
    _settle(root)
    sweep(root, base=tiny_model_dir, progress="quiet", **FAST)
    return json.loads((root / "diag" / "results.json").read_text(encoding="utf-8"))


def test_a_real_sweep_validates_against_the_schema(real_results):
    statuses = {(c["step"], c["status"]) for c in real_results["checkpoints"]}
    assert {(0, "ok"), (10, "ok"), (20, "ok"), (30, "error")} <= statuses
    assert real_results["skipped"], "the optimizer-only folder is a skip"
    jsonschema.Draft202012Validator(json_schema()).validate(real_results)


def test_records_round_trip_the_file_exactly(real_results):
    assert SweepRecord.from_dict(real_results).to_dict() == real_results
    base = next(c for c in real_results["checkpoints"] if c["step"] == 0)
    assert "train_loss" not in base  # a base row has no training history
    record = CheckpointRecord.from_dict(base)
    assert record.where == "base step 0" and record.stat("identity_recall").n


def test_the_schema_rejects_what_readers_would_misread(real_results):
    validator = jsonschema.Draft202012Validator(json_schema())
    for mutate in (
        lambda d: d["checkpoints"][1].update(step="10"),
        lambda d: d["checkpoints"][1]["metrics"].update(drift="high"),
        lambda d: d["checkpoints"][1]["stats"]["identity_recall"].update(n=1.5),
        lambda d: d["recommendation"].update(reasons="one string"),
        lambda d: d.pop("checkpoints"),
    ):
        broken = copy.deepcopy(real_results)
        mutate(broken)
        assert not validator.is_valid(broken)


def test_an_interrupted_sweep_file_is_valid_too(real_results):
    partial = copy.deepcopy(real_results)
    partial.update(complete=False, recommendation={
        "run": None, "step": None, "path": None, "reasons": [], "onset_step": None,
    })  # fmt: skip
    partial.pop("timing")
    jsonschema.Draft202012Validator(json_schema()).validate(partial)
    assert SweepRecord.from_dict(partial).to_dict() == partial
