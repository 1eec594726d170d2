"""Plotly figure specs (plain dicts, no plotly import) for the report: curves and the trade-off.

The HTML embeds these as JSON and draws them with the plotly.js bundled into the page.
"""

from __future__ import annotations

from diag.metrics import METRICS
from diag.records import CheckpointRecord, RunRecord

KEYWORD_COLOURS = ("#0b5d45", "#4fc1a0", "#2c7fb8", "#8c6bb1")  # per-keyword recall, dotted
LOSS_COLOURS = {"train_loss": "#1f78b4", "eval_loss": "#a6cee3"}


def _points(records: list[CheckpointRecord], metric: str) -> tuple[list, list]:
    xs, ys = [], []
    for r in records:
        value = r.metric(metric)
        if value is not None:
            xs.append(r.step)
            ys.append(value)
    return xs, ys


def keyword_traces(records: list[CheckpointRecord]) -> list[dict]:
    """One dotted curve per identity keyword (the share of identity prompts that say it), so a
    name learned at step 40 and an owner at step 60 show as two curves; none for one keyword."""
    words = list(dict.fromkeys(w for r in records for w in r.identity_keywords or {}))
    if len(words) < 2:
        return []
    traces = []
    for i, word in enumerate(words):
        points = [
            (r.step, r.identity_keywords[word].value)
            for r in records
            if word in (r.identity_keywords or {}) and r.identity_keywords[word].value is not None
        ]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"says '{word}'",
                "x": [p[0] for p in points],
                "y": [p[1] for p in points],
                "line": {"color": KEYWORD_COLOURS[i % len(KEYWORD_COLOURS)], "dash": "dot"},
                "marker": {"size": 5},
            }
        )
    return traces


def run_curves(run: str, records: list[dict], run_info: dict, marks: dict) -> dict:
    """Metric-vs-step curves for one run (base at step 0 first), loss + drift on a second axis.

    Every metric of the table with a ``curve`` colour is drawn: fractions and ratios on the left
    axis, nats/token (drift) beside the losses on the right one.
    ``marks``: {"recommended": step | None, "onset": step | None, "healthy_until": step | None}.
    """
    records = sorted((CheckpointRecord.coerce(r) for r in records), key=lambda r: r.step)
    run_info = RunRecord.coerce(run_info)
    traces = metric_traces(records) + loss_traces(run_info)
    shapes, notes = step_marks(marks, last_step=max((r.step for r in records), default=0))
    # fractions live in [0, 1], but retention (× base) can exceed 1: keep every point on screen
    top = max([1.05] + [y + 0.05 for t in traces if "yaxis" not in t for y in t["y"]])
    return {
        "data": traces,
        "layout": {
            "title": {"text": f"{run}: metrics by step"},
            "xaxis": {"title": {"text": "step (0 = base model)"}},
            "yaxis": {"title": {"text": "fraction"}, "range": [-0.02, top]},
            "yaxis2": {
                "title": {"text": "nats/token (loss, drift)"},
                "overlaying": "y",
                "side": "right",
                "rangemode": "tozero",
                "showgrid": False,
            },
            "shapes": shapes,
            "annotations": notes,
            "legend": {"orientation": "h", "y": -0.2},
            "margin": {"t": 60, "r": 70},
            "height": 460,
        },
    }


def metric_traces(records: list[dict]) -> list[dict]:
    """One curve per drawn metric; identity recall with its interval and its keyword curves."""
    traces, nats = [], []
    for name, metric in METRICS.items():
        xs, ys = _points(records, name)
        if not xs or metric.curve is None:
            continue
        if metric.unit == "nats/token":
            nats.append(_nats_trace(f"{metric.short} ({metric.unit})", xs, ys, metric.curve, "dot"))
            continue
        trace = {
            "type": "scatter",
            "mode": "lines+markers",
            "name": metric.label.lower(),
            "x": xs,
            "y": ys,
            "line": {"color": metric.curve},
            "marker": {"symbol": _symbols(records, name)},
        }
        if name == "identity_recall":
            trace["error_y"] = _interval_bars(records, name)
        traces.append(trace)
        if name == "identity_recall":
            traces += keyword_traces(records)
    return traces + nats


def _symbols(records: list[CheckpointRecord], name: str) -> list[str]:
    """Filled markers for the full suite, open ones for checkpoints only the screen measured."""
    return [
        "circle-open" if r.screened_only else "circle"
        for r in records
        if r.metric(name) is not None
    ]


def _interval_bars(records: list[dict], name: str) -> dict:
    lows, highs = [], []
    for r in records:
        v, st = r.metric(name), r.stat(name)
        if v is None:
            continue
        lows.append(max(0.0, v - st.low) if st.low is not None else 0.0)
        highs.append(max(0.0, st.high - v) if st.high is not None else 0.0)
    return {"type": "data", "array": highs, "arrayminus": lows, "width": 3}


def loss_traces(run_info: dict) -> list[dict]:
    traces = []
    for key, label in (("train_loss", "train loss"), ("eval_loss", "eval loss")):
        pairs = sorted(getattr(run_info, key) or [])
        if pairs:
            xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
            traces.append(_nats_trace(label, xs, ys, LOSS_COLOURS[key], "dash"))
    return traces


def step_marks(marks: dict, last_step: int) -> tuple[list[dict], list[dict]]:
    """(shapes, annotations): dashed lines at the recommended and onset steps, the collapsing
    stretch shaded."""
    shapes, notes = [], []
    for step, colour, text, side in (
        (marks.get("recommended"), "#1b9e77", "recommended", "right"),
        (marks.get("onset"), "#d62728", "collapse", "left"),
    ):
        if step is None:
            continue
        line = {"color": colour, "dash": "dash", "width": 2}
        shapes.append(
            {"type": "line", "xref": "x", "yref": "paper", "x0": step, "x1": step, "y0": 0,
             "y1": 1, "line": line}
        )  # fmt: skip
        notes.append(
            {
                "x": step,
                "y": 1.02,
                "xref": "x",
                "yref": "paper",
                "text": f"{text} (step {step})",
                "xanchor": side,  # labels of adjacent steps sit on either side of their lines
                "showarrow": False,
                "font": {"color": colour},
            }
        )
    if marks.get("onset") is not None and marks.get("healthy_until") is not None:
        shapes.append(
            {
                "type": "rect",
                "xref": "x",
                "yref": "paper",
                "x0": marks["onset"],
                "x1": last_step,
                "y0": 0,
                "y1": 1,
                "fillcolor": "rgba(214,39,40,0.07)",
                "line": {"width": 0},
                "layer": "below",
            }
        )
    return shapes, notes


def _nats_trace(name: str, xs: list, ys: list, colour: str, dash: str) -> dict:
    return {
        "type": "scatter",
        "mode": "lines+markers",
        "name": name,
        "x": xs,
        "y": ys,
        "yaxis": "y2",
        "line": {"color": colour, "dash": dash},
        "marker": {"size": 4},
    }


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both coordinates (higher is better).

    >>> pareto_front([(0.5, 0.9), (0.9, 0.9), (1.0, 0.2), (0.4, 0.4)])
    [1, 2]
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (a >= x and b >= y) and (a > x or b > y) for j, (a, b) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def tradeoff(records: list, eligible: dict[tuple, bool], recommended: tuple | None) -> dict:
    """Identity recall vs retention for every checkpoint; the Pareto front joined by a line."""
    pts = [
        r
        for r in map(CheckpointRecord.coerce, records)
        if r.step != 0
        and r.metric("identity_recall") is not None
        and r.metric("retention") is not None
    ]
    runs = sorted({str(r.run) for r in pts})
    traces = [_run_points(run, [r for r in pts if str(r.run) == run], eligible) for run in runs]
    coords = [(r.metric("identity_recall"), r.metric("retention")) for r in pts]
    front = sorted((coords[i] for i in pareto_front(coords)), key=lambda p: p[0])
    if front:
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "Pareto front",
                "x": [p[0] for p in front],
                "y": [p[1] for p in front],
                "line": {"color": "#999", "dash": "dot"},
            }
        )
    star = [r for r in pts if recommended and (str(r.run), r.step) == recommended]
    if star:
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "recommended",
                "x": [star[0].metric("identity_recall")],
                "y": [star[0].metric("retention")],
                "marker": {"size": 22, "symbol": "star", "color": "#1b9e77"},
            }
        )
    return {
        "data": traces,
        "layout": {
            "title": {
                "text": "trade-off: identity learned vs general ability kept (× = ineligible)"
            },
            "xaxis": {"title": {"text": "identity recall"}, "range": [-0.05, 1.08]},
            "yaxis": {"title": {"text": "retention (× base accuracy)"}, "rangemode": "tozero"},
            "height": 460,
        },
    }


def _run_points(run: str, mine: list[CheckpointRecord], eligible: dict[tuple, bool]) -> dict:
    """One run's checkpoints as labelled markers: a circle when eligible, an × when not."""
    return {
        "type": "scatter",
        "mode": "markers+text",
        "name": run,
        "x": [r.metric("identity_recall") for r in mine],
        "y": [r.metric("retention") for r in mine],
        "text": [str(r.step) for r in mine],
        "textposition": "top center",
        "marker": {
            "size": 11,
            "symbol": ["circle" if eligible.get((str(r.run), r.step)) else "x" for r in mine],
        },
        "hovertemplate": "step %{text}<br>identity %{x:.0%}<br>retention %{y:.2f}",
    }
