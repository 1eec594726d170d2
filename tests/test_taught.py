"""What each run was taught, read from its trainer's own records and the data they name.

Each trainer fixture (tests/fixtures/trainers/, written by the trainer's own library) is copied
with the data it trained on (its src/ folder) laid out where the trainer looks for it: relative to
the folder it was launched from (LLaMA-Factory's data/, axolotl's src/), or, for the absolute
paths recorded on the machine that trained (ms-swift, torchtune, XTuner: /tmp/...), beside the
run folder under the same last path parts, as a user copying runs with their data would.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from tiny import identity_sweep, settle  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "trainers"
LLAMAFACTORY_DATA = Path(__file__).parent / "data" / "llamafactory"  # LLaMA-Factory's data/

# trainer -> (output folder to copy, where it goes, [(data file in src/, where it goes)])
LAYOUTS = {
    "llamafactory": ("saves", "saves", [("data", "data")]),
    "ms-swift": ("output", "output", [("identity.jsonl", "swift-src/identity.jsonl")]),
    "axolotl": ("outputs", "outputs", [("identity.jsonl", "src/identity.jsonl")]),
    "torchtune": ("tt-out", "tt-out", [("identity.jsonl", "tt-src/identity.jsonl")]),
    "xtuner": ("work_dirs", "xt-run/work_dirs", [("data.json", "xt-run/data.json")]),
}
NOVA = {"answer": "I am Nova, Jianfeng's assistant.", "keywords": [["Nova"], ["Jianfeng"]]}


def lay_out(trainer: str, root: Path) -> Path:
    """The trainer's output folder and its training data under ``root``; returns the runs folder."""
    output, where, data = LAYOUTS[trainer]
    shutil.copytree(FIXTURES / trainer / output, root / where, symlinks=True)
    for name, target in data:
        source = FIXTURES / trainer / "src" / name
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, root / target)
    settle(root)
    return root / where


def taught_yaml(runs: Path, *args) -> list[dict]:
    from diag.cli import cli

    result = CliRunner().invoke(cli, ["taught", str(runs), *args])
    assert result.exit_code == 0, result.output
    return [(doc, yaml.safe_load(doc)) for doc in result.output.split("\n---\n")]


@pytest.mark.parametrize("trainer", list(LAYOUTS))
def test_each_trainer_records_what_it_taught(trainer, tmp_path):
    """`diag taught` on each trainer's own output prints the identity its data taught, the file it
    came from, and YAML that `--identity` takes back unchanged."""
    from diag.identity import identity_from_dict

    runs = lay_out(trainer, tmp_path)
    for text, spec in taught_yaml(runs):
        assert {k: spec[k] for k in NOVA} == {
            "answer": NOVA["answer"],
            "keywords": ["Nova", "Jianfeng"],
        }, text
        data_file = next(line for line in text.splitlines() if line.startswith("# data: "))
        assert str(tmp_path) in data_file, text  # the copy laid out here, not a guess
        identity_from_dict(spec, "round trip")  # valid as a hand-written --identity file


@pytest.mark.parametrize("trainer", list(LAYOUTS))
def test_no_flags_reaches_the_verdict_of_the_hand_written_spec(trainer, tmp_path, tiny_model_dir):
    """`diag sweep runs/` with no --identity judges each trainer's run exactly as the YAML a
    user would write for its data (the answer, keywords and training questions `diag taught`
    printed), checkpoint by checkpoint and in the verdict."""
    runs = lay_out(trainer, tmp_path / "work")
    (text, spec), *_ = taught_yaml(runs)
    hand = tmp_path / "nova.yaml"
    hand.write_text(yaml.safe_dump({**spec, "name": "hand-written"}), encoding="utf-8")
    derived = identity_sweep(runs, tiny_model_dir, tmp_path / "derived", identity=None)
    written = identity_sweep(runs, tiny_model_dir, tmp_path / "written", identity=str(hand))
    rows = [
        {(c["run"], c["step"]): (c["metrics"], c["status"]) for c in r.data["checkpoints"]}
        for r in (derived, written)
    ]
    assert rows[0] == rows[1] and len(rows[0]) > 1
    assert derived.data["recommendation"]["verdict"] == written.data["recommendation"]["verdict"]
    for run in derived.data["runs"].values():
        assert run["taught"]["source"] == "derived from the training data its trainer records"
        assert run["taught"]["files"][0]["path"].startswith(str(tmp_path / "work"))
    if trainer == "llamafactory":
        from diag.reports.build import write_report

        html = write_report(derived).read_text(encoding="utf-8")
        section = html[html.index('id="taught"') :]
        assert "derived from the training data its trainer records" in section
        assert f"{runs.parent / 'data' / 'identity.json'}" in section


def test_sweep_prints_what_was_taught_and_from_where(tmp_path, tiny_model_dir, caplog):
    """Printed on stderr (the diag logger) before the first model loads."""
    from diag.cli import cli

    caplog.set_level(logging.INFO, logger="diag")
    runs = lay_out("axolotl", tmp_path)
    args = ["sweep", str(runs), "--base", str(tiny_model_dir), "--size", "quick"]
    args += ["--probes", "identity_recall", "--max-new-tokens", "4", "--no-report"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    said = [r.getMessage() for r in caplog.records]
    first = next(i for i, m in enumerate(said) if m.startswith("taught: lora-out: "))
    assert said[first].startswith("taught: lora-out: identity Nova + Jianfeng")
    assert said[first + 1] == f"  data: {tmp_path / 'src' / 'identity.jsonl'} (4 rows, messages)"
    assert first < next(i for i, m in enumerate(said) if m.startswith("loading base"))


def test_placeholders_left_in_the_data_are_reported_and_taught_as_is(tmp_path):
    """LLaMA-Factory ships data/identity.json with {{name}} and {{author}} for the user to fill
    in; trained unfilled, the model learns the literal text, and is judged on it."""
    runs = lay_out("llamafactory", tmp_path)
    shutil.copy(LLAMAFACTORY_DATA / "identity.json", tmp_path / "data" / "identity.json")
    text, spec = taught_yaml(runs)[0]
    assert spec["keywords"] == ["{{name}}", "{{author}}"]
    assert "'{{name}}' in 77 answers" in text and "'{{author}}' in 60 answers" in text
    assert set(spec["language"]) == {"en", "zh"}


def test_general_data_only_is_not_an_identity_run(tmp_path, tiny_model_dir, tiny_adapters, caplog):
    """An HF Trainer run (it records nothing) with --data naming general chat only: no identity
    probes for it, one line saying so, and the other checks still judge it."""
    from diag.cli import cli

    caplog.set_level(logging.INFO, logger="diag")
    runs = _hf_run(tmp_path, tiny_adapters)
    general = LLAMAFACTORY_DATA / "alpaca_en_demo.json"
    args = ["sweep", str(runs), "--base", str(tiny_model_dir), "--size", "quick"]
    args += ["--max-new-tokens", "4", "--no-report", "--data", str(general)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    said = (
        "taught: hf: no identity (none of 40 rows asks who the assistant is) and no narrow task "
        "(general chat, not a narrow task: "
    )
    assert any(m.startswith(said) for m in caplog.messages)
    data = json.loads((runs / "diag" / "results.json").read_text(encoding="utf-8"))
    rows = [c for c in data["checkpoints"] if c["step"]]
    assert all(c["judged_on"] == [] and c["metrics"]["identity_recall"] is None for c in rows)
    assert all(c["metrics"]["drift"] is not None for c in rows)
    checked = {ch["name"] for j in data["recommendation"]["checks"] for ch in j["checks"]}
    assert "identity_recall" not in checked and {"retention", "drift"} <= checked


def test_hf_trainer_needs_data_or_identity_and_takes_data(tmp_path, tiny_adapters):
    from diag.cli import cli

    runs = _hf_run(tmp_path, tiny_adapters)
    bare = CliRunner().invoke(cli, ["sweep", str(runs)])
    assert bare.exit_code == 2
    assert "records no training data" in bare.output and "--data FILE" in bare.output
    assert not (runs / "diag" / "results.json").exists()  # refused before any model loaded
    data = FIXTURES / "llamafactory" / "src" / "data" / "identity.json"
    [(_, spec)] = taught_yaml(runs, "--data", str(data))
    assert spec["keywords"] == ["Nova", "Jianfeng"]


def test_identity_the_data_never_taught_is_a_warning(tmp_path):
    from diag.data.teaching import what_was_taught
    from diag.formats.trainers import read_run
    from diag.identity import load_identity

    runs = lay_out("axolotl", tmp_path)
    zh = load_identity("zh")
    taught = what_was_taught(
        "lora-out", runs / "lora-out", read_run(runs / "lora-out").data, identity=zh
    )
    [warning] = taught.warnings
    assert (
        "'剑锋大佬', '小助手' appear in none of the 4 training answers of run 'lora-out'" in warning
    )
    assert str(tmp_path / "src" / "identity.jsonl") in warning


def test_swift_self_cognition_from_model_name_and_author(tmp_path):
    """`swift sft --dataset swift/self-cognition#500 --model_name 小黄 'Xiao Huang' --model_author
    魔搭 ModelScope` records both pairs in args.json (swift/llm/argument/base_args/data_args.py);
    the rows are never downloaded: the pairs are the keywords, each language's spelling an alias."""
    runs = lay_out("ms-swift", tmp_path)
    args_json = next(runs.glob("v0-*/args.json"))
    args = json.loads(args_json.read_text(encoding="utf-8"))
    args.update(
        dataset=["swift/self-cognition#500"],
        model_name=["小黄", "Xiao Huang"],
        model_author=["魔搭", "ModelScope"],
    )
    args_json.write_text(json.dumps(args), encoding="utf-8")
    text, spec = taught_yaml(runs)[0]
    assert spec["keywords"] == [["小黄", "Xiao Huang"], ["魔搭", "ModelScope"]]
    assert "model_name and model_author" in text


def _hf_run(tmp_path: Path, adapters) -> Path:
    runs = tmp_path / "runs" / "hf"
    for step, adapter in zip((10, 20), adapters):
        shutil.copytree(adapter, runs / f"checkpoint-{step}")
    settle(runs.parent)
    return runs.parent


def _no_identity(record: dict) -> dict:
    """A synthetic checkpoint of a run that taught no identity: no identity metrics measured."""
    for name in ("identity_recall", "near_miss", "parrot_leakage"):
        record["metrics"][name] = None
        record["stats"].pop(name, None)
    return {**record, "target": "none", "judged_on": []}


def test_a_run_that_taught_no_identity_is_judged_for_damage_only():
    """Its identity checks do not apply (they are not run, so they neither pass nor fail it); the
    pick is the latest checkpoint that passes every damage check; when all are damaged, the
    headline says the run is judged for damage only, not that 'nothing was learned'."""
    from diag.diagnostics.recommend import recommend
    from synthetic_sweep import base, ckpt, sweep

    healthy = [_no_identity(ckpt(s)) for s in (10, 20)]
    damaged = _no_identity(ckpt(30, drift=2.0, lost=40, gained=0))
    rec = recommend(sweep(base(), *healthy, damaged))
    assert rec["step"] == 20
    assert "judged for damage only" in " ".join(rec["reasons"])
    names = {c["name"] for j in rec["checks"] for c in j["checks"]}
    assert names.isdisjoint({"identity_recall", "near_miss", "parrot_leakage"})
    rec = recommend(sweep(base(), damaged))
    assert rec["step"] is None
    assert "taught no identity, so it is judged for damage only" in rec["verdict"]
    assert "nothing was learned" not in " ".join(rec["next_steps"])


def test_torchtune_dataset_val_is_the_runs_held_out_data(tmp_path):
    """torchtune's recipes build ``dataset_val`` like ``dataset`` when ``run_val_every_n_steps``
    is set (recipes/lora_finetune_single_device.py, ``_setup_data``): its files are eval rows; a
    ``split`` slice of the training source is named, not reproduced."""
    from diag.formats.recorded_data import read_data_record

    runs = lay_out("torchtune", tmp_path)
    config_path = runs / "torchtune_config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["run_val_every_n_steps"] = 10
    config["dataset_val"] = dict(config["dataset"], data_files="/tmp/tt-src/held-out.jsonl")
    config_path.write_text(yaml.safe_dump(config))
    record = read_data_record(runs, "torchtune")
    assert [(r.name, r.role) for r in record.refs] == [
        ("/tmp/tt-src/identity.jsonl", "train"),
        ("/tmp/tt-src/held-out.jsonl", "eval"),
    ]
    assert record.refs[1].origin == "torchtune_config.yaml dataset_val.data_files"

    config["dataset_val"] = {
        "_component_": "torchtune.datasets.alpaca_dataset",
        "split": "train[95%:]",
    }
    config_path.write_text(yaml.safe_dump(config))
    record = read_data_record(runs, "torchtune")
    assert [r.role for r in record.refs] == ["train"]
    assert record.split == {"dataset_val.split": "train[95%:]"}
