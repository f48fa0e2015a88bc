"""The registry, create(), errors, the map planner and the asyncio helpers."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

import executors
from executors import _chunkplan, _map, _registry
from executors._errors import describe_exitcode
from executors.testing import BOUND, tasks

SRC = str(Path(executors.__file__).resolve().parents[1])
BUILTIN_NAMES = {"process", "mp_pool", "queue", "joblib", "dask", "thread", "inline"}


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_is_light() -> None:
    out = run_python(
        """
        import sys
        import executors
        heavy = {"joblib", "dask", "distributed", "tqdm", "cloudpickle", "numpy", "asyncio"}
        print(sorted(heavy & set(sys.modules)))
        import executors._registry
        print(executors._registry._plugins is None)
        """
    )
    assert out.split("\n")[:2] == ["[]", "True"]


def test_a_worker_unpickling_our_initializer_imports_only_what_it_runs() -> None:
    # Every process backend's workers unpickle WorkerBootstrap, which imports
    # this package: the rest of the library (the map, the call queue, task
    # control) would add 15 to 20 ms to each worker's start.
    out = run_python(
        """
        import json, pickle, sys
        from executors._bootstrap import WorkerBootstrap
        payload = pickle.dumps(WorkerBootstrap(1, None, ()))
        for name in [m for m in sys.modules if m.startswith("executors")]:
            del sys.modules[name]
        pickle.loads(payload)
        print(json.dumps([m for m in sys.modules if m.startswith("executors")]))
        """
    )
    loaded = set(json.loads(out.splitlines()[0]))
    assert not loaded & {"executors._base", "executors._map", "executors._callqueue"}
    assert "executors._bootstrap" in loaded


def test_every_public_name_is_reachable() -> None:
    for name in executors.__all__:
        assert getattr(executors, name) is not None
    assert set(executors.__all__) <= set(dir(executors))


def test_unknown_backend_lists_valid_names() -> None:
    with pytest.raises(
        executors.BackendNotFoundError, match="no executors backend named 'nope'"
    ) as info:
        executors.create("nope")
    assert isinstance(info.value, LookupError)
    for name in BUILTIN_NAMES:
        assert name in str(info.value)


def test_missing_extra_names_the_pip_command() -> None:
    # Without site-packages, joblib and dask are not installed: the registry
    # must say how to install them, not fall back to another backend.
    out = run_python(
        f"""
        import sys
        sys.path.insert(0, {SRC!r})
        import executors
        for name in ("joblib", "dask"):
            try:
                executors.create(name)
            except executors.BackendNotInstalledError as exc:
                assert isinstance(exc, ImportError)
                print(exc)
        infos = {{b.name: b for b in executors.list_backends()}}
        print(infos["joblib"].available, infos["joblib"].install_hint)
        """,
        "-S",
    )
    assert 'pip install "executors[joblib]"' in out
    assert 'pip install "executors[dask]"' in out
    assert 'False pip install "executors[joblib]"' in out


def test_environment_variable_selects_the_default_backend() -> None:
    out = run_python(
        """
        import executors
        ex = executors.create()
        print(ex.backend)
        ex.shutdown()
        """,
        env={"EXECUTORS_BACKEND": "thread"},
    )
    assert out.strip() == "thread"


def test_default_backend_is_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXECUTORS_BACKEND", raising=False)
    with executors.create(max_workers=1) as ex:
        assert ex.backend == "process"


def test_backend_name_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="backend must be a name"):
        executors.create(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("backend", "option"),
    [
        ("thread", "mp_context"),
        ("thread", "max_tasks_per_child"),
        ("inline", "mp_context"),
    ],
)
def test_unsupported_option_names_option_and_backend(backend: str, option: str) -> None:
    with pytest.raises(
        TypeError,
        match=f"the '{backend}' backend does not support the option '{option}'",
    ):
        executors.create(backend, **{option: 1})


@pytest.mark.parametrize("backend", ["process", "thread"])
@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, "max_workers must be greater than 0"),
        (-1, ValueError, "max_workers must be greater than 0"),
        (2.5, TypeError, "max_workers must be an int"),
        ("2", TypeError, "max_workers must be an int"),
        (True, TypeError, "max_workers must be an int"),
    ],
)
def test_bad_max_workers(backend: str, value: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        executors.create(backend, max_workers=value)


def test_inline_accepts_any_valid_max_workers_and_says_so() -> None:
    # A program sized for a pool runs unchanged when switched to inline.
    with executors.create("inline", max_workers=8) as ex:
        assert ex.max_workers == 1
        assert "8 requested" in repr(ex)
        assert ex.submit(abs, -3).result() == 3
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        executors.create("inline", max_workers=0)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"mp_context": "nope"}, ValueError, "not a start method"),
        ({"mp_context": 3}, TypeError, "mp_context must be"),
        ({"initializer": 3}, TypeError, "initializer must be callable"),
        ({"initargs": [1]}, TypeError, "initargs must be a tuple"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child must be >= 1"),
        ({"cloudpickle": "yes"}, TypeError, "cloudpickle must be True or False"),
    ],
)
def test_bad_process_options(
    options: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        executors.create("process", **options)


def test_list_backends_describes_every_builtin() -> None:
    infos = {info.name: info for info in executors.list_backends()}
    assert set(infos) >= BUILTIN_NAMES
    for name in ("process", "thread", "inline"):
        info = infos[name]
        assert info.available
        assert info.builtin
        assert isinstance(info.capabilities, executors.Capabilities)
        assert info.install_hint is None
    assert infos["inline"].capabilities is not None
    assert not infos["inline"].capabilities.runs_concurrently


def test_a_plugin_cannot_replace_a_builtin_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from importlib.metadata import EntryPoint

    fake = [
        EntryPoint(
            "thread",
            "executors.backends.inline:InlineExecutor",
            _registry.ENTRY_POINT_GROUP,
        ),
        EntryPoint(
            "mine",
            "executors.backends.inline:InlineExecutor",
            _registry.ENTRY_POINT_GROUP,
        ),
    ]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: fake)
    _registry._reset_plugins_for_tests()
    try:
        with executors.create("thread", max_workers=1) as ex:
            assert ex.backend == "thread"
        with executors.create("mine") as ex:
            assert ex.backend == "inline"
        names = [b.name for b in executors.list_backends()]
        assert names.count("thread") == 1
        assert "mine" in names
    finally:
        _registry._reset_plugins_for_tests()


def test_describe_exitcode() -> None:
    assert describe_exitcode(3) == "exit code 3"
    assert describe_exitcode(-9).startswith("signal SIGKILL (-9)")
    assert "segfault" in describe_exitcode(-11)
    assert describe_exitcode(None) == "an unknown exit code"


def test_worker_crashed_error_pickles_with_exitcode() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(executors.WorkerCrashedError("died", -9)))
    assert (str(err), err.exitcode) == ("died", -9)


@pytest.mark.parametrize("n", [0, 1, 5, 32, 33, 1000, 20000, 123457])
@pytest.mark.parametrize("workers", [1, 2, 8])
def test_chunk_plan_covers_the_input(n: int, workers: int) -> None:
    sizes = list(_chunkplan.plan_chunks(n, workers, None))
    assert sum(sizes) == n
    assert all(1 <= s <= _chunkplan.MAX_CHUNK for s in sizes)
    if n <= _chunkplan.PER_ITEM_ITEMS_PER_WORKER * workers:
        assert set(sizes) <= {1}
    else:
        # Guided: never growing, down to a floor of half the first chunk.
        assert sizes == sorted(sizes, reverse=True)
        assert max(sizes[:-1], default=0) <= 2 * min(sizes[:-1], default=0) + 1
        # The floor is Pool.map's own chunk: a tail as fine as its, and no
        # more chunks than it sends.
        pool_chunk = math.ceil(n / (4 * workers))
        if pool_chunk <= _chunkplan.MAX_CHUNK:
            assert min(sizes[:-1], default=pool_chunk) == pool_chunk
            assert len(sizes) <= math.ceil(n / pool_chunk)


@pytest.mark.parametrize("star", [False, True])
def test_run_chunk_stops_at_the_first_failure(star: bool) -> None:
    items: list[Any] = [(4, 2), (1, 0), (9, 3)] if star else [2, 0, 3]

    def divide(a: int, b: int = 2) -> float:
        return a / b if star else 6 / a

    result = _map.run_chunk(divide, _map.Chunk(items, star))
    assert result.values == [2.0 if star else 3.0]
    assert isinstance(result.error, ZeroDivisionError)
    assert _map.run_chunk(divide, _map.Chunk(items, star)[2:]).values == [
        3.0 if star else 2.0
    ]


def test_chunk_rows_are_argument_tuples() -> None:
    assert list(_map.Chunk([1, 2], star=False).rows()) == [(1,), (2,)]
    assert list(_map.Chunk([(1, "a")], star=True).rows()) == [(1, "a")]
    assert _map.Chunk([7, 8], star=False).args(1) == (8,)


def test_adaptive_chunks_grow_for_cheap_tasks_and_stay_small_for_slow() -> None:
    fast = _chunkplan.AdaptiveChunker(cap=1000, fixed=None)
    for _ in range(20):
        size = fast.next_size()
        fast.observe(_map.ChunkResult([None] * size, None, 1e-6 * size), size)
    assert fast.next_size() == 1000
    slow = _chunkplan.AdaptiveChunker(cap=1000, fixed=None)
    for _ in range(20):
        size = slow.next_size()
        slow.observe(_map.ChunkResult([None] * size, None, 0.5 * size), size)
    assert slow.next_size() == 1


def test_aio_submit_and_map() -> None:
    async def main(
        ex: executors.Executor,
    ) -> tuple[object, list[object], list[object]]:
        one = await executors.aio.submit(ex, tasks.add, 40, 2)
        ordered = [
            x
            async for x in executors.aio.map(
                ex, tasks.identity, range(50), buffersize=7
            )
        ]
        unordered = [
            x async for x in executors.aio.map_unordered(ex, tasks.identity, range(50))
        ]
        return one, ordered, unordered

    with executors.create("thread", max_workers=2) as ex:
        one, ordered, unordered = asyncio.run(asyncio.wait_for(main(ex), BOUND))
    assert one == 42
    assert ordered == list(range(50))
    assert sorted(unordered) == list(range(50))  # type: ignore[type-var]


def test_aio_cancelling_the_awaiting_task_cancels_queued_work() -> None:
    with executors.create("thread", max_workers=1) as ex:
        blocker = ex.submit(tasks.sleep_and_return, 0.5, "done")

        async def main() -> None:
            waiting = asyncio.ensure_future(executors.aio.submit(ex, tasks.identity, 1))
            consumer_futures: list[object] = []

            async def consume() -> None:
                async for value in executors.aio.map(
                    ex, tasks.identity, range(20), chunksize=1
                ):
                    consumer_futures.append(value)

            consuming = asyncio.ensure_future(consume())
            await asyncio.sleep(0.05)
            waiting.cancel()
            consuming.cancel()
            for t in (waiting, consuming):
                with pytest.raises(asyncio.CancelledError):
                    await t
            assert consumer_futures == []

        asyncio.run(asyncio.wait_for(main(), BOUND))
        assert blocker.result(timeout=BOUND) == "done"
        # Everything queued behind the blocker was cancelled, not run.
        ex.shutdown(wait=True)


def test_aio_map_error_and_timeout() -> None:
    async def main(ex: executors.Executor) -> None:
        got = []
        with pytest.raises(ValueError, match="item 3 is bad"):
            async for x in executors.aio.map(ex, tasks.fail_on, range(6), [3] * 6):
                got.append(x)
        assert got == [0, 1, 2]
        with pytest.raises(futures.TimeoutError):
            async for _ in executors.aio.map(
                ex, tasks.sleep_and_return, [2.0], timeout=0.1
            ):
                pass

    with executors.create("thread", max_workers=2) as ex:
        asyncio.run(asyncio.wait_for(main(ex), BOUND))


def test_aio_map_needs_one_of_our_executors() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with (
        ThreadPoolExecutor(1) as raw,
        pytest.raises(TypeError, match=r"executors\.create"),
    ):
        executors.aio.map(raw, tasks.identity, [1])  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["thread", "inline"])
def test_the_exit_hook_is_registered_once_not_once_per_executor(backend: str) -> None:
    # threading keeps every registered hook for the life of the process:
    # registering it again per executor would grow that list for good.
    hooks = getattr(threading, "_threading_atexits", None)
    if hooks is None:  # pragma: no cover - not CPython
        pytest.skip("needs CPython's threading._threading_atexits")
    for _ in range(3):  # the hook may have to move last once
        with executors.create(backend, max_workers=1) as ex:
            ex.submit(tasks.identity, 1).result(timeout=BOUND)
    before = len(hooks)
    for _ in range(20):
        with executors.create(backend, max_workers=1) as ex:
            ex.submit(tasks.identity, 1).result(timeout=BOUND)
    assert len(hooks) == before


@pytest.mark.parametrize("protocol", [4, 5])
def test_an_outcome_with_buffers_apart_survives_any_library_pickler(
    protocol: int,
) -> None:
    # loky pickles an outcome at protocol 5, multiprocessing before Python
    # 3.14 at 4: the value comes back equal, and as writable as it was sent.
    import pickle

    import numpy as np

    from executors._outcome import Pickled, decode, dumps, run_call

    frozen = np.arange(100_000.0)
    frozen.flags.writeable = False
    value = {"writable": np.arange(100_000.0), "frozen": frozen}
    ok, data = run_call(dumps((tasks.identity, (value,), {})), buffers_apart=True)
    assert ok and isinstance(data, Pickled)
    assert len(data.data) < 1_000  # the arrays are not in the value's pickle
    ok, got = decode(pickle.loads(pickle.dumps((ok, data), protocol=protocol)))
    assert ok
    for name, array in value.items():
        np.testing.assert_array_equal(got[name], array)
        assert got[name].flags.writeable == array.flags.writeable


class _Celsius(float):
    pass


def test_reducers_given_to_dumps_come_before_the_shared_table() -> None:
    # joblib's workers pass their rule for arrays in results this way.
    import pickle

    from executors._outcome import dumps

    as_float = {_Celsius: lambda value: (float, (float(value),))}
    assert type(pickle.loads(dumps(_Celsius(21.5)))) is _Celsius
    assert type(pickle.loads(dumps(_Celsius(21.5), reducers=as_float))) is float
