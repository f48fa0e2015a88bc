"""The command's side of a certify run: probe, run the suite, watch, collect.

::

    command ──▶ probe child (python -m ...certify._probe) ──▶ capabilities, features
       │
       └──▶ pytest child (python -m pytest <generated module> -p ...certify._plugin)
               │ one JSON line per event ──▶ events file ──▶ command: progress, results
               │
               ├─ a test past its bound: pytest-timeout fails it (signal method);
               │  if that cannot interrupt it, the command kills the child's
               │  process group, records the test as hung and starts a new
               │  child that skips every settled test;
               ├─ the child dies (the target killed it): the running test fails,
               │  a new child goes on;
               └─ the whole run past --max-time: killed, the rest "not run".

Every process the run starts carries ``EXECUTORS_CERTIFY_RUN=<token>`` in
its environment; at the end the command kills whatever still carries it
(workers a target orphaned, a hung child's pools), so nothing outlives it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

from . import _suite
from ._assumed import capabilities
from ._card import Options, Scorecard, TestResult, topic_line, versions
from ._procs import RUN_TOKEN_VARIABLE, Child, describe_exit, kill_marked

__all__ = ["run"]

#: Seconds the probe child may take (a Dask cluster starts, a worker is
#: killed and replaced, twice).
PROBE_BOUND = 300.0
#: Seconds beyond a test's own timeout before the command stops waiting for
#: pytest-timeout and kills the child (a hang signals cannot interrupt):
#: half the timeout, within these bounds.
HANG_GRACE = (10.0, 30.0)
#: Seconds a child that has finished its tests gets to exit by itself
#: (a foreign pool's exit hook joins its workers).
EXIT_GRACE = 15.0
HYPOTHESIS_SEED = 0


# -- the run --------------------------------------------------------------


class _Runner:
    def __init__(self, options: Options, out: IO[str]) -> None:
        self.options = options
        self.out = out
        self.token = uuid.uuid4().hex
        self.tmp = Path(tempfile.mkdtemp(prefix="executors-certify-"))
        self.label = options.label or options.target
        self.card = Scorecard(
            target=options.target,
            label=self.label,
            kwargs=options.kwargs,
            workers=options.workers,
            versions=versions(options.target),
            date=datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC"
            ),
        )
        self.results: dict[str, TestResult] = {}
        self.reports: dict[str, list[dict[str, Any]]] = {}
        self.order: list[str] = []
        self.printed_topics: set[str] = set()
        self.topic_started: dict[str, float] = {}
        self.timeouts: dict[str, float] = {}
        self.announced = False
        self.tty = out.isatty()

    # -- environment -------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[RUN_TOKEN_VARIABLE] = self.token
        # The child runs in the run's directory: the caller's own modules
        # (a target next to it) stay importable.
        paths = [os.getcwd(), *filter(None, env.get("PYTHONPATH", "").split(":"))]
        env["PYTHONPATH"] = ":".join(paths)
        env["EXECUTORS_CERTIFY_CONFIG"] = str(self.tmp / "config.json")
        env["EXECUTORS_CERTIFY_EVENTS"] = str(self.tmp / "events.jsonl")
        env["EXECUTORS_CERTIFY_DONE"] = str(self.tmp / "done.txt")
        env.setdefault("PYTHONFAULTHANDLER", "1")
        return env

    def say(self, text: str = "") -> None:
        if self.tty:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        self.out.flush()

    def status(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K" + text[:110])
            self.out.flush()

    # -- the probe ---------------------------------------------------------

    def probe(self) -> bool:
        config = {
            "target": self.options.target,
            "label": self.label,
            "kwargs": self.options.kwargs,
            "workers": self.options.workers,
            "given": self.options.given,
        }
        (self.tmp / "probe.json").write_text(json.dumps(config))
        out_path = self.tmp / "probe.out.json"
        self.say(f"certify {self.label}: creating it and reading what it does...")
        cmd = [
            sys.executable,
            "-m",
            "executors.testing.certify._probe",
            str(self.tmp / "probe.json"),
            str(out_path),
        ]
        with (self.tmp / "probe.log").open("wb") as log:
            child = Child(cmd, self.tmp, self.env(), log)
            try:
                child.proc.wait(PROBE_BOUND)
            except subprocess.TimeoutExpired:
                kill_marked(self.token, child.proc)
        kill_marked(self.token)
        result: dict[str, Any] = {}
        if out_path.exists():
            result = json.loads(out_path.read_text())
        else:
            result = {
                "error": f"the probe did not finish within {PROBE_BOUND:.0f} s "
                f"(output: {self.log_tail('probe.log')})"
            }
        if "error" in result:
            self.card.error = f"cannot create or use the target: {result['error']}"
            self.say(self.card.error)
            return False
        self.card.executor_type = result["type"]
        self.card.ours = result["ours"]
        self.card.features = result["features"]
        self.card.capabilities = self._capabilities(result)
        self._print_capabilities()
        return True

    def _capabilities(self, result: dict[str, Any]) -> dict[str, list[Any]]:
        if result.get("declared") is not None and self.options.given:
            self.say(
                "note: the executor declares its capabilities; the capability "
                "flags given are ignored"
            )
        return capabilities(result, self.options.given)

    def _print_capabilities(self) -> None:
        kind = (
            "declared by the executor"
            if self.card.ours
            else "foreign executor: given by flags, probed, or assumed"
        )
        self.say(f"  {self.card.executor_type}; capabilities ({kind}):")
        for name, (value, why) in self.card.capabilities.items():
            self.say(f"    {name:<22} {'yes' if value else 'no ':<4} {why}")
        features = dict(self.card.features)
        if not features.pop("shutdown_cancel_futures", True):
            note = (
                "the target's shutdown() takes no cancel_futures (the stdlib's "
                "since Python 3.9): the tests that pass it fail; the suite's "
                "teardown calls shutdown(wait=True) instead"
            )
            self.card.notes.append(note)
            self.say(f"  note: {note}")
        lacking = [name for name, ok in features.items() if not ok]
        if lacking:
            self.say(
                "  not applicable, the target lacks this library's extensions: "
                + ", ".join(lacking)
            )

    # -- the suite ---------------------------------------------------------

    def write_suite(self) -> Path:
        classes = _suite.contract_classes()
        lines = [
            '"""Generated by python -m executors.testing certify."""',
            "",
            "from executors.testing import (",
            *(f"    {name}," for name in classes),
            ")",
            "from executors.testing.certify._plugin import NoCancelFuturesTeardown",
            "",
        ]
        lenient = not self.card.features.get("shutdown_cancel_futures", True)
        mixin = "NoCancelFuturesTeardown, " if lenient else ""
        for name in classes:
            lines += [
                "",
                f"class Test{name.removesuffix('Contract')}({mixin}{name}):",
                "    pass",
                "",
            ]
        module = self.tmp / "test_certify_target.py"
        module.write_text("\n".join(lines))
        (self.tmp / "pytest.ini").write_text(
            "[pytest]\n"
            "timeout_method = signal\n"
            "markers =\n"
            "    slow: takes more than a few seconds\n"
            "    cluster: starts separate processes\n"
            "filterwarnings =\n"
            "    ignore::DeprecationWarning\n"
        )
        config = {
            "target": self.options.target,
            "label": self.label,
            "kwargs": self.options.kwargs,
            "workers": self.options.workers,
            "capabilities": {k: v[0] for k, v in self.card.capabilities.items()},
            "features": self.card.features,
            "topics": self.options.topics,
        }
        (self.tmp / "config.json").write_text(json.dumps(config))
        (self.tmp / "done.txt").write_text("")
        return module

    def pytest_command(self, module: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pytest",
            str(module),
            "-c",
            str(self.tmp / "pytest.ini"),
            "--rootdir",
            str(self.tmp),
            "--basetemp",
            str(self.tmp / "basetemp"),
            "-p",
            "executors.testing.certify._plugin",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-p",
            "no:xdist",
            "-q",
            "--timeout",
            str(self.options.timeout),
            # The property-based tests draw the same examples on every run,
            # so that two scorecards of one target differ only where it does.
            "--hypothesis-seed",
            str(HYPOTHESIS_SEED),
        ]

    def run_suite(self, deadline: float) -> None:
        module = self.write_suite()
        events = self.tmp / "events.jsonl"
        events.write_text("")
        offset = 0
        children = 0
        with (self.tmp / "pytest.log").open("ab") as log:
            while True:
                children += 1
                child = Child(self.pytest_command(module), self.tmp, self.env(), log)
                running: str | None = None
                started = 0.0
                finished = False
                why_ended = ""
                buffer = ""
                while True:
                    with events.open(encoding="utf-8") as f:
                        f.seek(offset)
                        chunk = f.read()
                        offset = f.tell()
                    buffer += chunk
                    *lines, buffer = buffer.split("\n")
                    for line in lines:
                        event = json.loads(line)
                        kind = event["event"]
                        if kind == "collected":
                            self.collected(event["tests"])
                        elif kind == "start":
                            if running is not None:
                                self.settle(running)
                            running, started = event["id"], time.monotonic()
                            self.progress(running)
                        elif kind == "report":
                            self.reports.setdefault(event["id"], []).append(event)
                            if event["when"] == "teardown":
                                self.settle(event["id"])
                                running = None
                        elif kind == "finished":
                            finished = True
                    code = child.proc.poll()
                    now = time.monotonic()
                    if finished:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            child.proc.wait(EXIT_GRACE)
                        kill_marked(self.token, child.proc)
                        break
                    if code is not None:
                        why_ended = describe_exit(code)
                        # Read to the end of what it wrote (a line cut short
                        # by its death is dropped), then go on without it.
                        if not chunk:
                            break
                        continue
                    timeout = self.timeout_of(running)
                    low, high = HANG_GRACE
                    limit = timeout + max(low, min(high, timeout / 2))
                    if running is not None and now - started > limit:
                        kill_marked(self.token, child.proc)
                        self.settle(
                            running,
                            forced=(
                                "hung",
                                f"{self.phase_of(running)} did not end within "
                                f"{limit:.0f} s; the test process was killed",
                            ),
                        )
                        running = None
                        why_ended = "hang"
                        break
                    if now > deadline:
                        kill_marked(self.token, child.proc)
                        if running is not None:
                            self.settle(
                                running,
                                forced=(
                                    "hung",
                                    "still running when the run reached --max-time",
                                ),
                            )
                        why_ended = "max-time"
                        break
                    time.sleep(0.2)
                kill_marked(self.token)
                if finished or why_ended == "max-time":
                    break
                if running is not None:
                    self.settle(
                        running,
                        forced=(
                            "failed",
                            f"the test process died during this test ({why_ended})",
                        ),
                    )
                elif why_ended != "hang" and not self.order:
                    tail = self.log_tail("pytest.log", lines=15)
                    self.card.error = f"the suite could not start: {tail}"
                    self.say(self.card.error)
                    return
                # Otherwise it died between tests: nothing to blame; go on.
                if all(r.outcome != "not run" for r in self.results.values()):
                    break
                if children > len(self.order) + 2:
                    break
                self.write_done()
        for test_id in self.order:
            self.print_topic_if_done(self.results[test_id].topic, final=True)

    def phase_of(self, test_id: str) -> str:
        """The phase a test was in, from the reports of those it finished."""
        done = {r["when"] for r in self.reports.get(test_id, [])}
        if "call" in done:
            return "its teardown (the executor's shutdown)"
        return "the test" if "setup" in done else "its setup"

    def timeout_of(self, test_id: str | None) -> float:
        timeout = self.timeouts.get(test_id or "", 0.0) or self.options.timeout
        return float(timeout)

    def collected(self, tests: list[dict[str, Any]]) -> None:
        for test in tests:
            if test["id"] not in self.results:
                self.results[test["id"]] = TestResult(test["id"], test["topic"])
                self.order.append(test["id"])
            self.timeouts[test["id"]] = float(test["timeout"] or 0)
        if not self.announced:
            self.announced = True
            topics = {test["topic"] for test in tests}
            self.say(
                f"  running {len(tests)} tests in {len(topics)} topics, each bounded "
                f"to {self.options.timeout:.0f} s"
            )

    def write_done(self) -> None:
        done = [i for i in self.order if self.results[i].outcome != "not run"]
        (self.tmp / "done.txt").write_text("\n".join(done) + "\n")

    def settle(self, test_id: str, forced: tuple[str, str] | None = None) -> None:
        result = self.results.get(test_id)
        if result is None or result.outcome != "not run":
            return
        reports = self.reports.get(test_id, [])
        result.duration = round(sum(r.get("duration", 0.0) for r in reports), 2)
        result.observed = next((r["observed"] for r in reports if r["observed"]), "")
        if forced is not None:
            result.outcome, result.reason = forced
        else:
            result.outcome, result.reason = self._outcome(reports)
        self.print_topic_if_done(result.topic)

    def _outcome(self, reports: list[dict[str, Any]]) -> tuple[str, str]:
        failed = [r for r in reports if r["outcome"] == "failed"]
        if failed:
            report = failed[0]
            reason = report["reason"]
            if "from pytest-timeout" in reason or reason.startswith("Failed: Timeout"):
                return "hung", f"did not end within {self.options.timeout:.0f} s"
            missing = _suite.missing_feature_used(reason, self.card.features)
            if missing is not None:
                return "n/a", _suite.FEATURES[missing]
            reason = reason.removeprefix("Failed: ")
            if report["when"] != "call":
                reason = f"in {report['when']}: {reason}"
            return "failed", reason
        skipped = [r for r in reports if r["outcome"] == "skipped"]
        if skipped:
            reason = skipped[0]["reason"].removeprefix("not applicable: ")
            if not self.card.ours:
                reason = reason.replace(f"{self.label!r} declares ", "assumed ")
            return "n/a", reason
        if not reports:
            return "failed", "no report: the test process ended before it"
        return "passed", ""

    def progress(self, test_id: str) -> None:
        settled = sum(r.outcome != "not run" for r in self.results.values())
        result = self.results.get(test_id)
        topic = result.topic if result else "?"
        self.topic_started.setdefault(topic, time.monotonic())
        name = test_id.rpartition("::")[2]
        self.status(f"  [{settled + 1}/{len(self.order)}] {topic}: {name}")
        if self.options.verbose:
            self.say(f"  {topic}: {name} ...")

    def print_topic_if_done(self, topic: str, final: bool = False) -> None:
        if topic in self.printed_topics:
            return
        tests = [self.results[i] for i in self.order if self.results[i].topic == topic]
        if not final and any(t.outcome == "not run" for t in tests):
            return
        self.printed_topics.add(topic)
        took = time.monotonic() - self.topic_started.get(topic, time.monotonic())
        self.say(f"  {topic_line(topic, tests)}  ({took:.0f} s)")

    def log_tail(self, name: str, lines: int = 5) -> str:
        path = self.tmp / name
        if not path.exists():
            return "(no output)"
        text = path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def cleanup(self) -> None:
        import shutil

        kill_marked(self.token)
        shutil.rmtree(self.tmp, ignore_errors=True)


def run(options: Options, out: IO[str] = sys.stdout) -> Scorecard:
    """Certify ``options.target``; print progress to ``out``; return the scorecard."""
    runner = _Runner(options, out)
    start = time.monotonic()
    try:
        if runner.probe():
            runner.run_suite(deadline=start + options.max_time)
        # Tests never reached (the run's bound) stay "not run".
        runner.card.tests = [runner.results[i] for i in runner.order]
    finally:
        runner.cleanup()
    runner.card.seconds = round(time.monotonic() - start, 1)
    return runner.card
