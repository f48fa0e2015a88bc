"""Runs the measurements in bounded subprocesses and collects their records.

Each target gets its own subprocess (``python -m executors.bench._child``)
in a new session, hence a new process group, so that everything it starts
(pool workers, a forkserver, a Dask cluster) can be found and killed:

* a workload that runs past ``Config.bound`` is reported as "hung after N s";
  the process group is killed and the target's remaining workloads run in a
  fresh subprocess;
* a subprocess that dies is reported as crashed, with the tail of its output;
* when a subprocess has exited, any process left in its group is killed and
  named in the report: no measurement leaves a process behind.

Workloads that measure memory run alone in their own subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._child import SHUTDOWN
from ._config import Config
from ._targets import TargetSpec
from ._workloads import WORKLOADS

__all__ = ["Runner", "TargetRun", "merge_rounds"]

_POLL = 0.05
# After a subprocess exits, the helpers it started (forkserver, resource
# tracker, Dask workers) notice within a moment and exit too; only what is
# still there after this grace period counts as left behind.
_GRACE = 5.0
# How long a killed target's resource trackers get to unlink what its
# processes left in /dev/shm before they are killed too.
_TRACKER_GRACE = 5.0
_POSIX = os.name == "posix"
_STARTING = "<start-up>"


@dataclass
class TargetRun:
    """Everything measured on one target."""

    spec: TargetSpec
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def merge_rounds(runs: list[TargetRun]) -> TargetRun:
    """One target's rounds as one run: each workload's samples pooled.

    A workload keeps the parameters of its first good round; a round that
    failed where another succeeded becomes a note.
    """
    merged = TargetRun(runs[0].spec)
    for run in runs:
        merged.notes += [note for note in run.notes if note not in merged.notes]
    names = list(dict.fromkeys(r["workload"] for run in runs for r in run.records))
    for name in names:
        records = [r for run in runs for r in run.records if r["workload"] == name]
        good = [r for r in records if r.get("status") == "ok"]
        if not good:
            merged.records.append(records[0])
            continue
        record = dict(good[0])
        samples: dict[str, list[float]] = {}
        for r in good:
            for metric, values in r.get("samples", {}).items():
                samples.setdefault(metric, []).extend(values)
        record["samples"] = samples
        record["elapsed"] = sum(r.get("elapsed", 0.0) for r in records)
        notes = list(record.get("notes", []))
        notes += [
            f"one round of {len(records)}: {r.get('status')}: {r.get('message')}"
            for r in records
            if r.get("status") != "ok"
        ]
        record["notes"] = notes
        merged.records.append(record)
    return merged


def _proc_stat(pid: str) -> tuple[str, int, int, str] | None:
    """(state, ppid, pgid, name) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    name = data[data.find("(") + 1 : data.rfind(")")]
    fields = data[data.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[1]), int(fields[2]), name
    except (IndexError, ValueError):
        return None


def _live_processes(pgid: int, root: int | None) -> dict[int, str]:
    """Live (non-zombie) members of group ``pgid``, plus descendants of ``root``.

    Descendants are included so a process that moved to its own group is
    still found while its parent is alive.
    """
    if not os.path.isdir("/proc"):
        return _live_processes_elsewhere(pgid, root)
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(entry)
            if stat is not None and stat[0] != "Z":
                stats[int(entry)] = stat
    found = {pid: stat[3] for pid, stat in stats.items() if stat[2] == pgid}
    if root is not None:
        frontier = [root]
        while frontier:
            parent = frontier.pop()
            for pid, stat in stats.items():
                if stat[1] == parent and pid not in found:
                    found[pid] = stat[3]
                    frontier.append(pid)
    return found


def _live_processes_elsewhere(pgid: int, root: int | None) -> dict[int, str]:
    """:func:`_live_processes` without /proc (macOS, Windows)."""
    try:
        import psutil
    except ImportError:
        if not _POSIX:
            return {}
        # Signal 0 tells whether the group exists, not who is in it.
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return {}
        except PermissionError:
            pass
        return {pgid: "?"}
    found: dict[int, str] = {}
    if root is not None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(root).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    found[child.pid] = child.name()
    if _POSIX:
        for proc in psutil.process_iter(["name", "status"]):
            with contextlib.suppress(psutil.Error, OSError):
                if (
                    proc.info["status"] != psutil.STATUS_ZOMBIE
                    and os.getpgid(proc.pid) == pgid
                ):
                    found[proc.pid] = proc.info["name"]
    return found


def _kill(pids: dict[int, str], pgid: int) -> None:
    # A resource tracker unlinks the semaphores and shared memory that the
    # processes it served leave in /dev/shm, once the last of them is gone:
    # killed along with them, it would leave those behind. So the others
    # go first, the trackers get a moment to clean up, then the group goes.
    trackers = {pid for pid in pids if _is_resource_tracker(pid)}
    for pid in pids:
        if pid not in trackers:
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                os.kill(pid, signal.SIGKILL if _POSIX else signal.SIGTERM)
    deadline = time.monotonic() + _TRACKER_GRACE
    while trackers and time.monotonic() < deadline:
        trackers = {pid for pid in trackers if _exists(pid)}
        time.sleep(_POLL)
    if _POSIX:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            os.kill(pid, signal.SIGKILL if _POSIX else signal.SIGTERM)


def _is_resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return b"resource_tracker" in file.read()
    except OSError:
        return False


def _exists(pid: int) -> bool:
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class _Launch:
    records: list[dict[str, Any]]
    stuck: str | None = None  # workload that hung or was running at a crash
    crashed: str | None = None  # how the subprocess died
    killed: dict[int, str] = field(default_factory=dict)
    leftover: dict[int, str] = field(default_factory=dict)
    log_tail: str = ""


class Runner:
    """Measures targets one after another, each in bounded subprocesses.

    Args:
        config: The run's configuration (sizes, bound, budget).
        report: Called with one line of progress at a time.
    """

    def __init__(self, config: Config, report: Callable[[str], None]) -> None:
        self.config = config
        self.report = report

    def run_target(self, spec: TargetSpec, workloads: list[str]) -> TargetRun:
        """Run ``workloads`` on ``spec``; every outcome becomes a record."""
        run = TargetRun(spec)
        wanted = []
        for name in workloads:
            reason = spec.unsupported.get(name)
            if reason is not None:
                run.records.append(
                    {"workload": name, "status": "unsupported", "message": reason}
                )
            else:
                wanted.append(name)
        # The start-up workload goes first, so its first pool is a true
        # cold start in a fresh interpreter; with --quick the memory
        # figures come next, before any big allocation (the payload's
        # arrays) can hide their growth.
        alone = [
            n for n in wanted if WORKLOADS[n].fresh_process and not self.config.quick
        ]
        shared = sorted(
            (n for n in wanted if n not in alone),
            key=lambda n: (n != "startup", not WORKLOADS[n].fresh_process),
        )
        groups = [shared] + [[n] for n in alone]
        for group in groups:
            self._run_group(run, group)
        order = {name: i for i, name in enumerate(workloads)}
        run.records.sort(key=lambda r: order.get(r["workload"], len(order)))
        return run

    def _run_group(self, run: TargetRun, group: list[str]) -> None:
        pending = list(group)
        while pending:
            launch = self._launch(run.spec, pending)
            finished = {r["workload"] for r in launch.records}
            for record in launch.records:
                run.records.append(record)
                self._progress(run.spec, record)
            pending = [n for n in pending if n not in finished]
            if launch.leftover:
                names = ", ".join(sorted(set(launch.leftover.values())))
                run.notes.append(
                    f"{len(launch.leftover)} process(es) still running after the "
                    f"measurement ended were killed ({names})"
                )
            if launch.stuck == SHUTDOWN:
                verb = "hung" if launch.crashed is None else "crashed"
                run.notes.append(
                    f"shutting the pool down {verb} (after {self.config.bound:.0f} s "
                    "at most); its processes were killed"
                )
                self.report(f"  {run.spec.name:<24} shutdown {verb}")
            elif launch.stuck is not None:
                pending.remove(launch.stuck)
                self._fail(run, [launch.stuck], launch)
            elif launch.crashed is not None:
                # Died (or hung) before its first workload: nothing will run.
                self._fail(run, pending, launch)
                return
            elif not finished:
                return

    def _fail(self, run: TargetRun, names: list[str], launch: _Launch) -> None:
        for name in names:
            if launch.crashed is None:
                status, message = "hung", f"hung after {self.config.bound:.0f} s"
            else:
                status = "crashed"
                message = f"the measurement process {launch.crashed}"
                if launch.log_tail:
                    message += f"; its last output: {launch.log_tail}"
            record: dict[str, Any] = {
                "workload": name,
                "status": status,
                "message": message,
            }
            if launch.killed:
                record["killed"] = sorted(set(launch.killed.values()))
            run.records.append(record)
            self._progress(run.spec, record)

    def _progress(self, spec: TargetSpec, record: dict[str, Any]) -> None:
        took = record.get("elapsed")
        timing = f" {took:5.1f} s" if isinstance(took, float) else ""
        status = record["status"]
        line = f"  {spec.name:<24} {record['workload']:<11} {status}{timing}"
        if status not in ("ok",):
            line += f": {str(record.get('message', ''))[:120]}"
        self.report(line)

    def _launch(self, spec: TargetSpec, workloads: list[str]) -> _Launch:
        with tempfile.TemporaryDirectory(prefix="executors-bench-") as tmp:
            job = Path(tmp, "job.json")
            events = Path(tmp, "events.jsonl")
            log = Path(tmp, "output.log")
            job.write_text(
                json.dumps(
                    {
                        "target": spec.to_json(),
                        "config": self.config.to_json(),
                        "workloads": workloads,
                    }
                ),
                encoding="utf-8",
            )
            events.touch()
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "executors.bench._child",
                        str(job),
                        str(events),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=_POSIX,
                    cwd=self.config.cwd,
                )
                try:
                    launch = self._watch(proc, events)
                except BaseException:
                    # Ctrl-C: the subprocess is in its own session, so the
                    # terminal's SIGINT never reached it or its workers.
                    _kill(_live_processes(proc.pid, proc.pid), proc.pid)
                    proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(10)
                    raise
            launch.log_tail = _tail(log)
            return launch

    def _watch(self, proc: subprocess.Popen[bytes], events: Path) -> _Launch:
        launch = _Launch(records=[])
        current: str | None = None
        since = time.monotonic()
        abandoned = False
        position = 0
        pgid = proc.pid

        def read_events() -> None:
            nonlocal position, current, since, abandoned
            with open(events, "rb") as f:
                f.seek(position)
                chunk = f.read()
            # Only whole lines: the child may be half-way through one.
            complete = chunk[: chunk.rfind(b"\n") + 1]
            position += len(complete)
            for line in complete.splitlines():
                event = json.loads(line)
                kind = event.pop("event")
                if kind == "start":
                    current = event["workload"]
                    since = time.monotonic()
                elif kind == "result":
                    event.pop("abandon", None)
                    launch.records.append(event)
                    current = None
                    since = time.monotonic()
                elif kind == "abandoned":
                    abandoned = True
                elif kind == "closed":
                    current = None

        while True:
            read_events()
            code = proc.poll()
            if code is not None:
                read_events()
                if current is not None or (code != 0 and not abandoned):
                    launch.stuck = current
                    launch.crashed = _describe_exit(code)
                break
            if abandoned:
                break
            if time.monotonic() - since > self.config.bound:
                launch.stuck = current or _STARTING
                launch.killed = _live_processes(pgid, proc.pid)
                _kill(launch.killed, pgid)
                proc.kill()
                proc.wait(30)
                read_events()
                break
            time.sleep(_POLL)

        if abandoned:
            _kill(_live_processes(pgid, proc.pid), pgid)
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        else:
            deadline = time.monotonic() + _GRACE
            while True:
                found = _live_processes(pgid, None)
                if not found or time.monotonic() > deadline:
                    break
                time.sleep(_POLL)
            if found:
                launch.leftover = found
                _kill(found, pgid)
        if launch.stuck == _STARTING:
            launch.stuck = None
            launch.crashed = f"hung for {self.config.bound:.0f} s while starting"
        return launch
