"""Turn the records into a report: ratios, goals met, markdown, JSON.

Figures are summarised as in :mod:`._format`. Ratios are always "this target's
figure over the other's" in the figure's own unit: above 1 is better for a
rate (tasks/s, MB/s), below 1 is better for a time or a memory growth.
"""

from __future__ import annotations

import shlex
from typing import Any

from ._config import Config
from ._format import fmt, fmt_ratio, summarize
from ._goals import goals_for
from ._machine import load_average, versions
from ._measure import Metric
from ._runner import TargetRun
from ._targets import TargetSpec, default_start_method
from ._workloads import WORKLOADS, WorkloadInfo

__all__ = ["Results"]


class Results:
    """A finished (or interrupted) run, ready to be reported.

    Args:
        config: The run's configuration.
        targets: Every known target, available or not.
        runs: What was measured, per target.
        workloads: The workloads asked for, in order.
        command: The command line, for the record.
        started: Unix time the run started.
        duration: Seconds it took.
        machine: :func:`machine_info` at the start.
        load_after: Load average at the end.
    """

    def __init__(
        self,
        *,
        config: Config,
        targets: list[TargetSpec],
        runs: list[TargetRun],
        workloads: list[str],
        command: list[str],
        started: float,
        duration: float,
        machine: dict[str, Any],
        interrupted: bool = False,
    ) -> None:
        self.config = config
        self.targets = targets
        self.runs = runs
        self.workloads = workloads
        self.command = command
        self.started = started
        self.duration = duration
        self.machine = machine
        self.interrupted = interrupted
        self.load_after = load_average()
        self.versions = versions()
        self._by_key = {
            (run.spec.name, record["workload"]): record
            for run in runs
            for record in run.records
        }

    # -- look-ups ---------------------------------------------------------

    def record(self, target: str, workload: str) -> dict[str, Any] | None:
        """The record of ``workload`` on ``target``, if it was measured."""
        return self._by_key.get((target, workload))

    def median(self, target: str, workload: str, metric: str) -> float | None:
        """The median of one figure, or None if it was not measured."""
        record = self.record(target, workload)
        if record is None or record.get("status") != "ok":
            return None
        summary = summarize(record.get("samples", {}).get(metric, []))
        return None if summary is None else summary["median"]

    def ratio(
        self, target: str, workload: str, metric: str, other: str, other_metric: str
    ) -> float | None:
        """``target``'s figure over ``other``'s (None if either is missing)."""
        mine = self.median(target, workload, metric)
        theirs = self.median(other, workload, other_metric)
        if mine is None or theirs is None or theirs == 0:
            return None
        return mine / theirs

    def speedup(self, target: str, workload: str) -> float | None:
        """Serial wall time over this target's (CPU-bound and --func)."""
        serial = self.median("serial", workload, "seconds")
        mine = self.median(target, workload, "seconds")
        if serial is None or mine is None or mine == 0:
            return None
        return serial / mine

    def best(self, workload: str, metric: Metric) -> float | None:
        """The best median of ``metric`` among the targets.

        Targets that hand the very same object back (threads, inline) are
        left out of the payload's "best": they copy nothing, so no pool
        could compare.
        """
        values = []
        for run in self.runs:
            record = self.record(run.spec.name, workload) or {}
            if record.get("params", {}).get("copied") is False:
                continue
            value = self.median(run.spec.name, workload, metric.key)
            if value is not None:
                values.append(value)
        if not values:
            return None
        return max(values) if metric.higher_is_better else min(values)

    def failures(self) -> list[dict[str, Any]]:
        """Records that hung, crashed or returned wrong results."""
        return [
            {"target": run.spec.name, **record}
            for run in self.runs
            for record in run.records
            if record.get("status") in ("hung", "crashed", "error")
        ]

    def goals(self) -> list[dict[str, Any]]:
        """The project's performance goals, checked where measured."""
        ours = [s.name for s in self.targets if s.kind == "ours" and s.available]
        counterparts = {s.name: s.counterpart for s in self.targets}
        out = []
        for goal in goals_for(ours, counterparts):
            if goal.workload not in self.workloads:
                continue
            if goal.other is None:
                value = self.median(goal.target, goal.workload, goal.metric)
                kind = "absolute"
            else:
                value = self.ratio(
                    goal.target,
                    goal.workload,
                    goal.metric,
                    goal.other,
                    goal.other_metric or goal.metric,
                )
                kind = "ratio"
            if value is None:
                continue
            met = (
                value >= goal.threshold if goal.op == ">=" else value <= goal.threshold
            )
            out.append(
                {
                    "area": goal.area,
                    "goal": goal.text,
                    "kind": kind,
                    "value": value,
                    "op": goal.op,
                    "threshold": goal.threshold,
                    "met": met,
                }
            )
        return out

    # -- JSON -------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """All raw figures, their summaries, ratios, versions and machine."""
        results = []
        for run in self.runs:
            spec = run.spec
            for record in run.records:
                workload = WORKLOADS[record["workload"]]
                entry = {"target": spec.name, "kind": spec.kind, **record}
                entry["summary"] = {
                    m.key: summary
                    for m in workload.metrics
                    if (summary := summarize(record.get("samples", {}).get(m.key, [])))
                    is not None
                }
                entry["units"] = {m.key: m.unit for m in workload.metrics}
                entry["ratios"] = self._ratios(spec, workload)
                if workload.name in ("cpu", "func"):
                    entry["speedup_vs_serial"] = self.speedup(spec.name, workload.name)
                results.append(entry)
        return {
            "schema": "executors-bench/1",
            "command": self.command,
            "started": self.started,
            "duration_s": self.duration,
            "interrupted": self.interrupted,
            "quick": self.config.quick,
            "config": self.config.to_json(),
            "machine": {**self.machine, "load_average_after": self.load_after},
            "versions": self.versions,
            "workloads": self.workloads,
            "targets": [
                {**s.to_json(), "notes": self._notes(s.name)} for s in self.targets
            ],
            "results": results,
            "goals": self.goals(),
        }

    def _notes(self, name: str) -> list[str]:
        for run in self.runs:
            if run.spec.name == name:
                return run.notes
        return []

    def _ratios(self, spec: TargetSpec, workload: WorkloadInfo) -> dict[str, float]:
        if spec.counterpart is None:
            return {}
        out = {}
        for ratio in workload.ratios:
            value = self.ratio(
                spec.name, workload.name, ratio.ours, spec.counterpart, ratio.raw
            )
            if value is not None:
                out[ratio.label] = value
        return out

    # -- markdown ---------------------------------------------------------

    def markdown(self) -> str:
        """The report: a header, one table per workload, the goals."""
        lines = [*self._header(), ""]
        for name in self.workloads:
            lines += [*self._table(WORKLOADS[name]), ""]
        goals = self.goals()
        if goals:
            lines += [*self._goal_table(goals), ""]
        failures = self.failures()
        if failures:
            lines.append("## Failures")
            lines.append("")
            for failure in failures:
                message = str(failure.get("message", "")).splitlines()
                lines.append(
                    f"- **{failure['target']}** / {failure['workload']}: "
                    f"{failure['status']}: {message[0] if message else ''}"
                )
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    def _header(self) -> list[str]:
        m = self.machine
        cpu = f", {m['cpu']}" if m.get("cpu") else ""
        memory = f", {m['memory_gb']:.1f} GB RAM" if m.get("memory_gb") else ""
        load = ""
        if m.get("load_average") and self.load_after:
            load = (
                f"; load average {m['load_average'][0]:.2f} at the start, "
                f"{self.load_after[0]:.2f} at the end"
            )
        v = self.versions
        installed = ", ".join(
            f"{name} {version}" for name, version in v.items() if version
        )
        c = self.config
        if c.start_method is None:
            start_method = (
                f"each backend's default; raw pools: {default_start_method()}"
            )
        else:
            start_method = f"{c.start_method} for every process pool"
        lines = [
            "# executors benchmark",
            "",
            f"- Command: `{shlex.join(self.command)}` ({self.duration:.0f} s)",
            f"- Machine: {m['platform']}, {m['usable_cpus']} usable CPUs{cpu}"
            f"{memory}{load}",
            f"- Versions: {installed}",
            f"- {c.workers} workers per pool; start method: {start_method}; up to "
            f"{c.repeats} repeats per figure"
            + (f" over {c.rounds} rounds" if c.rounds > 1 else "")
            + f", bounded at {c.bound:.0f} s each",
            "- Each cell: median [range: min..max, or 10th..90th percentile over "
            "10+ samples]. Ratios: this target's median over the other's, in "
            "the figure's unit (above 1 is better for rates, below 1 for times "
            "and memory). *vs best*: over the best target in the table.",
        ]
        if c.quick:
            lines.append(
                "- **--quick**: workloads scaled down; the figures show the shape "
                "of the results, not numbers to quote."
            )
        if self.interrupted:
            lines.append("- **Interrupted**: the run was stopped before the end.")
        unavailable = [s for s in self.targets if not s.available]
        if unavailable:
            lines.append("- Not measured (unavailable here):")
            lines += [f"  - `{s.name}`: {s.reason}" for s in unavailable]
        for run in self.runs:
            for note in run.notes:
                lines.append(f"- `{run.spec.name}`: {note}")
        return lines

    def _table(self, workload: WorkloadInfo) -> list[str]:
        c = self.config
        rows = []
        skipped = []
        for run in self.runs:
            record = self.record(run.spec.name, workload.name)
            if record is None:
                continue
            if record.get("status") == "unsupported":
                skipped.append(f"`{run.spec.name}` ({record.get('message')})")
            else:
                rows.append((run.spec, record))
        lines = [f"## {workload.title(c)}", ""]
        if skipped:
            lines += ["Not applicable: " + "; ".join(skipped) + ".", ""]
        if not rows:
            return [*lines, "Not measured on any target."]
        headers = ["target", "raw"]
        headers += [f"{m.label} ({m.unit})" for m in workload.metrics]
        headers += [r.label for r in workload.ratios]
        speedup = workload.name in ("cpu", "func")
        if speedup:
            headers.append("speedup vs serial")
        headers += ["vs best", "notes"]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "---|" * len(headers))
        best = self.best(workload.name, workload.headline)
        for spec, record in rows:
            name = f"**{spec.name}**" if spec.kind == "ours" else spec.name
            cells = [name, spec.counterpart or ""]
            status = record.get("status")
            blanks = len(workload.metrics) + len(workload.ratios) + int(speedup) + 1
            if status != "ok":
                message = str(record.get("message", "")).splitlines()
                text = status if status != "hung" else ""
                first = message[0] if message else ""
                cells.append(f"{text}: {first}".strip(": ") if text else first)
                cells += ["—"] * (blanks - 1)
                cells.append("")
            else:
                cells += self._ok_cells(spec, record, workload, best, speedup)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return lines

    def _ok_cells(
        self,
        spec: TargetSpec,
        record: dict[str, Any],
        workload: WorkloadInfo,
        best: float | None,
        speedup: bool,
    ) -> list[str]:
        cells = []
        samples = record.get("samples", {})
        for metric in workload.metrics:
            summary = summarize(samples.get(metric.key, []))
            if summary is None:
                cells.append("—")
                continue
            text = fmt(summary["median"], metric.unit)
            if summary["n"] > 1:
                text += (
                    f" [{fmt(summary['lo'], metric.unit)}.."
                    f"{fmt(summary['hi'], metric.unit)}]"
                )
            cells.append(text)
        for ratio in workload.ratios:
            value = None
            if spec.counterpart is not None:
                value = self.ratio(
                    spec.name, workload.name, ratio.ours, spec.counterpart, ratio.raw
                )
            cells.append(fmt_ratio(value) if value is not None else "")
        if speedup:
            value = self.speedup(spec.name, workload.name)
            cells.append(fmt_ratio(value) if value is not None else "")
        mine = self.median(spec.name, workload.name, workload.headline.key)
        if record.get("params", {}).get("copied") is False:
            cells.append("")
        else:
            cells.append(fmt_ratio(mine / best) if mine is not None and best else "")
        cells.append("; ".join(self._describe(record, workload)))
        return cells

    def _describe(self, record: dict[str, Any], workload: WorkloadInfo) -> list[str]:
        params = record.get("params", {})
        notes = list(record.get("notes", []))
        name = workload.name
        if name == "tiny" and "best_chunksize" in params:
            notes.insert(0, f"best chunksize {params['best_chunksize']:,}")
        if name == "classic" and "ideal" in params:
            notes.insert(0, f"ideal {params['ideal']:g} s")
        if name == "roundtrip" and "calls" in params:
            notes.insert(0, f"{params['calls']:,} calls")
        if name == "func":
            digest = params.get("digest")
            reference = (self.record("serial", "func") or {}).get("params", {})
            if digest and reference.get("digest") and digest != reference["digest"]:
                notes.append("results differ from serial")
        return notes

    def _goal_table(self, goals: list[dict[str, Any]]) -> list[str]:
        lines = ["## Performance goals", ""]
        if self.config.quick:
            lines += ["Indicative only in a --quick run.", ""]
        if self.config.workers != 2:
            lines += ["The goals assume 2 workers; this run used "
                      f"{self.config.workers}.", ""]  # fmt: skip
        lines += [
            "What the project aims for against the libraries it wraps, and "
            "whether this run meets it.",
            "",
            "| what it checks | figure | measured | goal | met |",
            "|---|---|---|---|---|",
        ]
        for goal in goals:
            if goal["kind"] == "ratio":
                value = fmt_ratio(goal["value"])
                wanted = f"{goal['op']} {fmt_ratio(goal['threshold'])}"
            else:
                value = fmt(goal["value"], "")
                wanted = f"{goal['op']} {fmt(goal['threshold'], '')}"
            met = "yes" if goal["met"] else "**no**"
            lines.append(
                f"| {goal['area']} | {goal['goal']} | {value} | {wanted} | {met} |"
            )
        return lines
