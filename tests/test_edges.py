"""Edges of sending work to processes: tracebacks, secrets, references, sockets.

* A task defined in the script itself (``__main__``) that raises shows the
  script's file, line and source line in the worker's traceback, on every
  backend with ``process_isolation``.
* A callable that cannot be sent is named in the error without its
  argument values (a partial holding a password must not reach a log).
* The executor keeps no reference to a finished task's callable.
* On Python 3.10.0 to 3.10.8 the fork server listens on a filesystem socket
  in a private directory, not in the abstract namespace (CVE-2022-42919).
* ``process`` with ``max_tasks_per_child`` and a backlog never hangs
  (CPython gh-115634).
"""

from __future__ import annotations

import collections
import functools
import gc
import json
import multiprocessing.util
import pickle
import subprocess
import sys
import textwrap
import threading
import traceback
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from typing import Any

import pytest

from _fault_scripts import HERE, Script, options_json
from conftest import DEFAULT_TEST_OPTIONS, TEST_OPTIONS, backend_factory
from executors import _options, _registry, _serialize
from executors.testing import BOUND, tasks


def _isolated_factory(backend_name: str) -> Callable[..., Any]:
    """The backend's factory; skip unless its tasks run in other processes."""
    make = backend_factory(backend_name)  # skips an unavailable backend
    if not _registry.backend_class(backend_name).capabilities.process_isolation:
        pytest.skip(f"{backend_name!r} declares process_isolation=False")
    return make


@pytest.fixture
def isolated_executor(backend_name: str) -> Iterator[Any]:
    executor = _isolated_factory(backend_name)()
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# -- tracebacks of the script's own functions -------------------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_traceback_shows_the_scripts_file_and_line(backend_name: str) -> None:
    _isolated_factory(backend_name)
    path = HERE / "raise_in_main.py"
    source = path.read_text().splitlines()
    lineno = next(i for i, text in enumerate(source, 1) if "the line to find" in text)
    options = TEST_OPTIONS.get(backend_name, DEFAULT_TEST_OPTIONS)
    script = Script("raise_in_main.py", backend_name, options_json(options))
    try:
        code = script.finish(120)
        assert code == 0, f"exit code {code}\n{script.report()}"
        shown = "\n".join(script.stdout)
        assert "ValueError: task 7 failed on purpose" in shown, script.report()
        assert f'File "{path}", line {lineno}, in fail_here' in shown, (
            f"the worker's traceback does not name the script's line\n{shown}"
        )
        assert source[lineno - 1].strip() in shown, (
            f"the worker's traceback does not show the source line\n{shown}"
        )
        assert "<dynamic-code>" not in shown
    finally:
        script.kill_tree()


# -- secrets in error messages -----------------------------------------------

SECRET = "hunter2-do-not-log"


def connect(host: str, *, password: str, lock: object) -> None:
    """Stands for a function that takes a credential."""


def _all_text(exc: BaseException) -> str:
    """Everything a log could show of ``exc``: messages, reprs, causes."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


@pytest.mark.timeout(120)
def test_unsendable_callable_is_named_without_its_values(
    isolated_executor: Any,
) -> None:
    # A lock cannot be pickled, so sending the partial fails; the password
    # beside it must not appear in what the caller gets.
    task = functools.partial(
        connect, "db.example", password=SECRET, lock=threading.Lock()
    )
    with pytest.raises((pickle.PicklingError, TypeError)) as info:
        isolated_executor.submit(task).result(timeout=BOUND)
    text = _all_text(info.value)
    assert SECRET not in text, f"the password leaked into the error:\n{text}"
    assert "connect" in text, text
    # The executor stays usable after a pickling error.
    assert isolated_executor.submit(tasks.add, 1, 2).result(timeout=BOUND) == 3


class _Service:
    def handle(self, request: Any) -> None:
        """A method, to be named with its owner's type."""


class _CallableObject:
    def __call__(self) -> None:
        """A callable instance."""


def test_describe_callable_shows_names_and_types_only() -> None:
    describe = _serialize.describe_callable
    assert describe(connect) == f"{__name__}.connect"
    partial = functools.partial(connect, "db.example", password=SECRET)
    assert describe(partial) == (
        f"functools.partial({__name__}.connect, <str>, password=<str>)"
    )
    nested = functools.partial(functools.partial(connect, password=SECRET), lock=1)
    assert SECRET not in describe(nested)
    assert describe(_Service().handle) == (
        f"{__name__}._Service.handle bound to a {__name__}._Service object"
    )
    assert describe(len) == "builtins.len"
    assert describe(_CallableObject()) == f"a {__name__}._CallableObject object"
    assert describe(_Service) == f"{__name__}._Service"


def test_pickling_error_message_has_no_values() -> None:
    task = functools.partial(connect, password=SECRET, lock=threading.Lock())
    with pytest.raises(pickle.PicklingError) as info:
        pickle.dumps(_serialize.portable(task))
    message = str(info.value)
    assert SECRET not in message
    assert message.startswith(
        f"cannot send the callable functools.partial({__name__}.connect, "
        "password=<str>, lock=<lock>) to a worker process: "
    ), message


# -- no stale references -----------------------------------------------------


def _large() -> collections.UserList[int]:
    """A large object whose bound method is submitted, then dropped.

    A stdlib class, so every worker can unpickle it by reference (a class of
    this test module is not importable in every backend's workers).
    """
    return collections.UserList(range(100_000))


def _closure_over(value: collections.UserList[int]) -> Callable[[int], int]:
    return lambda x: len(value) + x


@pytest.mark.timeout(120)
def test_executor_keeps_no_reference_to_a_finished_callable(
    isolated_executor: Any,
) -> None:
    owner = _large()
    alive = weakref.ref(owner)
    closure = _closure_over(_large())
    closure_alive = weakref.ref(closure)
    assert isolated_executor.submit(owner.count, 7).result(timeout=BOUND) == 1
    assert list(isolated_executor.map(owner.count, [1, -1])) == [1, 0]
    assert isolated_executor.submit(closure, 1).result(timeout=BOUND) == 100_001
    del owner, closure
    gc.collect()
    assert alive() is None, "the executor keeps the bound method's object alive"
    assert closure_alive() is None, "the executor keeps the lambda alive"


def test_callable_cache_hits_and_forgets() -> None:
    def local(x: int) -> int:
        return x

    first = _serialize._dumps(local)
    assert _serialize._dumps(local) is first  # one dict look-up per submit
    key = id(local)
    assert key in _serialize._cache
    del local
    gc.collect()
    assert key not in _serialize._cache


def test_unweakrefable_callable_is_not_cached() -> None:
    class Slotted:
        __slots__ = ()

        def __call__(self) -> int:
            return 1

    task = Slotted()
    with pytest.raises(TypeError):
        weakref.ref(task)
    assert pickle.loads(pickle.dumps(_serialize.portable(task)))() == 1
    assert id(task) not in _serialize._cache


# -- the fork server's socket (CVE-2022-42919) -------------------------------


@pytest.fixture
def abstract_sockets_switch() -> Iterator[None]:
    saved = multiprocessing.util.abstract_sockets_supported
    try:
        yield
    finally:
        multiprocessing.util.abstract_sockets_supported = saved  # type: ignore[misc]


@pytest.mark.usefixtures("abstract_sockets_switch")
@pytest.mark.parametrize(
    ("version", "applies"),
    [
        ((3, 10, 0), True),
        ((3, 10, 8), True),
        ((3, 10, 9), False),
        ((3, 11, 0), False),
        ((3, 9, 18), False),
    ],
)
def test_forkserver_socket_switch_by_version(
    version: tuple[int, int, int], applies: bool
) -> None:
    multiprocessing.util.abstract_sockets_supported = True  # type: ignore[misc]
    assert _options.protect_forkserver_socket(version) is applies
    assert multiprocessing.util.abstract_sockets_supported is (not applies)


# Runs in a fresh interpreter: the fork server is started once per process.
# multiprocessing.connection.arbitrary_address is put back as it was on
# 3.10.0-3.10.8 (abstract when the platform has it), Python's version is
# faked as 3.10.8 while executors resolves the start method, then a real
# pool starts a real fork server.
_FORKSERVER_PROBE = textwrap.dedent(
    """
    import json, os, stat, sys, tempfile
    from unittest import mock
    import multiprocessing.connection as connection
    import multiprocessing.forkserver as forkserver
    from multiprocessing import util

    def arbitrary_address_3_10_8(family):
        if family == "AF_UNIX" and util.abstract_sockets_supported:
            return f"\\0listener-{os.getpid()}-{next(connection._mmap_counter)}"
        return tempfile.mktemp(prefix="listener-", dir=util.get_temp_dir())

    connection.arbitrary_address = arbitrary_address_3_10_8
    import executors
    from executors.testing import tasks
    # The library itself is imported under the real version: only resolving
    # the start method may see the fake one.
    import executors._base
    import executors.backends.process

    if sys.argv[1] == "protected":
        with mock.patch.object(sys, "version_info", (3, 10, 8, "final", 0)):
            ex = executors.create("process", max_workers=1)
    else:
        ex = executors.create("process", max_workers=1)
    assert ex.submit(tasks.add, 1, 2).result(timeout=60) == 3
    address = forkserver._forkserver._forkserver_address
    report = {"abstract": address.startswith("\\0")}
    if not report["abstract"]:
        report["mode"] = stat.S_IMODE(os.stat(address).st_mode)
        report["dir_mode"] = stat.S_IMODE(os.stat(os.path.dirname(address)).st_mode)
    ex.shutdown()
    print(json.dumps(report))
    """
)


@pytest.mark.skipif(
    not multiprocessing.util.abstract_sockets_supported,
    reason="no abstract socket namespace here (not Linux)",
)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["protected", "unprotected"])
def test_forkserver_listens_on_a_private_file_on_affected_pythons(mode: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FORKSERVER_PROBE, mode],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if mode == "unprotected":
        # The probe does reproduce the vulnerable behaviour.
        assert report == {"abstract": True}
    else:
        assert report == {"abstract": False, "mode": 0o600, "dir_mode": 0o700}


# -- max_tasks_per_child with a backlog (CPython gh-115634) ------------------


@pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child: 3.11+")
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("workers", "per_child"), [(2, 1), (1, 2), (2, 3)])
def test_process_max_tasks_per_child_with_a_backlog_finishes(
    workers: int, per_child: int
) -> None:
    make = backend_factory("process")
    ex = make(max_workers=workers, max_tasks_per_child=per_child)
    try:
        futures = [ex.submit(tasks.get_pid) for _ in range(8)]
        _, not_done = wait(futures, timeout=20)
        assert not not_done, f"{len(not_done)} of 8 tasks never ran (gh-115634)"
        pids = [f.result() for f in futures]
        # Each worker ran at most its allowance.
        assert max(pids.count(pid) for pid in pids) <= per_child
        assert list(ex.map(tasks.identity, range(4))) == list(range(4))
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child: 3.11+")
@pytest.mark.timeout(90)
def test_process_max_tasks_per_child_backlog_runs_after_shutdown_nowait() -> None:
    make = backend_factory("process")
    ex = make(max_workers=1, max_tasks_per_child=2)
    futures = [ex.submit(tasks.identity, i) for i in range(8)]
    ex.shutdown(wait=False)
    _, not_done = wait(futures, timeout=20)
    try:
        assert not not_done, f"{len(not_done)} of 8 tasks never ran"
        assert [f.result() for f in futures] == list(range(8))
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
