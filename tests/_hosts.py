"""Test hosts: Linux network namespaces A, B, C on a private bridge.

For the multi-host tests (``test_multihost_dask.py`` and
``test_multihost_celery.py``, which share the checks at the end of this
module). Each host is a network namespace with ``lo`` and an ``eth0`` whose
veth peer sits on a bridge inside a fourth namespace, so nothing is created
in the machine's own network stack::

    host A  eth0 10.251.0.1/24 --veth-- vA -.
    host B  eth0 10.251.0.2/24 --veth-- vB --+-- br0   (namespace "bridge")
    host C  eth0 10.251.0.3/24 --veth-- vC -'

The subnet exists only inside these namespaces; they have no default route,
so no packet can leave them. Everything needs root (``ip netns``).

Use from a test module (a fixture of the module's own, since the fixtures
of ``conftest.py`` belong to the suite)::

    from _hosts import Hosts

    @pytest.fixture
    def hosts(tmp_path: Path) -> Iterator[Hosts]:
        with Hosts.create(tmp_path) as made:  # skips unless root and ip netns
            yield made

    def test_x(hosts: Hosts) -> None:
        proc = hosts.b.run(["dask", "worker", ...], env={"NAME": "B"})
        hosts.c.link_down()  # C's cable is cut: its packets go nowhere
        hosts.c.kill_all()   # every process in C gets SIGKILL

A process runs in a host through ``ip netns exec`` (the pytest process stays
in the machine's namespace), in a process group of its own, with a private
``/dev/shm`` (what a killed process leaves there goes with it); its output goes
to ``<log_dir>/<host>-<n>.log`` unless told otherwise. A program that must
report back (the caller) prints JSON lines: :meth:`Host.start_program`
returns a :class:`Program` that reads them with a bound.

Teardown (:meth:`Hosts.close`, run by the ``with`` block also when a test
fails or pytest is interrupted) kills every process in the namespaces,
deletes them, then asserts that no namespace, link or process of ours is
left. Namespace names carry the pid of the pytest process that made them
(``executors-test-<pid>-<n>-<role>``): :meth:`Hosts.create` first deletes
those of processes that are gone (a run killed before its teardown).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from executors._parentwatch import process_alive

__all__ = [
    "PAGE",
    "READY_BOUND",
    "SCRIPTS",
    "SHUTDOWN_BOUND",
    "TASKS",
    "Host",
    "Hosts",
    "Program",
    "check_recovery",
    "check_shut_down",
    "check_unfinished_futures_fail",
    "lose_host_c_mid_map",
    "page_commands",
    "require_netns",
    "stall_after",
    "wait_until_ready",
]

PREFIX = "executors-test-"
#: The private subnet: host A is .1, B .2, C .3. Never routed anywhere.
SUBNET = "10.251.0"
ROLES = ("A", "B", "C")
#: How long teardown waits for the processes of a namespace to die.
KILL_SECONDS = 10.0

_sequence = itertools.count()

# A host's own /dev/shm: `ip netns exec` gives each command a mount
# namespace of its own, in which this tmpfs hides the machine's. What a
# killed process leaves there (multiprocessing's named semaphores) goes with
# the last process of that namespace, never into the machine's /dev/shm.
_PRIVATE_SHM = (
    'mount -t tmpfs -o mode=1777,size=256m executors-test-shm /dev/shm && exec "$@"'
)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, check=check, timeout=30
    )


def require_netns() -> None:
    """Skip the calling test unless this process can make network namespaces."""
    if os.geteuid() != 0:
        pytest.skip(
            f"multi-host tests need root to create network namespaces "
            f"(ip netns add); running as uid {os.geteuid()}"
        )
    if shutil.which("ip") is None:
        pytest.skip("multi-host tests need iproute2's `ip` command, not found")
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` does not work here: {made.stderr.strip()}")
    _ip("netns", "del", probe, check=False)


def _our_namespaces() -> list[str]:
    listed = _ip("netns", "list", check=False).stdout.splitlines()
    return [line.split()[0] for line in listed if line.startswith(PREFIX)]


def _netns_pids(name: str) -> list[int]:
    out = _ip("netns", "pids", name, check=False).stdout
    return [int(pid) for pid in out.split()]


def _kill_namespace_processes(name: str) -> list[int]:
    """SIGKILL every process in namespace ``name``; return those still alive."""
    deadline = time.monotonic() + KILL_SECONDS
    while pids := _netns_pids(name):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return pids
        time.sleep(0.05)
    return []


def sweep_leftovers() -> list[str]:
    """Delete the namespaces of test runs whose process is gone; name them."""
    swept = []
    for name in _our_namespaces():
        owner = name[len(PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and process_alive(int(owner)):
            continue  # a live run's (another xdist worker, say)
        if owner.isdigit() and int(owner) == os.getpid() and name in _active:
            continue
        _kill_namespace_processes(name)
        _ip("netns", "del", name, check=False)
        swept.append(name)
    return swept


# Namespaces of this process's open Hosts, which a sweep must not touch.
_active: set[str] = set()


def _root_links() -> set[str]:
    out = _ip("-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _namespace_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def _processes_in(inodes: set[int]) -> list[str]:
    """Processes whose network namespace is one of ``inodes``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            inode = os.stat(entry / "ns" / "net").st_ino
            if inode in inodes:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                found.append(f"pid {entry.name}: {cmdline.decode(errors='replace')}")
        except OSError:
            continue
    return found


class Program:
    """A process whose stdout is JSON lines, read by a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.events: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self.events.put(event)
        self.events.put(None)

    def next_event(self, bound: float) -> dict[str, Any]:
        """The next JSON object the program printed, within ``bound`` seconds."""
        try:
            event = self.events.get(timeout=bound)
        except queue.Empty:
            raise AssertionError(
                f"no event from the program in {bound} s; it printed:\n"
                + "".join(self.output[-40:])
            ) from None
        if event is None:
            self.events.put(None)  # stays at the end for the next caller
            self.proc.wait(KILL_SECONDS)
            raise AssertionError(
                f"the program ended (exit code {self.proc.returncode}) "
                "without the expected event; it printed:\n" + "".join(self.output)
            )
        return event

    def wait_for(self, name: str, bound: float) -> dict[str, Any]:
        """Skip events until one whose ``event`` is ``name``."""
        deadline = time.monotonic() + bound
        while True:
            event = self.next_event(max(0.0, deadline - time.monotonic()))
            if event.get("event") == name:
                return event


class Host:
    """One test host: a network namespace with ``address`` on ``eth0``."""

    def __init__(self, role: str, netns: str, address: str, hosts: Hosts) -> None:
        self.role = role
        self.netns = netns
        self.address = address
        self._hosts = hosts
        self._port = f"v{role}"  # eth0's peer on the bridge
        self.procs: list[subprocess.Popen[Any]] = []
        self._logs = itertools.count()

    def __repr__(self) -> str:
        return f"<Host {self.role} {self.address} netns={self.netns}>"

    def run(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stdout: int | IO[Any] | None = None,
        text: bool = False,
    ) -> subprocess.Popen[Any]:
        """Start ``cmd`` in this host, in a process group of its own.

        ``env`` is added to this process's environment (the test run's token
        included). Output goes to a log file in the hosts' ``log_dir``
        unless ``stdout`` says otherwise; stderr goes to the log file.
        """
        log_path = self._hosts.log_dir / f"{self.role}-{next(self._logs)}.log"
        log = log_path.open("w")
        with log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    "sh",
                    "-c",
                    _PRIVATE_SHM,
                    "sh",
                    *cmd,
                ],
                env={**os.environ, **(env or {})},
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log if stdout is None else stdout,
                stderr=log,
                text=text,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start_program(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> Program:
        """Run ``cmd`` here and read the JSON lines it prints."""
        env = {"PYTHONUNBUFFERED": "1", **(env or {})}
        proc = self.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
        return Program(proc)

    def pids(self) -> list[int]:
        """Every process in this host, ours or started by ours."""
        return _netns_pids(self.netns)

    def link_down(self) -> None:
        """Cut this host's cable: its bridge port goes down, packets are lost.

        Neither side is told: connections to and from it stall until TCP
        gives up, as when a machine loses power or its switch port dies.
        """
        _ip("-n", self._hosts.bridge_netns, "link", "set", self._port, "down")

    def link_up(self) -> None:
        _ip("-n", self._hosts.bridge_netns, "link", "set", self._port, "up")

    def kill(self, proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group of ``proc`` (one we started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def kill_all(self) -> None:
        """SIGKILL every process in this host; reap the ones we started."""
        for proc in self.procs:
            self.kill(proc)
        left = _kill_namespace_processes(self.netns)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(KILL_SECONDS)
        if left:
            raise AssertionError(
                f"processes in host {self.role} survive SIGKILL: {left}"
            )

    def logs(self) -> str:
        """What this host's processes logged, for a failure message."""
        parts = []
        for path in sorted(self._hosts.log_dir.glob(f"{self.role}-*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


class Hosts:
    """Hosts A, B and C and the bridge that joins them; see the module doc."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        base = f"{PREFIX}{os.getpid()}-{next(_sequence)}"
        self.bridge_netns = f"{base}-bridge"
        self.hosts = {
            role: Host(role, f"{base}-{role}", f"{SUBNET}.{i}", self)
            for i, role in enumerate(ROLES, start=1)
        }
        self._namespaces = [self.bridge_netns] + [h.netns for h in self.hosts.values()]
        self._inodes: set[int] = set()
        self._root_links_before: set[str] = set()

    @property
    def a(self) -> Host:
        return self.hosts["A"]

    @property
    def b(self) -> Host:
        return self.hosts["B"]

    @property
    def c(self) -> Host:
        return self.hosts["C"]

    @classmethod
    @contextlib.contextmanager
    def create(cls, log_dir: Path) -> Iterator[Hosts]:
        """Make the hosts (skip unless possible), yield them, remove them."""
        require_netns()
        sweep_leftovers()
        log_dir.mkdir(parents=True, exist_ok=True)
        made = cls(log_dir)
        try:
            made._build()
            yield made
        finally:
            made.close()

    def _build(self) -> None:
        self._root_links_before = _root_links()
        _active.update(self._namespaces)
        for name in self._namespaces:
            _ip("netns", "add", name)
            self._inodes.add(_namespace_inode(name))
            _ip("-n", name, "link", "set", "lo", "up")
        bridge = self.bridge_netns
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for host in self.hosts.values():
            # Both ends are born in their namespaces: the machine's own
            # network stack never sees them.
            _ip(
                "link", "add", "eth0", "netns", host.netns,
                "type", "veth", "peer", "name", host._port, "netns", bridge,
            )  # fmt: skip
            _ip("-n", bridge, "link", "set", host._port, "master", "br0")
            _ip("-n", bridge, "link", "set", host._port, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")

    def logs(self) -> str:
        """What every host's processes logged, for a failure message."""
        return "\n".join(host.logs() for host in self.hosts.values())

    def close(self) -> None:
        """Kill every process in the hosts, delete them, assert nothing is left."""
        problems = []
        for host in self.hosts.values():
            for proc in host.procs:
                host.kill(proc)
        for name in self._namespaces:
            if left := _kill_namespace_processes(name):
                problems.append(f"{name}: processes survive SIGKILL: {left}")
        for host in self.hosts.values():
            for proc in host.procs:
                try:
                    proc.wait(KILL_SECONDS)
                except subprocess.TimeoutExpired:
                    problems.append(f"host {host.role}: pid {proc.pid} not reaped")
        # Before the namespaces go: a deleted one's inode number is reused
        # at once by the next namespace made (another test's, with -n).
        if stray := _processes_in(self._inodes):
            problems.append(f"processes left in the hosts' namespaces: {stray}")
        for name in self._namespaces:
            if Path(f"/run/netns/{name}").exists():
                _ip("netns", "del", name, check=False)
        _active.difference_update(self._namespaces)
        if left_ns := set(_our_namespaces()) & set(self._namespaces):
            problems.append(f"namespaces left: {sorted(left_ns)}")
        if new_links := _root_links() - self._root_links_before:
            problems.append(f"links left in the machine's namespace: {new_links}")
        if problems:
            raise AssertionError("test hosts not cleaned up: " + "; ".join(problems))


# -- what both multi-host test modules share -------------------------------------

#: The callers (``celery_caller.py``, ``dask_caller.py``) and the scripts
#: the hosts run.
SCRIPTS = Path(__file__).resolve().parent / "_multihost"
#: The page whose commands the tests run as written.
PAGE = Path(__file__).resolve().parent.parent / "docs" / "scaling-out.md"
#: Tasks of 10 ms each caller runs.
TASKS = 1000
#: Seconds for a deployment to start and its caller to see every worker.
#: Workers boot with spawn and import their library: slow on a busy machine.
READY_BOUND = 120.0
#: Seconds ``shutdown()`` may take, also after a machine or the broker (the
#: scheduler) is gone.
SHUTDOWN_BOUND = 15.0


# -- what both multi-host test modules check -------------------------------------


def wait_until_ready(caller: Program, hosts: Hosts, bound: float) -> dict[str, Any]:
    """The caller's ``ready`` event; the hosts' logs if it never comes."""
    try:
        return caller.wait_for("ready", bound)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nhost logs:\n{hosts.logs()}") from None


def stall_after(results: list[list[Any]], moment: float) -> float:
    """The longest wait for a result after ``moment``: the recovery time.

    ``results`` are ``[arrival time, where, i]`` as the callers report them.
    """
    times = [moment] + [t for t, _, _ in results if t > moment]
    return max(b - a for a, b in itertools.pairwise(times))


def check_unfinished_futures_fail(
    caller: Program,
    lost_at: float,
    *,
    lost: str,
    error: str,
    bound: float,
    shutdown_bound: float,
) -> None:
    """After ``lost`` (the broker, the scheduler) died at ``lost_at``, the
    caller's futures mode reports every unfinished future failed with
    ``error`` within ``bound`` seconds, and ``shutdown()`` within
    ``shutdown_bound``."""
    # The caller waits 90 s for its futures, then 30 s for shutdown().
    settled = caller.wait_for("settled", 90 + 30)
    done = caller.wait_for("done", 30 + 10)
    outcomes = done["outcomes"]
    counts = settled["counts"]
    failed = [o for o in outcomes if o[1] not in ("ok", "pending")]
    times = [o[2] for o in failed]
    assert None not in times, "a failed future's done-callback never ran"
    last = max(times) - lost_at if failed else 0.0
    took = done["shutdown_seconds"]
    print(
        f"{lost} lost: {counts}; the last future failed {last:.2f} s after; "
        f"shutdown() took {took} s"
    )
    assert "pending" not in counts, (
        f"futures still unfinished 90 s after the {lost} died: {counts}"
    )
    assert took is not None, "shutdown() did not return within 30 s"
    assert failed, f"every future succeeded: the {lost} died too late"
    kinds = {kind for _, kind, _, _ in failed}
    assert kinds == {error}, f"unexpected failures: {failed[:5]}"
    assert last < bound
    assert took < shutdown_bound
    assert caller.proc.wait(shutdown_bound) == 0


def lose_host_c_mid_map(
    caller: Program, hosts: Hosts, lose: str, run_bound: float, recovery_bound: float
) -> tuple[dict[str, Any], float]:
    """Once the caller's map is a quarter through, lose host C: cut its link
    (``lose="link"``) or kill its processes. The caller's ``done`` event,
    and when C was lost."""
    caller.wait_for("quarter", run_bound)
    lost_at = time.monotonic()
    if lose == "link":
        hosts.c.link_down()
    else:
        hosts.c.kill_all()
    try:
        done = caller.wait_for("done", recovery_bound + run_bound)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nhost logs:\n{hosts.logs()}") from None
    return done, lost_at


def check_recovery(
    results: list[list[Any]],
    lost_at: float,
    lose: str,
    per_host: tuple[int, int],
    bound: float,
) -> dict[str, Any]:
    """The results stopped for less than ``bound`` seconds after host C was
    lost at ``lost_at``; the figures, printed. ``per_host``: how many
    results hosts B and C gave."""
    stall = stall_after(results, lost_at)
    figures: dict[str, Any] = {
        "recovery_seconds": round(stall, 2),
        "cut_to_last_result_seconds": round(results[-1][0] - lost_at, 2),
        "results_from_b": per_host[0],
        "results_from_c": per_host[1],
    }
    print(f"host C lost ({lose}): {figures}")
    assert stall < bound, f"no result for {stall:.1f} s after host C was lost ({lose})"
    return figures


def check_shut_down(caller: Program, done: dict[str, Any]) -> None:
    """The caller's ``done`` event says ``shutdown()`` returned within
    SHUTDOWN_BOUND, and the caller exits with 0 within it too."""
    assert done["shutdown_seconds"] is not None
    assert done["shutdown_seconds"] < SHUTDOWN_BOUND
    assert caller.proc.wait(SHUTDOWN_BOUND) == 0


def page_commands(page: Path) -> set[str]:
    """The command lines of the page's bash blocks, continuations joined."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), re.DOTALL)
    commands = set()
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            commands.add(" ".join(line.split()))
    return commands
