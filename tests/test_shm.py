"""Large buffers through shared memory: semantics, reuse, cleanup, fallback.

Every test runs on the real thing: segments from ``os.memfd_create``,
receivers opening ``/proc/<pid>/fd/<n>``, workers killed with SIGKILL,
callers killed with SIGKILL and SIGINT, a file-size limit that makes the
kernel refuse the memory. A segment has no name, so "nothing leaks" means:
no process that is gone held one, every live process of ours holds none
once its values are gone, and ``/dev/shm`` has no new entry.
"""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import executors
from _shm_checks import (
    MB,
    check_a_large_result_from_a_small_call,
    check_each_sides_own,
    check_map_carries_large_buffers,
    run_caller,
    stop_a_caller_mid_transfer,
)
from _shm_tasks import (
    Counted,
    count_loads,
    count_memfds,
    describe,
    fail_first,
    hold_then_die,
    memfds,
    negate_in_place,
    negate_then_fail_first,
    read_shared,
    same,
    unique_memory,
)
from executors import _outcome, _share, _shm

pytestmark = pytest.mark.skipif(
    not _shm.available(), reason="no os.memfd_create or /proc on this system"
)

SHM = Path("/dev/shm")
# (backend, options) of every backend whose workers honour shm_threshold.
BACKENDS = [
    ("process", {}),
    ("mp_pool", {}),
    ("joblib", {"max_nbytes": None}),
    ("joblib", {"joblib_backend": "multiprocessing", "max_nbytes": None}),
]
IDS = ["process", "mp_pool", "joblib-loky", "joblib-multiprocessing"]


def _dev_shm() -> set[str]:
    return set(os.listdir(SHM)) if SHM.is_dir() else set()


def _new_dev_shm(before: set[str]) -> set[str]:
    """New shared memory entries in /dev/shm (``SharedMemory``'s or ours).

    Other test runs share this machine, and loky's semaphores come and go
    with its resource tracker: only a segment could be ours.
    """
    return {
        name
        for name in _dev_shm() - before
        if name.startswith("psm_") or "executors" in name
    }


def _own_memfds() -> int:
    return count_memfds(os.getpid())


def _settle_own_segments() -> None:
    import gc

    gc.collect()
    _shm.trim()


# -- the transport in one process ------------------------------------------


def test_a_small_payload_is_plain_bytes() -> None:
    data = _outcome.dumps((len, (np.zeros(10),), {}), shm_threshold=MB)
    assert type(data) is bytes
    assert not data.startswith(_shm.MAGIC)


def test_a_large_buffer_leaves_the_pickle() -> None:
    array = np.arange(MB // 8 * 4, dtype=np.float64)
    data = _outcome.dumps(array, shm_threshold=MB)
    assert data.startswith(_shm.MAGIC)
    assert len(data) < 4096
    back = _outcome.loads(data)
    assert np.array_equal(back, array)
    assert back.flags.writeable
    assert not np.shares_memory(back, array)
    del back, data
    _settle_own_segments()
    assert _own_memfds() == 0


def test_a_segment_is_reused_once_its_value_is_gone() -> None:
    array = np.ones(4 * MB // 8)
    for _ in range(5):
        back = _outcome.loads(_outcome.dumps(array, shm_threshold=MB))
        assert back.sum() == array.size
        del back
    arena = _shm._get()
    assert len(arena.own) == 1, "a segment was created per transfer"
    _settle_own_segments()


def test_a_held_segment_is_not_written_again() -> None:
    first = _outcome.loads(_outcome.dumps(np.full(MB // 4, 1.0), shm_threshold=MB))
    second = _outcome.loads(_outcome.dumps(np.full(MB // 4, 2.0), shm_threshold=MB))
    assert (first == 1.0).all() and (second == 2.0).all()
    del first, second
    _settle_own_segments()


def test_a_view_kept_alive_keeps_the_pages() -> None:
    back = _outcome.loads(_outcome.dumps(np.full(MB // 4, 7.0), shm_threshold=MB))
    view = memoryview(back).toreadonly()
    del back
    again = _outcome.loads(_outcome.dumps(np.full(MB // 4, 9.0), shm_threshold=MB))
    assert np.frombuffer(view, dtype=np.float64).min() == 7.0
    assert (again == 9.0).all()
    del view, again
    _settle_own_segments()


@pytest.mark.parametrize("backend", ["process", "mp_pool", "queue", "joblib"])
def test_threshold_is_validated(backend: str) -> None:
    with pytest.raises(ValueError, match="shm_threshold must be at least 1"):
        executors.create(backend, shm_threshold=0)
    with pytest.raises(TypeError, match="shm_threshold must be an int"):
        executors.create(backend, shm_threshold=1.5)


def _strided(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(
        st.one_of(
            hnp.scalar_dtypes(),
            hnp.byte_string_dtypes(max_len=4),
            hnp.unicode_string_dtypes(max_len=4),
        )
    )
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40))
    array = draw(hnp.arrays(dtype, shape))
    if array.ndim:
        steps = tuple(draw(st.sampled_from([1, 1, 2, -1])) for _ in shape)
        array = array[tuple(slice(None, None, s) for s in steps)]
    if draw(st.booleans()):
        array = array.T
    return array


strided_arrays = st.composite(_strided)()


def _check_round_trip(value: np.ndarray, back: object) -> None:
    """``back`` is what pickle itself makes of ``value``, and its own."""
    expected = pickle.loads(pickle.dumps(value, protocol=5))
    assert isinstance(back, np.ndarray)
    assert back.dtype == expected.dtype and back.shape == expected.shape
    # Bit for bit: NaN and NaT compare unequal to themselves.
    assert back.tobytes() == expected.tobytes()
    assert back.flags.writeable
    assert not np.shares_memory(back, value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=strided_arrays, threshold=st.sampled_from([1, 64, 4096, MB]))
def test_any_array_round_trips_as_with_pickle(
    array: np.ndarray, threshold: int
) -> None:
    back = _outcome.loads(_outcome.dumps(array, shm_threshold=threshold))
    _check_round_trip(array, back)


@settings(max_examples=50, deadline=None)
@given(
    value=st.one_of(
        st.binary(max_size=5000),
        st.binary(max_size=5000).map(bytearray),
        st.lists(st.integers(), max_size=30).map(lambda v: np.array(v, dtype=object)),
        st.binary(min_size=1, max_size=5000).map(
            lambda b: pickle.PickleBuffer(bytearray(b))
        ),
    )
)
def test_other_values_round_trip_as_with_pickle(value: object) -> None:
    back = _outcome.loads(_outcome.dumps(value, shm_threshold=1))
    if isinstance(value, pickle.PickleBuffer):
        assert bytes(back) == bytes(value.raw())  # type: ignore[call-overload]
    elif isinstance(value, np.ndarray):
        assert back.dtype == object and list(back) == list(value)
    else:
        assert back == value and type(back) is type(value)


def test_a_memoryview_fails_as_with_pickle() -> None:
    view = memoryview(b"x" * MB)
    with pytest.raises(TypeError) as plain:
        _outcome.dumps(view)
    with pytest.raises(TypeError) as shared:
        _outcome.dumps(view, shm_threshold=1)
    assert str(shared.value) == str(plain.value)


# -- through real workers ----------------------------------------------------


@pytest.fixture(params=BACKENDS, ids=IDS)
def executor(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    backend, options = request.param
    with executors.create(backend, max_workers=2, **options) as ex:
        assert ex.capabilities.shared_memory
        yield ex
    _settle_own_segments()
    assert _own_memfds() == 0, "the caller holds a segment after shutdown"


def test_arguments_and_results_are_each_sides_own(executor) -> None:  # type: ignore[no-untyped-def]
    check_each_sides_own(executor)


def test_map_carries_large_buffers(executor) -> None:  # type: ignore[no-untyped-def]
    check_map_carries_large_buffers(executor)


def test_a_large_result_from_a_small_call(executor) -> None:  # type: ignore[no-untyped-def]
    check_a_large_result_from_a_small_call(executor)


def test_any_array_round_trips_through_a_worker() -> None:
    with executors.create("process", max_workers=1, shm_threshold=64) as ex:

        @settings(
            max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        )
        @given(array=strided_arrays)
        def check(array: np.ndarray) -> None:
            _check_round_trip(array, ex.submit(same, array).result(timeout=60))

        check()
    _settle_own_segments()
    assert _own_memfds() == 0


def test_reuse_across_round_trips_on_a_worker() -> None:
    arena = _shm._get()
    with executors.create("process", max_workers=1) as ex:
        array = np.ones(8 * MB // 8)
        counts = []
        for _ in range(3):
            for _ in range(4):
                back = ex.submit(same, array).result(timeout=60)
                del back
            counts.append((len(arena.own), ex.submit(_own_segments).result(timeout=60)))
        # A payload may outlive its future for a moment in the library's
        # thread (then the next call takes a second segment), never more.
        assert counts[0] == counts[-1], counts
        assert counts[-1][1] <= 2, counts
    _settle_own_segments()


def _own_segments(_: object = None) -> int:
    return len(_shm._get().own)


def _worker_segments(_: object = None) -> tuple[int, int]:
    arena = _shm._get()
    return memfds(), len(arena.own) + len(arena.mapped)


# -- nothing leaks -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["process", "mp_pool"])
def test_a_worker_killed_holding_an_argument_leaks_nothing(backend: str) -> None:
    before = _dev_shm()
    array = np.ones(8 * MB // 8)
    with executors.create(backend, max_workers=2) as ex:
        pids = {ex.submit(os.getpid).result(timeout=60) for _ in range(4)}
        future = ex.submit(hold_then_die, array)
        with pytest.raises(executors.WorkerCrashedError):
            future.result(timeout=60)
        del future
        assert array[0] == 1.0, "the worker wrote the caller's array"
    _settle_own_segments()
    assert _own_memfds() == 0
    for pid in pids:
        assert count_memfds(pid) == 0
    assert _new_dev_shm(before) == set()
    # The transport works on after the crash.
    with executors.create(backend, max_workers=1) as ex:
        back = ex.submit(same, array).result(timeout=60)
        assert (back == 1.0).all()
        del back
    _settle_own_segments()
    assert _own_memfds() == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "int"])
@pytest.mark.parametrize("backend", ["process", "mp_pool", "joblib"])
def test_a_caller_stopped_mid_transfer_leaks_nothing(
    backend: str, sig: signal.Signals, tmp_path: Path
) -> None:
    before = _dev_shm()
    # joblib's own memmapping (its files in /dev/shm) is not under test.
    options = {"max_nbytes": None} if backend == "joblib" else {}
    err = stop_a_caller_mid_transfer(tmp_path, sig, backend, **options)
    assert _new_dev_shm(before) == set()
    # (A caller killed by SIGKILL leaves the stdlib's semaphores and joblib's
    # folder to their resource trackers, which say so: none of that is ours.)
    assert "shared_memory objects" not in err and "memfd" not in err, err


def test_no_resource_tracker_warning_on_normal_shutdown(tmp_path: Path) -> None:
    done = run_caller(
        tmp_path / "normal.py",
        """
        for backend in ("process", "mp_pool", "queue"):
            with executors.create(backend, max_workers=2) as ex:
                for back in ex.map(same, [np.ones(1 << 18)] * 4):
                    assert back[0] == 1.0
                del back
        print("held", memfds(), flush=True)
        """,
    )
    assert "held 0" in done.stdout
    assert done.stderr == "", done.stderr


# -- no shared memory: the pipe ----------------------------------------------


@pytest.mark.parametrize("backend", ["process", "queue"])
def test_without_shared_memory_the_pipe_carries_it_with_one_warning(
    backend: str, tmp_path: Path
) -> None:
    # A file-size limit makes the kernel refuse to size a segment (EFBIG),
    # as a full memory would refuse to back it.
    done = run_caller(
        tmp_path / "limited.py",
        f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        array = np.ones(1 << 18)
        with executors.create({backend!r}, max_workers=1) as ex:
            for _ in range(3):
                back = ex.submit(same, array).result()
                assert back.flags.writeable and (back == 1.0).all()
        print("ok", flush=True)
        """,
    )
    assert "ok" in done.stdout
    warnings = [
        line
        for line in done.stderr.splitlines()
        if "shared memory is unavailable" in line
    ]
    # One in the caller; the worker, under the same limit, warns once too.
    assert 1 <= len(warnings) <= 2, done.stderr
    assert "File too large" in warnings[0]


@pytest.mark.parametrize("backend", ["process", "queue"])
def test_threshold_none_sends_through_the_pipe(backend: str) -> None:
    with executors.create(backend, max_workers=1, shm_threshold=None) as ex:
        array = np.ones(4 * MB // 8)
        back = ex.submit(same, array).result(timeout=60)
        assert (back == 1.0).all()
        assert ex.submit(memfds).result(timeout=60) == 0
        del back
    _settle_own_segments()
    assert _own_memfds() == 0


# -- other paths a payload takes ---------------------------------------------


@pytest.mark.parametrize("backend", ["process", "mp_pool"])
def test_forked_workers_do_not_take_the_callers_segments(backend: str) -> None:
    # A forked worker inherits the caller's segments: it must neither write
    # them as its own nor keep them.
    array = np.full(4 * MB // 8, 2.0)
    warm = _outcome.loads(_outcome.dumps(array, shm_threshold=MB))
    with executors.create(backend, max_workers=1, mp_context="fork") as ex:
        for _ in range(3):
            back = ex.submit(negate_in_place, array).result(timeout=60)
            assert (back == -2.0).all() and (array == 2.0).all()
            del back
        assert (warm == 2.0).all()
        # Each segment a worker knows is one descriptor and its mapping's
        # (mmap keeps a dup). Of the caller's, the worker keeps only the
        # mappings that values it inherited live on (`warm`'s, `array`'s
        # sent copy is the caller's own and not mapped there).
        held, known = ex.submit(_worker_segments).result(timeout=60)
        assert 2 * known <= held <= 2 * known + 2
    del warm
    _settle_own_segments()
    assert _own_memfds() == 0


@pytest.mark.parametrize("backend", ["process", "mp_pool"])
def test_a_retry_sends_the_same_arguments_again(backend: str, tmp_path: Path) -> None:
    array = np.full(4 * MB // 8, 1.0)
    marker = str(tmp_path / "tried")
    with executors.create(
        backend, max_workers=1, retries=1, retry_on=(ValueError,)
    ) as ex:
        assert ex.submit(fail_first, array, marker).result(timeout=60) == array.size
    _settle_own_segments()


@pytest.mark.parametrize(
    ("backend", "options"), [*BACKENDS, ("queue", {})], ids=[*IDS, "queue"]
)
def test_a_retry_gets_the_arguments_as_submitted(
    backend: str, options: dict[str, object], tmp_path: Path
) -> None:
    # The first attempt negates its argument in place, on the pages of the
    # segment it received: the retry must not see that (pickle's semantics:
    # each attempt unpickles the arguments as they were submitted).
    array = np.arange(4 * MB // 8, dtype=np.float64)
    marker = str(tmp_path / "tried")
    with executors.create(
        backend, max_workers=1, retries=1, retry_on=(ValueError,), **options
    ) as ex:
        future = ex.submit(negate_then_fail_first, array, marker)
        assert future.result(timeout=60) == -1.0
        assert array[1] == 1.0
        del future
    _settle_own_segments()


def test_joblib_parallel_engine_carries_large_buffers() -> None:
    arrays = [np.full(2 * MB // 8, float(i)) for i in range(4)]
    with executors.create(
        "joblib", max_workers=2, map_engine="parallel", max_nbytes=None
    ) as ex:
        for i, back in enumerate(ex.map(same, arrays)):
            assert (back == float(i)).all() and back.flags.writeable
        del back
    _settle_own_segments()
    assert _own_memfds() == 0


def test_the_pool_api_carries_large_buffers() -> None:
    array = np.full(4 * MB // 8, 3.0)
    with executors.Pool(2, backend="process") as pool:
        assert pool.apply(describe, (array,)) == (True, 3.0 * array.size)
        backs = pool.map(same, [array] * 3)
        assert all((b == 3.0).all() for b in backs)
        del backs
    _settle_own_segments()


# -- one object shared by many tasks (the handle; Executor.share is the core's)


@pytest.mark.parametrize(("backend", "options"), BACKENDS, ids=IDS)
def test_a_shared_array_is_mapped_read_only_once_per_worker(
    backend: str, options: dict[str, object]
) -> None:
    array = np.arange(32 * MB // 8, dtype=np.float64)
    with executors.create(backend, max_workers=2, **options) as ex:
        before = dict(_uss_by_worker(ex))
        handle = _share.Shared(array)
        results = [
            ex.submit(read_shared, {"array": handle}).result(timeout=60)
            for _ in range(20)
        ]
        assert all(r[:2] == (False, float(array.sum())) for r in results)
        after = dict(_uss_by_worker(ex))
        for pid, uss in after.items():
            # Mapped, not copied: the pages are the caller's segment's.
            assert uss - before.get(pid, uss) < array.nbytes // 10, (pid, uss)
        handle.release()
        with pytest.raises(ValueError, match="was released"):
            ex.submit(read_shared, {"array": handle}).result(timeout=60)
        # A worker lets go of a released object when it next receives one.
        other = _share.Shared(np.ones(MB))
        arena = _shm._get()
        held = sum(s.size for s in arena.own)
        for _ in range(30):  # until every worker has had one
            futures = [ex.submit(read_shared, {"array": other}) for _ in range(4)]
            for future in futures:
                future.result(timeout=60)
            _shm.trim()
            if sum(s.size for s in arena.own) < held - array.nbytes // 2:
                break
        else:
            raise AssertionError("the released segment is still held")
        other.release()
    _settle_own_segments()
    assert _own_memfds() == 0


def _uss_by_worker(ex: executors.Executor) -> list[tuple[int, int]]:
    seen = {}
    for _ in range(8):
        pid = ex.submit(os.getpid).result(timeout=60)
        seen[pid] = ex.submit(unique_memory).result(timeout=60)
    return list(seen.items())


@pytest.mark.parametrize("size", [10, 100_000], ids=["inline", "in-segment"])
def test_a_shared_object_is_unpickled_once_per_worker(size: int) -> None:
    counted = Counted(list(range(size)))
    with executors.create("process", max_workers=1) as ex:
        handle = _share.Shared(counted)
        outcomes = [ex.submit(count_loads, handle).result(timeout=60) for _ in range(5)]
        assert outcomes == [(1, size)] * 5
        handle.release()
    _settle_own_segments()
    assert _own_memfds() == 0
