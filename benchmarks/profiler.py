"""Where a sweep's (or a demo's) time goes: patches diag's stages for the length of a run and
splits every probe task's wall time into what ran inside it.

    from profiler import Profiler
    with Profiler() as prof:
        sweep(...)
    prof.tasks   # one dict per probe task: label, seconds, exclusive seconds per part, counts

Parts (exclusive time: a part's own, its children's taken out):
  prefill       model forward passes over more than one new token per row inside ``generate``
                (the shared prefix and the prompts)
  decode        one-token forward passes inside ``generate`` (one per decode step)
  generate      the rest of ``generate``: tokenising, batching, the Python decode loop, detokenising
  ll_forward    forward passes inside ``loglikelihood``
  loglikelihood the rest of ``loglikelihood``: tokenising, log-softmax, gathering
  adapter_swap  ``apply_checkpoint`` (reading the adapter, peft load, merge into the base)
  scoring       ``rescore`` (grading, aggregating, the summary)
  io            the cache's reads and writes, ``results.json`` after every checkpoint, fingerprints
  stopping      the staged full suite's sequential-stopping rule, judged after each chunk
  deciding      the staged sweep choosing what the full suite measures next (outside tasks)
  other         the task's time not in any part above (run_probes' own bookkeeping)

Counts per task: prompts generated, generate calls, decode steps, new tokens, answers that hit
the token limit, prompts in Chinese, log-likelihood requests and tokens scored.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict

CJK = re.compile(r"[\u4e00-\u9fff]")


class _Clock:
    """Exclusive time per part: a stack of running parts, each one's children taken out."""

    def __init__(self):
        self.stack: list[list] = []  # [part, started, children seconds]
        self.totals: dict[str, float] = defaultdict(float)

    def enter(self, part: str) -> None:
        self.stack.append([part, time.perf_counter(), 0.0])

    def leave(self) -> float:
        part, started, children = self.stack.pop()
        elapsed = time.perf_counter() - started
        self.totals[part] += elapsed - children
        if self.stack:
            self.stack[-1][2] += elapsed
        return elapsed


class Profiler:
    """Patches HFBackend, the checkpoint loader, scoring, the cache and the sweep's workers."""

    def __init__(self):
        self.clock = _Clock()
        self.tasks: list[dict] = []
        self.outside: dict[str, float] = {}  # exclusive seconds outside any probe task
        self.counts: dict[str, int] = defaultdict(int)
        self._patches: list[tuple[object, str, object]] = []
        self._hooked: set[int] = set()

    # ------------------------------------------------------------------------------- patching
    def _wrap(self, owner, attr: str, part: str, on_call=None) -> None:
        original = getattr(owner, attr)
        clock = self.clock

        def timed(*args, **kwargs):
            clock.enter(part)
            try:
                result = original(*args, **kwargs)
            finally:
                clock.leave()
            if on_call is not None:
                on_call(args, kwargs, result)
            return result

        setattr(owner, attr, timed)
        self._patches.append((owner, attr, original))

    def _hook_model(self, backend) -> None:
        """Forward hooks on the backend's model: prefill vs decode vs log-likelihood passes."""
        model = backend.model
        if id(model) in self._hooked:
            return
        self._hooked.add(id(model))
        clock = self.clock

        def before(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            inside = clock.stack[-1][0] if clock.stack else ""
            if inside == "loglikelihood":
                part = "ll_forward"
            else:
                part = "decode" if ids is not None and ids.shape[1] == 1 else "prefill"
            if part == "decode":
                self.counts["decode_steps"] += 1
            clock.enter(part)

        def after(module, args, kwargs, output):
            clock.leave()

        model.register_forward_pre_hook(before, with_kwargs=True)
        model.register_forward_hook(after, with_kwargs=True)

    def __enter__(self) -> Profiler:
        import diag.diagnostics.cache as cache
        import diag.diagnostics.collected as collected
        import diag.diagnostics.staging as staging
        import diag.diagnostics.workers as workers
        import diag.probes.suite as suite

        import diag.backend.checkpoints as checkpoints
        from diag.backend.hf import HFBackend

        counts = self.counts
        clock = self.clock
        profiler = self

        def timed(part: str, original, count):
            """``original`` timed as ``part`` (the model's own passes split out by the hooks),
            then ``count(asked, answers)`` adds to the counts."""

            def call(backend, asked, *args, **kwargs):
                profiler._hook_model(backend)
                clock.enter(part)
                try:
                    out = original(backend, asked, *args, **kwargs)
                finally:
                    clock.leave()
                count(asked, out)
                return out

            return call

        def count_generated(prompts, out) -> None:
            counts["generate_calls"] += 1
            counts["generated"] += len(prompts)
            counts["new_tokens"] += sum(g.new_tokens for g in out)
            counts["hit_limit"] += sum(bool(g.hit_limit) for g in out)
            counts["chinese_prompts"] += sum(bool(CJK.search(p)) for p in prompts)

        def count_scored(requests, out) -> None:
            counts["ll_calls"] += 1
            counts["ll_requests"] += len(requests)
            counts["ll_tokens"] += sum(r.tokens for r in out)

        counted_generate = timed("generate", HFBackend.generate, count_generated)
        counted_loglikelihood = timed("loglikelihood", HFBackend.loglikelihood, count_scored)
        for attr, fn in (("generate", counted_generate), ("loglikelihood", counted_loglikelihood)):
            self._patches.append((HFBackend, attr, getattr(HFBackend, attr)))
            setattr(HFBackend, attr, fn)
        self._wrap(checkpoints, "apply_checkpoint", "adapter_swap")
        self._wrap(suite, "rescore", "scoring")
        self._wrap(cache.ResultCache, "get", "io")
        self._wrap(cache.ResultCache, "put", "io")
        self._wrap(cache.Fingerprinter, "fingerprint", "io")
        self._wrap(cache.Fingerprinter, "save", "io")
        self._wrap(collected.CollectedResults, "write_partial", "io")
        self._wrap(staging, "to_promote", "deciding")
        self._wrap_stop_rule(staging)
        self._wrap_tasks(workers)
        return self

    def _wrap_stop_rule(self, staging) -> None:
        """The sequential-stopping rule, judged after every chunk of a full suite: "stopping"."""
        original = staging.stop_rule
        clock = self.clock

        def stop_rule(*args, **kwargs):
            enough = original(*args, **kwargs)

            def timed(run):
                clock.enter("stopping")
                try:
                    return enough(run)
                finally:
                    clock.leave()

            return timed

        staging.stop_rule = stop_rule
        self._patches.append((staging, "stop_rule", original))

    def _wrap_tasks(self, workers) -> None:
        original = workers.execute
        profiler = self

        def execute(lm, task, say=None):
            before = dict(profiler.clock.totals)
            counts_before = dict(profiler.counts)
            profiler.clock.enter("other")
            started = time.perf_counter()
            try:
                return original(lm, task, say)
            finally:
                profiler.clock.leave()
                parts = {
                    k: round(v - before.get(k, 0.0), 3)
                    for k, v in profiler.clock.totals.items()
                    if v - before.get(k, 0.0) > 0.0005
                }
                counts = {
                    k: v - counts_before.get(k, 0)
                    for k, v in profiler.counts.items()
                    if v - counts_before.get(k, 0)
                }
                stage = "full" if "full suite" in task.label else "screen"
                if task.ckpt is None:
                    stage = "base"
                profiler.tasks.append(
                    {
                        "label": task.label,
                        "stage": stage,
                        "seconds": round(time.perf_counter() - started, 2),
                        "parts": parts,
                        "counts": counts,
                        "reused_records": len(task.reuse),
                        "sequential": task.enough is not None,
                    }
                )

        workers.execute = execute
        self._patches.append((workers, "execute", original))

    def __exit__(self, *exc) -> None:
        for owner, attr, original in reversed(self._patches):
            setattr(owner, attr, original)
        self.outside = dict(self.clock.totals)

    # -------------------------------------------------------------------------------- summary
    def summary(self) -> dict:
        """Per stage: tasks, seconds (sum, min, max) and the parts summed."""
        out: dict[str, dict] = {}
        for task in self.tasks:
            row = out.setdefault(
                task["stage"], {"tasks": 0, "seconds": 0.0, "min": None, "max": None, "parts": {}}
            )
            row["tasks"] += 1
            row["seconds"] = round(row["seconds"] + task["seconds"], 2)
            row["min"] = min(row["min"] or task["seconds"], task["seconds"])
            row["max"] = max(row["max"] or 0.0, task["seconds"])
            for part, value in task["parts"].items():
                row["parts"][part] = round(row["parts"].get(part, 0.0) + value, 2)
        return out
