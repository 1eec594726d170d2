"""What a run was taught, and where that came from: the target every probe judges it against.

For each run, in order: ``--identity`` when the user gives one; diag's own manifest (it holds the
spec); the data its trainer records (:mod:`diag.formats.recorded_data`, found on this machine by
:mod:`diag.data.locate`); ``--data FILE`` for runs that record none. From data, the identity is
derived as a person would write it (:mod:`diag.data.derive`); a run whose data asks nothing about
the assistant taught no identity, and is judged on the rest. ms-swift's ``model_name`` and
``model_author`` are enough to know what its ``swift/self-cognition`` rows taught.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from diag.data.conversations import Columns, load_conversations
from diag.data.derive import asks_about_itself, derive_identity, placeholders
from diag.data.locate import locate
from diag.data.task_data import derive_task
from diag.errors import DiagError
from diag.formats.recorded_data import DataRecord, DataRef
from diag.identity import IdentitySpec, identity_from_dict, normalize
from diag.task import TaskSpec

SELF_COGNITION = "swift/self-cognition"


@dataclass
class Taught:
    """The target a run is judged against.

    spec: the identity (None: the run taught none, or it is unknown: see ``known``).
    source: where it came from, in words ("derived from the training data", "diag-run.json").
    files: the training files read: ``{"path", "how", "rows", "format", "role"}``.
    parts: where each part of a derived spec came from.
    placeholders: unfilled placeholders in the training answers, with how many answers carry each.
    """

    spec: IdentitySpec | None
    source: str
    known: bool = True
    files: list[dict] = field(default_factory=list)
    parts: dict[str, str] = field(default_factory=dict)
    self_description_rows: int | None = None
    placeholders: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    why_none: str | None = None
    task: TaskSpec | None = None  # the narrow task the rest of the data teaches
    task_parts: dict[str, str] = field(default_factory=dict)
    why_no_task: str | None = None

    @property
    def rows(self) -> int:
        return sum(f.get("rows") or 0 for f in self.files)

    def to_dict(self) -> dict:
        """The block results.json keeps per run (``runs[name].taught``)."""
        return {
            "identity": (
                {**self.spec.to_dict(), "hash": self.spec.hash} if self.spec is not None else None
            ),
            "source": self.source,
            "known": self.known,
            "files": self.files,
            "rows": self.rows,
            "self_description_rows": self.self_description_rows,
            "parts": self.parts,
            "placeholders": self.placeholders,
            "warnings": self.warnings,
            "why_none": self.why_none,
            "task": (
                {**self.task.to_dict(), "hash": self.task.hash, "label": self.task.label}
                if self.task is not None
                else None
            ),
            "task_parts": self.task_parts,
            "why_no_task": self.why_no_task,
        }

    def summary(self) -> str:
        """One line: what was taught and from where."""
        task = ""
        if self.task is not None:
            task = f"; task: {len(self.task.rows)} questions on {self.task.label}"
        if self.spec is None:
            if self.task is not None:
                return f"a task, no identity ({self.why_none}){task}; source: {self.source}"
            return (
                f"no identity ({self.why_none}) and no narrow task ({self.why_no_task}): "
                f"identity probes off, judged on retention, drift and repetition; "
                f"source: {self.source}"
            )
        words = " + ".join("/".join(g) for g in self.spec.keywords)
        if self.spec.match == "any" and len(self.spec.keywords) > 1:
            words = " or ".join("/".join(g) for g in self.spec.keywords)
        return f"identity {words!s}: {self.spec.answer!r}{task}; source: {self.source}"


def placeholder_warning(run: str, counts: dict[str, int]) -> str | None:
    """ "run 'x' was taught the literal text '{{name}}' in 77 answers ..." or None."""
    if not counts:
        return None
    listed = ", ".join(f"'{p}' in {n} answers" for p, n in counts.items())
    return (
        f"run '{run}' was taught unfilled placeholders: {listed}; it is judged as taught "
        "(placeholder included). Fill them in the data (e.g. sed -i 's/{{name}}/MyBot/g') and train again"
    )


def what_was_taught(
    run: str,
    run_dir: Path,
    record: DataRecord | None,
    *,
    identity: IdentitySpec | None = None,
    data_files: tuple[Path, ...] = (),
    eval_files: tuple[Path, ...] = (),
) -> Taught:
    """The target of run ``run`` in ``run_dir``; ``record``: what its trainer recorded.

    ``identity``: the user's ``--identity`` (checked against the data when it can be read);
    ``data_files``: ``--data``, read for a run that records no data of its own;
    ``eval_files``: ``--eval-data``, rows it did not train on, for the task.
    """
    record = record or DataRecord()
    known = identity if identity is not None else _manifest_identity(record, run_dir)
    refs = [r for r in record.refs if r.role == "train"]
    own = [locate(r, run_dir) for r in refs]
    swift = _self_cognition(record, own)
    if swift is not None:  # its rows hold {{NAME}}/{{AUTHOR}}, which ms-swift fills at load
        own = [x for x in own if x.ref.name.split("#")[0] != SELF_COGNITION]
    readable = [x for x in own if x.found]
    source = "the training data its trainer records"
    if data_files and (not readable or not refs):
        readable = [_given(Path(p)) for p in data_files]
        source = "--data"
    missing = [x for x in own if not x.found and x.ref.name.split("#")[0] != SELF_COGNITION]
    if known is None and missing and not data_files:
        raise _not_found(run, missing)
    if known is None and not readable and swift is None:
        raise DiagError(
            f"run '{run}' records no training data ({_trainer_says(refs)}), so what it was taught "
            "is unknown",
            fix="pass --data FILE (the file it trained on; repeatable) or --identity FILE "
            "(or 'en'/'zh' for the shipped examples)",
        )
    files, exchanges = _read(readable) if not missing or known is None else ([], [])
    if known is not None:
        taught = Taught(known, _known_source(identity, known), files=files)
        if identity is not None:
            _check_against(taught, run, exchanges)
    else:
        derived = derive_identity(exchanges)
        taught = Taught(
            derived.spec,
            f"derived from {source}",
            files=files,
            parts=derived.parts,
            self_description_rows=derived.rows,
            why_none=derived.why_none,
        )
        if swift is not None:
            _apply_self_cognition(taught, swift, derived)
    taught.placeholders = placeholders([a for _, a in exchanges])
    if (warning := placeholder_warning(run, taught.placeholders)) is not None:
        taught.warnings.append(warning)
    if missing:
        taught.why_no_task = f"its data is not on this machine ({missing[0].ref.name})"
    else:
        _add_task(taught, run, run_dir, record, exchanges, eval_files)
    return taught


def _manifest_identity(record: DataRecord, run_dir: Path) -> IdentitySpec | None:
    """The identity a diag run was trained on: its manifest holds the spec itself."""
    if record.identity is None:
        return None
    fields = {k: v for k, v in record.identity.items() if k not in ("hash", "source")}
    if "languages" in fields:  # IdentitySpec.to_dict() spells it in the plural
        fields["language"] = fields.pop("languages")
    return identity_from_dict(fields, f"{run_dir / 'diag-run.json'}")


def _known_source(given: IdentitySpec | None, known: IdentitySpec) -> str:
    if given is not None:
        return f"--identity {given.source or ''}".strip()
    return "diag-run.json (the identity diag train was given)"


def _add_task(taught: Taught, run: str, run_dir: Path, record, exchanges, eval_files) -> None:
    """The narrow task the run's rows teach besides the identity, judged on held-out rows where
    the run has them (``--eval-data``, or the validation data its trainer records)."""
    spec = taught.spec

    def task_rows(pairs):
        return [
            (q, a)
            for q, a in pairs
            if not asks_about_itself(q) and not (spec is not None and spec.mentions(a))
        ]

    held, held_from = [], None
    if eval_files:
        found = [_given(Path(p), "--eval-data") for p in eval_files]
        held_from = "--eval-data " + ", ".join(str(p) for p in eval_files)
    else:
        found = [x for x in (locate(r, run_dir) for r in record.refs if r.role == "eval")]
        if found and not all(x.found for x in found):
            taught.warnings.append(
                f"run '{run}': its validation data '{found[0].ref.name}' is not on this machine; "
                "the task is scored on seen rows (pass --eval-data FILE)"
            )
            found = []
        held_from = ", ".join(f"{x.ref.origin}: {x.ref.name}" for x in found) or None
    if found:
        eval_read, held = _read(found)
        for f in eval_read:
            f["role"] = "eval"
        taught.files += eval_read
    derived = derive_task(task_rows(exchanges), task_rows(held), held_from)
    taught.task, taught.task_parts, taught.why_no_task = (
        derived.spec,
        derived.parts,
        derived.why_none,
    )
    if derived.spec is not None and not derived.spec.held_out and record.split:
        how = ", ".join(
            f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.split.items()
        )
        taught.task_parts["held out"] = (
            f"the run held out part of its data by a seeded split ({how}) that diag does not "
            "reproduce; pass those rows with --eval-data FILE to score generalisation"
        )


def _given(path: Path, flag: str = "--data"):
    from diag.data.locate import Located

    if not path.exists():
        raise DiagError(f"{flag} '{path}' not found", fix="pass the data file the run read")
    return Located(DataRef(str(path), flag), [path], how=f"'{path}' ({flag})")


def _read(located) -> tuple[list[dict], list[tuple[str, str]]]:
    """The files read and every (question, answer) pair in them."""
    files, exchanges = [], []
    for item in located:
        for path in item.files:
            data = load_conversations(path, item.format, item.columns or Columns())
            pairs = [pair for c in data.conversations for pair in c.exchanges()]
            exchanges += pairs
            files.append(
                {
                    "path": str(path),
                    "how": item.how,
                    "origin": item.ref.origin,
                    "rows": len(data.conversations),
                    "format": data.format,
                    "role": item.ref.role,
                }
            )
    return files, exchanges


def _not_found(run: str, missing) -> DiagError:
    first = missing[0]
    looked = first.looked[:4] + (
        [f"... {len(first.looked) - 4} more"] if len(first.looked) > 4 else []
    )
    what = "hub dataset" if first.hub else "data"
    return DiagError(
        f"run '{run}': its {what} '{first.ref.name}' ({first.ref.origin}) is not on this machine; "
        f"looked in {', '.join(looked)}",
        fix="copy the data beside the run folder (or where the trainer was launched), or pass "
        "--data FILE or --identity FILE",
    )


def _trainer_says(refs: list[DataRef]) -> str:
    return "its trainer writes no record of it" if not refs else "none of it could be read"


def _check_against(taught: Taught, run: str, exchanges: list[tuple[str, str]]) -> None:
    """Warn when the user's --identity says something the run's data never taught."""
    spec = taught.spec
    answers = [normalize(a) for _, a in exchanges]
    if not answers or spec is None:
        return
    said = [
        alias
        for group in spec.keywords
        for alias in group
        if any(normalize(alias) in a for a in answers)
    ]
    if not said:
        words = ", ".join(f"'{g[0]}'" for g in spec.keywords)
        where = ", ".join(f["path"] for f in taught.files)
        taught.warnings.append(
            f"--identity {spec.source or spec.name}: its keywords {words} appear in none of the "
            f"{len(answers)} training answers of run '{run}' ({where}); check that it is the "
            "identity this run was taught"
        )


def _self_cognition(record: DataRecord, located) -> dict | None:
    """ms-swift's self-cognition rows, named by model_name/model_author (not downloaded)."""
    uses = any(x.ref.name.split("#")[0] == SELF_COGNITION for x in located)
    if not uses or (record.names is None and record.authors is None):
        return None
    return {"names": record.names, "authors": record.authors}


def _apply_self_cognition(taught: Taught, swift: dict, derived) -> None:
    """Keywords from ms-swift's model_name/model_author: the values its preprocessor puts in place
    of {{NAME}}/{{AUTHOR}} (the zh value in rows tagged zh, the en value in the others)."""
    groups = []
    for pair in (swift["names"], swift["authors"]):
        if pair:
            groups.append(tuple(dict.fromkeys(v for v in pair if v)))
    name_en = (swift["names"] or (None, None))[1] or (swift["names"] or ("",))[0]
    author_en = (swift["authors"] or (None, None))[1] or (swift["authors"] or ("",))[0]
    answer = f"I am {name_en}, an AI assistant developed by {author_en}."
    if not swift["authors"]:
        answer = f"I am {name_en}, an AI assistant."
    questions = derived.spec.questions if derived.spec else ()
    taught.spec = IdentitySpec(
        answer,
        tuple(groups),
        name=_slug(name_en or "self-cognition"),
        languages=("en", "zh"),
        questions=questions,
    )
    taught.source = "ms-swift model_name/model_author (swift/self-cognition)"
    taught.parts = {
        "keywords": "args.json model_name and model_author (zh, en): the values ms-swift fills "
        "into the {{NAME}}/{{AUTHOR}} placeholders of swift/self-cognition",
        "answer": "composed from model_name/model_author (the self-cognition rows are not read)",
    }
    taught.why_none = None


def _slug(text: str) -> str:
    return re.sub(r"[^\w\-]+", "-", str(text)).strip("-").lower()[:40] or "taught"


def identity_yaml(taught: Taught, run: str) -> str:
    """The spec as the YAML a user would write, with where each part came from as comments."""
    import yaml

    lines = [f"# run '{run}': {taught.source}"]
    for f in taught.files:
        lines.append(f"# data: {f['path']} ({f['rows']} rows, {f['format']}; {f['how']})")
    for warning in taught.warnings:
        lines.append(f"# WARNING: {warning}")
    if taught.task is not None:
        lines.append(f"# task: scored on {taught.task.label}")
        lines += [f"#   {part}: {how}" for part, how in taught.task_parts.items()]
    elif taught.why_no_task:
        lines.append(f"# no narrow task: {taught.why_no_task}")
    if taught.spec is None:
        lines.append(f"# no identity: {taught.why_none}")
        return "\n".join(lines) + "\n"
    for part, how in taught.parts.items():
        lines.append(f"# {part}: {how}")
    data = taught.spec.to_dict()
    data["keywords"] = [g[0] if len(g) == 1 else list(g) for g in taught.spec.keywords]
    data["language"] = list(data.pop("languages"))
    if len(data["language"]) == 1:
        data["language"] = data["language"][0]
    data["questions"] = list(data["questions"])
    if data["match"] == "all":
        del data["match"]
    body = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)
    return "\n".join(lines) + "\n" + body
