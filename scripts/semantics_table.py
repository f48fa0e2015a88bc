"""Regenerate docs/semantics.md from a real run of the conformance suite.

Runs the fault and conformance tests with pytest (in this process, with a
small plugin that records every test's outcome, its skip reason and what the
backend did), then writes a table: one row per contract item, one column per
backend, each cell *pass* (with the exception the backend raised, where the
contract allows a choice), *n/a* with the declared capability that excludes
it, *not installed*, or *FAIL*.

Usage::

    python scripts/semantics_table.py                # full run, writes the page
    python scripts/semantics_table.py --quick        # without leak cycles
    python scripts/semantics_table.py --json run.json
    python scripts/semantics_table.py --from-json run.json   # re-render only

Exit status: 0 when every test passed or was skipped, 1 otherwise (the page
is written either way: a failure is part of the published semantics).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "semantics.md"

#: Test files, in the order their sections appear on the page.
SUITE = [
    "tests/test_faults.py",
    "tests/test_interrupt.py",
    "tests/test_parent_death.py",
    "tests/test_exit.py",
    "tests/test_edges.py",
    "tests/test_dask_edges.py::test_the_local_cluster_admits_no_one_without_its_key",
    "tests/test_dask_edges.py::test_a_dashboard_port_without_host_binds_localhost_only",
    "tests/test_bad_input.py",
    "tests/test_leaks.py",
    "tests/test_conformance.py",
    # celery runs the same contract classes on one shared deployment (its
    # module sets SEMANTICS_BACKEND); the Pool classes are not on this page.
    *(
        f"tests/test_celery_conformance.py::{cls}"
        for cls in (
            "TestSubmit",
            "TestMap",
            "TestShutdown",
            "TestInitializer",
            "TestCrash",
            "TestCallbacks",
            "TestReferences",
            "TestWorkerCrash",
            "TestPicklingFault",
            "TestInitializerFault",
            "TestShutdownFault",
            "TestBadInput",
            "TestTaskControl",
        )
    ),
]

SECTIONS = {
    "TestWorkerCrash": "Worker crashes",
    "TestPicklingFault": "Pickling failures",
    "TestInitializerFault": "Initializer failures",
    "test_interrupt": "Ctrl-C: in a with block, and without one (group, parent)",
    "test_parent_death": "The caller killed with SIGKILL",
    "test_exit": "Interpreter exit",
    "test_edges": "Edges: tracebacks, secrets, security defaults, max_tasks_per_child",
    "TestBadInput": "Bad input: executor entry points",
    "test_bad_input": "Bad input: create()",
    "TestLeaks": "Leaks",
    "TestSubmit": "Conformance: submit",
    "TestMap": "Conformance: map",
    "TestShutdown": "Conformance: shutdown",
    "TestInitializer": "Conformance: initializer",
    "TestCrash": "Conformance: basic crashes",
    "TestCallbacks": "Conformance: done-callbacks",
    "TestReferences": "Conformance: no stale references",
    "TestTaskControl": "Task control: timeouts, retries, stopping work",
}


class Recorder:
    """A pytest plugin that keeps one record per test item."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        for item in items:
            callspec = getattr(item, "callspec", None)
            params = callspec.params if callspec is not None else {}
            backend = params.get("backend_name")
            if backend is None:
                # A module that runs the contract on one backend names it.
                backend = getattr(item.module, "SEMANTICS_BACKEND", None)
            case = callspec.id if callspec is not None else ""
            if backend is not None:
                case = _drop_backend(case, str(backend))
            cls = item.cls.__name__ if item.cls is not None else None
            module = Path(str(item.fspath)).stem
            self.items[item.nodeid] = {
                "section": cls or module,
                "test": item.originalname,
                "case": case,
                "backend": backend,
                "outcome": "not run",
                "detail": "",
                "observed": [],
            }

    def pytest_deselected(self, items: list[Any]) -> None:
        for item in items:
            self.items.pop(item.nodeid, None)

    def pytest_runtest_logreport(self, report: Any) -> None:
        record = self.items.get(report.nodeid)
        if record is None:
            return
        # Each phase's report carries every property recorded so far.
        observed = [str(v) for n, v in report.user_properties if n == "observed"]
        if observed:
            record["observed"] = observed
        if report.skipped:
            record["outcome"] = "skipped"
            record["detail"] = _skip_reason(report)
        elif report.failed:
            record["outcome"] = "failed" if report.when == "call" else "error"
            record["detail"] = _failure_line(report)
        elif report.when == "call" and record["outcome"] == "not run":
            record["outcome"] = "passed"


def _drop_backend(case: str, backend: str) -> str:
    if case == backend:
        return ""
    if case.startswith(backend + "-"):
        return case[len(backend) + 1 :]
    if case.endswith("-" + backend):
        return case[: -len(backend) - 1]
    return case.replace(f"-{backend}-", "-", 1)


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _failure_line(report: Any) -> str:
    text = str(report.longrepr)
    for line in text.splitlines():
        if line.startswith("E "):
            return line[1:].strip()
    return text.strip().splitlines()[-1] if text.strip() else "failed"


def run_suite(tests: list[str], extra: list[str]) -> dict[str, Any]:
    """Run pytest over ``tests``; return the recorded items and the run's facts."""
    import pytest

    recorder = Recorder()
    os.chdir(ROOT)
    args = ["-q", "-p", "no:cacheprovider", "-rN", *extra, *tests]
    started = datetime.datetime.now(datetime.timezone.utc)
    code = pytest.main(args, plugins=[recorder])
    finished = datetime.datetime.now(datetime.timezone.utc)
    return {
        "items": list(recorder.items.values()),
        "exit_code": int(code),
        "args": args,
        "started": started.isoformat(timespec="seconds"),
        "minutes": round((finished - started).total_seconds() / 60, 1),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
        "capabilities": declared_capabilities(),
    }


def _backends(items: list[dict[str, Any]]) -> list[str]:
    from executors import _registry

    seen = {i["backend"] for i in items if i["backend"]}
    names = [name for name in _registry._BUILTINS if name in seen]
    return names + sorted(seen - set(names))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return ""
    outcome = record["outcome"]
    if outcome == "passed":
        observed = record["observed"]
        if observed:
            # The exception named first is the one the contract lets vary.
            first = observed[0].split(";")[0].strip()
            if len(first) <= 40 and not first[:1].isdigit():
                return f"pass: {_escape(first)}"
        return "pass"
    if outcome == "skipped":
        reason = record["detail"]
        declared = re.search(r"declares (\w+=\w+)", reason)
        if declared:
            return f"n/a ({declared.group(1)})"
        if "not available" in reason or "not installed" in reason:
            return "not installed"
        return f"skip: {_escape(reason[:60])}"
    if outcome in ("failed", "error"):
        return f"**FAIL**: {_escape(record['detail'][:90])}"
    return outcome


def _row_label(record: dict[str, Any]) -> str:
    name = record["test"].removeprefix("test_").replace("_", " ")
    return f"{name} [{record['case']}]" if record["case"] else name


def declared_capabilities() -> dict[str, dict[str, bool]]:
    """Every installed backend's declared capabilities, by name."""
    import dataclasses

    import executors

    return {
        info.name: dataclasses.asdict(info.capabilities)
        for info in executors.list_backends()
        if info.capabilities is not None
    }


def _capability_table(
    capabilities: dict[str, dict[str, bool]], backends: list[str]
) -> list[str]:
    """One row per backend, one column per declared capability."""
    if not capabilities:
        return []
    names = list(next(iter(capabilities.values())))
    out = [
        "## Declared capabilities",
        "",
        "What each backend declares (see [fault tolerance](fault-tolerance.md)",
        "and [task control](task-control.md)); the suite selects its tests by",
        "these flags.",
        "",
        "| backend | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for backend in backends:
        flags = capabilities.get(backend)
        if flags is None:
            continue
        cells = ["yes" if flags[n] else "no" for n in names]
        out.append(f"| {backend} | " + " | ".join(cells) + " |")
    return [*out, ""]


def render(run: dict[str, Any], command: str) -> str:
    """The Markdown page for a recorded run."""
    items = run["items"]
    backends = _backends(items)
    counts: dict[str, int] = defaultdict(int)
    for record in items:
        counts[record["outcome"]] += 1
    by_section: dict[str, dict[str, dict[str, dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    global_rows: list[dict[str, Any]] = []
    for record in items:
        if record["backend"] is None:
            global_rows.append(record)
            continue
        by_section[record["section"]][_row_label(record)][record["backend"]] = record

    out = [
        "# Semantics by backend",
        "",
        "<!-- Generated by scripts/semantics_table.py: do not edit by hand. -->",
        "",
        "What each backend does on every item of the contract, as measured by",
        "the conformance and fault suites. *pass* means the backend met the",
        "contract; where the contract allows a choice (which exception a fault",
        "raises), the cell names the one observed. *n/a* names the declared",
        "capability that excludes the item (see",
        "[fault tolerance](fault-tolerance.md) for what each one means);",
        "**FAIL** is a deviation the backend does not declare.",
        "",
        f"Generated {run['started']} on Python {run['python']}, {run['platform']},",
        f"{run['cpus']} CPUs, in {run['minutes']} minutes: "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + ".",
        "",
        f"Regenerate with `{command}`.",
        "",
    ]
    out += _capability_table(run.get("capabilities", {}), backends)
    header = "| item | " + " | ".join(backends) + " |"
    rule = "|---|" + "---|" * len(backends)
    ordered = [s for s in SECTIONS if s in by_section] + sorted(
        s for s in by_section if s not in SECTIONS
    )
    for section in ordered:
        out += [f"## {SECTIONS.get(section, section)}", "", header, rule]
        for label, cells in by_section[section].items():
            row = [_escape(label)] + [_cell(cells.get(b)) for b in backends]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    if global_rows:
        out += ["## Backend-independent checks", "", "| item | result |", "|---|---|"]
        for record in global_rows:
            out.append(f"| {_escape(_row_label(record))} | {_cell(record)} |")
        out.append("")

    out += [
        "## What happened, case by case",
        "",
        "The `observed` record of each fault test: the exception the affected",
        "future raised, how the other futures ended, and whether the executor",
        "was still usable.",
        "",
    ]
    for section in ordered:
        lines = []
        for label, cells in by_section[section].items():
            for backend in backends:
                record = cells.get(backend)
                if record and record["observed"]:
                    text = "; ".join(dict.fromkeys(record["observed"]))
                    lines.append(f"| {_escape(label)} | {backend} | {_escape(text)} |")
        if lines:
            out += [
                f"### {SECTIONS.get(section, section)}",
                "",
                "| item | backend | observed |",
                "|---|---|---|",
                *lines,
                "",
            ]
    failures = [r for r in items if r["outcome"] in ("failed", "error")]
    if failures:
        out += ["## Failures", ""]
        for record in failures:
            where = record["backend"] or "all"
            out.append(
                f"- `{record['test']}` [{record['case'] or '-'}] on **{where}**: "
                f"{_escape(record['detail'])}"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--out", default=str(OUT), help="the page to write")
    parser.add_argument("--json", help="also save the raw run here")
    parser.add_argument("--from-json", help="render a saved run instead of running")
    parser.add_argument(
        "--quick", action="store_true", help="leave out the slow leak cycles"
    )
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("tests", nargs="*", help="test files (default: the suite)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT / "src"))
    command = "python scripts/semantics_table.py" + (" --quick" if args.quick else "")
    if args.from_json:
        run = json.loads(Path(args.from_json).read_text())
    else:
        tests = args.tests or SUITE
        extra = ["-m", "not slow"] if args.quick else []
        if args.keyword:
            extra += ["-k", args.keyword]
        run = run_suite(tests, extra)
        if args.json:
            Path(args.json).write_text(json.dumps(run, indent=1))
    Path(args.out).write_text(render(run, command) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    failed = any(r["outcome"] in ("failed", "error") for r in run["items"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
