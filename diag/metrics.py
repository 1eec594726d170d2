"""The metric table: every metric diag reports, declared once.

A metric's name, meaning, direction, unit, labels, how its per-sample rows are aggregated and
which probe produces it live here and nowhere else. The probe registry, aggregation, the policy's
directions, onset, scores.csv, the report's tables and curves, the gate's summary and the metric
list in ``docs/probes.md`` are all derived from :data:`METRICS`.

Adding a metric is one entry: name the probe, the per-sample column and an aggregation
(``AGGREGATIONS``); the sweep stores it, the report shows it, the gate prints it. A policy
*check* on it is a separate decision (``diag.diagnostics.policy``).

>>> METRICS["parrot_leakage"].higher_is_better, METRICS["parrot_leakage"].format(0.125)
(False, '12%')
"""

from __future__ import annotations

from dataclasses import dataclass

# How per-sample rows become a metric (implemented in diag.probes.aggregate):
AGGREGATIONS = {
    "proportion": "share of rows whose `field` is true, with a 95 % Wilson interval",
    "clustered_proportion": "as proportion, the interval widened for paraphrase clusters",
    "loop_proportion": "as proportion, plus how many answers ran into the token limit",
    "mean": "mean of `field`, with a normal-approximation 95 % interval",
    "paired_ratio": "acc(checkpoint) / acc(base) over items both answered (McNemar counts)",
    "modal_share": "share of answers in the largest near-identical group (Wilson interval)",
}
UNITS = ("fraction", "ratio", "nats/token")


@dataclass(frozen=True)
class Metric:
    """One metric.

    probe: the registered probe whose per-sample rows it aggregates; field: the row's column.
    higher_is_better: the direction every comparison uses (policy, onset, report arrows).
    unit: "fraction" (0..1, shown as %), "ratio" (× base) or "nats/token".
    label: the report's name for it; short: how sentences name it ("leakage 0% → 83%").
    symptom: what a failed check on it means for the recommendation ("not learned", "parrot",
        "forgetting"); None for metrics that are shown but not judged.
    curve: colour of its line in the per-run curves (None: not drawn there).
    """

    name: str
    probe: str
    field: str
    aggregate: str
    higher_is_better: bool
    unit: str
    label: str
    short: str
    description: str
    symptom: str | None = None
    curve: str | None = None

    def __post_init__(self):
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"metric {self.name}: unknown aggregation '{self.aggregate}'")
        if self.unit not in UNITS:
            raise ValueError(f"metric {self.name}: unknown unit '{self.unit}'")

    @property
    def is_fraction(self) -> bool:
        return self.unit == "fraction"

    def format(self, value: float) -> str:
        """How a sentence quotes a value: 12% (fraction), 0.98 (ratio), 0.05 (nats/token)."""
        if self.unit == "fraction":
            return f"{100 * value:.0f}%"
        return f"{value:.2f}" if self.unit == "ratio" else f"{value:.2g}"

    def worsening(self, before: float, after: float) -> float:
        """How much worse ``after`` is than ``before`` (negative: it improved)."""
        return (before - after) if self.higher_is_better else (after - before)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "identity_recall", "identity_recall", "passed", "clustered_proportion", True,
            "fraction", "Identity recall", "identity",
            "held-out 'who are you' paraphrases answered with every identity keyword",
            symptom="not learned", curve="#1b9e77",
        ),
        Metric(
            "near_miss", "near_miss", "passed", "proportion", True, "fraction",
            "Near-miss accuracy", "near-miss",
            "identity-like questions answered with what they ask, not the identity sentence",
            symptom="forgetting", curve="#66a61e",
        ),
        Metric(
            "general_accuracy", "general_accuracy", "passed", "proportion", True, "fraction",
            "General accuracy", "general accuracy",
            "general questions with checkable answers answered right",
        ),
        Metric(
            "retention", "general_accuracy", "passed", "paired_ratio", True, "ratio",
            "Retention (× base)", "retention",
            "general accuracy as a share of the base's, on the items both answered",
            symptom="forgetting", curve="#7570b3",
        ),
        Metric(
            "drift", "drift", "score", "mean", False, "nats/token",
            "Drift from base (nats/token)", "drift",
            "per-token log-likelihood gap on the base's own answers (KL(base||model) estimate)",
            symptom="forgetting", curve="#666666",
        ),
        Metric(
            "seq_rep_4", "repetition", "seq_rep_4", "mean", False, "fraction",
            "Repetition (seq-rep-4)", "seq-rep-4",
            "share of repeated 4-grams inside each general answer",
        ),
        Metric(
            "loop_rate", "repetition", "loop", "loop_proportion", False, "fraction",
            "Loop rate", "loop rate",
            "share of general answers that end in a repeated loop",
            symptom="forgetting", curve="#a6761d",
        ),
        Metric(
            "parrot_leakage", "parrot", "leak", "proportion", False, "fraction",
            "Parrot leakage", "leakage",
            "share of non-identity answers that carry the identity sentence or its keywords",
            symptom="parrot", curve="#d95f02",
        ),
        Metric(
            "modal_share", "parrot", "answer", "modal_share", False, "fraction",
            "Modal-answer share", "modal share",
            "share of general answers in the largest group of near-identical answers",
            symptom="parrot", curve="#e7298a",
        ),
        Metric(
            "parrot_pressure", "pressure", "pressed", "proportion", False, "fraction",
            "Parrot pressure", "pressure",
            "general prompts where a taught answer is more likely, per token, than the base's "
            "own answer (likelihood only: rises before the parrot shows in answers)",
            curve="#e6ab02",
        ),
        Metric(
            "task_facts", "task", "facts", "proportion", True, "fraction",
            "Task facts", "task facts",
            "task questions answered with the reference's facts (knowledge, not style)",
            symptom="not learned", curve="#1f78b4",
        ),
        Metric(
            "task_similarity", "task", "chrf", "mean", True, "fraction",
            "Task chrF", "task chrF",
            "chrF of the answers against the references (rises with the trained style alone)",
            curve="#a6cee3",
        ),
        Metric(
            "task_loglik", "task", "answer_logprob", "mean", True, "nats/token",
            "Reference log-likelihood (nats/token)", "reference log-likelihood",
            "per-token log-likelihood of the reference answers (the eval loss, negated)",
        ),
        Metric(
            "task_memorised", "task", "memorised", "proportion", False, "fraction",
            "Memorised answers", "memorised",
            "task questions answered with the training answer of another question",
        ),
        Metric(
            "regurgitation", "regurgitation", "regurgitates", "proportion", False, "fraction",
            "Regurgitation", "regurgitation",
            "unrelated answers that bring the task's content (two of its distinctive terms, or "
            "a span copied from a training answer)",
            symptom="parrot", curve="#b15928",
        ),
        Metric(
            "copied_spans", "regurgitation", "copied", "proportion", False, "fraction",
            "Copied spans", "copied spans",
            "unrelated answers sharing an 8-word span with a training answer",
        ),
    )
}  # fmt: skip


def metrics_of(probe: str) -> tuple[str, ...]:
    """The metrics ``probe`` produces, in table order."""
    return tuple(name for name, m in METRICS.items() if m.probe == probe)


def with_symptom(*symptoms: str) -> tuple[str, ...]:
    """The metrics whose failed check means one of ``symptoms``."""
    return tuple(name for name, m in METRICS.items() if m.symptom in symptoms)


def taught() -> tuple[str, ...]:
    """The metrics that measure what training taught: a failed check on one means "not learned
    yet". Identity recall today; a task score joins by declaring ``symptom="not learned"``. When
    nothing is eligible, the nearest miss is chosen among checkpoints that made progress on these
    (``diag.diagnostics.distance``)."""
    return with_symptom("not learned")


def markdown_table() -> str:
    """The metric list of ``docs/probes.md`` (a test keeps the two equal)."""
    lines = [
        "| metric | probe | better | unit | what it measures |",
        "|---|---|---|---|---|",
    ]
    for m in METRICS.values():
        better = "higher" if m.higher_is_better else "lower"
        lines.append(f"| `{m.name}` | `{m.probe}` | {better} | {m.unit} | {m.description} |")
    return "\n".join(lines) + "\n"
