"""The queue backend's large buffers through shared memory (``shm_threshold``).

The queue's wire carries a pickle's out-of-band buffers itself; with a
threshold, a pickle holding a buffer at or above it sends them through a
segment of :mod:`executors._shm` instead (``executors._outcome.place_apart``).
Everything runs on the real thing: memfd segments opened through
``/proc/<pid>/fd``, workers and callers killed with SIGKILL and SIGINT, a
file-size limit that makes the kernel refuse the memory. A segment has no
name, so "nothing leaks" means: no process of ours that is gone held one,
every live one holds none once its values are gone, and ``/dev/shm`` has
no new entry. (``shm_threshold``'s validation is ``test_shm.py``'s, for every
backend that takes it.)
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import executors
from _queue_shm_tasks import make_or_die, make_then_die
from _shm_checks import (
    MB,
    check_a_large_result_from_a_small_call,
    check_each_sides_own,
    check_map_carries_large_buffers,
    stop_a_caller_mid_transfer,
)
from _shm_tasks import (
    count_memfds,
    describe,
    fail_first,
    hold_then_die,
    make,
    memfds,
    same,
)
from executors import _outcome, _shm
from executors.backends.queue import _wire
from executors.backends.queue._worker import _dumps_outcome

pytestmark = [
    pytest.mark.skipif(
        not _shm.available(), reason="no os.memfd_create or /proc on this system"
    ),
    pytest.mark.timeout(120),
]

SHM = Path("/dev/shm")


def _dev_shm() -> set[str]:
    """Shared memory entries in /dev/shm that could be a segment."""
    if not SHM.is_dir():
        return set()
    return {n for n in os.listdir(SHM) if n.startswith("psm_") or "executors" in n}


def _own_memfds() -> int:
    return count_memfds(os.getpid())


def _settle() -> None:
    gc.collect()
    _shm.trim()


def _worker_pids(ex: executors.Executor) -> list[int]:
    with ex._pool.lock:  # type: ignore[attr-defined]
        return [w.process.pid for w in ex._pool.workers.values()]  # type: ignore[attr-defined]


@pytest.fixture
def queue() -> Iterator[executors.Executor]:
    before = _dev_shm()
    with executors.create("queue", max_workers=2) as ex:
        yield ex
    _settle()
    assert _own_memfds() == 0, "the caller holds a segment after shutdown"
    assert _dev_shm() - before == set()


# -- the payload in one process ----------------------------------------------


def test_below_the_threshold_nothing_changes() -> None:
    body, buffers = _dumps_outcome(np.ones(MB // 8 - 1), MB)
    assert not body.startswith(_shm.MAGIC)
    assert [b.nbytes for b in buffers] == [MB - 8]


def test_at_the_threshold_every_buffer_goes_through_one_segment() -> None:
    value = (np.ones(MB // 8), np.zeros(128 * 1024 // 8), b"x" * 10)
    body, buffers = _outcome.dumps_apart(value, MB)
    body, buffers = _outcome.place_apart(body, buffers, MB)
    assert body.startswith(_shm.MAGIC) and buffers == []
    back = _wire.loads(body, [])
    for sent, got in zip(value[:2], back[:2], strict=True):
        assert (sent == got).all() and got.flags.writeable
        assert not np.shares_memory(sent, got)
    del body, back
    _settle()


def test_a_threshold_under_64_kib_sends_small_buffers_too() -> None:
    body, buffers = _dumps_outcome(np.ones(128), 1024)
    assert body.startswith(_shm.MAGIC) and buffers == []
    assert (_wire.loads(body, []) == 1.0).all()
    del body
    _settle()


def test_the_capability_is_declared() -> None:
    from executors.backends.queue import QueueExecutor

    assert QueueExecutor.capabilities.shared_memory


# -- through real workers ------------------------------------------------------


def test_arguments_and_results_are_each_sides_own(queue: executors.Executor) -> None:
    check_each_sides_own(queue)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_carries_large_buffers(queue: executors.Executor, chunksize: int) -> None:
    check_map_carries_large_buffers(queue, chunksize=chunksize)


def test_a_large_result_from_a_small_call(queue: executors.Executor) -> None:
    result = check_a_large_result_from_a_small_call(queue)
    assert queue.submit(memfds).result(timeout=60) >= 1
    del result


def test_segments_are_reused(queue: executors.Executor) -> None:
    array = np.ones(8 * MB // 8)
    counts = []
    for _ in range(3):
        for _ in range(4):
            back = queue.submit(same, array).result(timeout=60)
            del back
        counts.append(len(_shm._get().own))
    # A call's body may outlive its future for a moment in the manager
    # thread (then the next call takes a second segment), never more.
    assert max(counts) <= 2, counts
    # A worker holds its own segment and the caller's (at most two), each
    # as a descriptor and its mapping's copy of it.
    held = [queue.submit(memfds).result(timeout=60) for _ in range(4)]
    assert max(held) <= 2 * 3, held


def test_any_array_round_trips_through_a_worker() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    hnp = pytest.importorskip("hypothesis.extra.numpy")
    st = hypothesis.strategies

    @st.composite  # type: ignore[misc]
    def arrays(draw):  # type: ignore[no-untyped-def]
        dtype = draw(
            st.one_of(hnp.scalar_dtypes(), hnp.unicode_string_dtypes(max_len=4))
        )
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=40))
        array = draw(hnp.arrays(dtype, shape))
        if array.ndim:
            steps = tuple(draw(st.sampled_from([1, 2, -1])) for _ in shape)
            array = array[tuple(slice(None, None, s) for s in steps)]
        return array.T if draw(st.booleans()) else array

    with executors.create("queue", max_workers=1, shm_threshold=64) as ex:

        @hypothesis.settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[hypothesis.HealthCheck.too_slow],
        )
        @hypothesis.given(array=arrays())
        def check(array: np.ndarray) -> None:
            back = ex.submit(same, array).result(timeout=60)
            expected = pickle.loads(pickle.dumps(array, protocol=5))
            assert back.dtype == expected.dtype and back.shape == expected.shape
            assert back.tobytes() == expected.tobytes()  # NaN != NaN
            assert back.flags.writeable and not np.shares_memory(back, array)

        check()
        for value in (b"x" * 5000, bytearray(5000), np.array([1, "a"], dtype=object)):
            back = ex.submit(same, value).result(timeout=60)
            assert type(back) is type(value)
    _settle()
    assert _own_memfds() == 0


def test_a_retry_sends_the_same_arguments_again(tmp_path: Path) -> None:
    array = np.full(4 * MB // 8, 1.0)
    marker = str(tmp_path / "tried")
    with executors.create(
        "queue", max_workers=1, retries=1, retry_on=(ValueError,)
    ) as ex:
        assert ex.submit(fail_first, array, marker).result(timeout=60) == array.size
    _settle()
    assert _own_memfds() == 0


def test_a_worker_leaving_after_max_tasks_has_its_last_result_taken() -> None:
    # The parent opens a result's segment through the worker's descriptor:
    # a worker that left at once would take it along.
    with executors.create("queue", max_workers=2, max_tasks_per_child=1) as ex:
        futures = [ex.submit(make, 4 * MB, float(i)) for i in range(40)]
        for i, future in enumerate(futures):
            assert (future.result(timeout=60) == float(i)).all()
        del futures, future
    _settle()
    assert _own_memfds() == 0


# -- nothing leaks -------------------------------------------------------------


def test_a_worker_killed_holding_an_argument_leaks_nothing() -> None:
    before = _dev_shm()
    array = np.ones(8 * MB // 8)
    with executors.create("queue", max_workers=2) as ex:
        ex.submit(same, array).result(timeout=60)
        pids = _worker_pids(ex)
        with pytest.raises(executors.WorkerCrashedError):
            ex.submit(hold_then_die, array).result(timeout=60)
        assert array[0] == 1.0, "the worker wrote the caller's array"
        # The transport works on after the crash.
        assert (ex.submit(same, array).result(timeout=60) == 1.0).all()
        pids += _worker_pids(ex)
    _settle()
    assert _own_memfds() == 0
    assert [pid for pid in pids if count_memfds(pid)] == []
    assert _dev_shm() - before == set()


def test_values_from_a_worker_killed_in_a_chunk_stay_valid() -> None:
    # The chunk sends its first values through the worker's segment, then
    # the worker dies: the values live on, and go with the caller's last use.
    with executors.create("queue", max_workers=1) as ex:
        results = ex.map(make_or_die, range(6), [2 * MB] * 6, [4] * 6, chunksize=6)
        got = []
        with pytest.raises(executors.WorkerCrashedError):
            for value in results:
                got.append(value)
        assert [float(v[0]) for v in got] == [0.0, 1.0, 2.0, 3.0]
        assert all((v == v[0]).all() and v.flags.writeable for v in got)
        del got, value
    _settle()
    assert _own_memfds() == 0


def test_a_worker_killed_as_it_sends_a_result_leaks_nothing() -> None:
    before = _dev_shm()
    with executors.create("queue", max_workers=1) as ex:
        for _ in range(5):
            future = ex.submit(make_then_die, 64 * MB)
            try:
                value = future.result(timeout=60)
            except executors.WorkerCrashedError:
                pass
            else:
                assert (value == 1.0).all()
                del value
        assert (ex.submit(make, MB * 8, 2.0).result(timeout=60) == 2.0).all()
    _settle()
    assert _own_memfds() == 0
    assert _dev_shm() - before == set()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "int"])
def test_a_caller_stopped_mid_transfer_leaks_nothing(
    sig: signal.Signals, tmp_path: Path
) -> None:
    before = _dev_shm()
    err = stop_a_caller_mid_transfer(tmp_path, sig, "queue")
    assert _dev_shm() - before == set()
    assert "memfd" not in err and "leaked" not in err, err


def test_a_dropped_message_lets_its_segment_go() -> None:
    # A worker writes a segment again only once its message was taken.
    body, _ = _dumps_outcome(np.ones(MB // 8), MB)
    assert _shm.unpicked()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _wire.discard(_message(body))
    assert not _shm.unpicked()
    del body
    _settle()


def _message(body: bytes) -> object:
    from executors.backends.queue._wire import RESULT, Message

    return Message(RESULT, 1, 0.0, body, [])


def test_share_maps_one_array_read_only_in_every_task() -> None:
    array = np.arange(4 * MB // 8, dtype=np.float64)
    # Segments other tests of this process still hold are not this test's.
    _settle()
    before = _own_memfds()
    with executors.create("queue", max_workers=2) as ex:
        handle = ex.share(array)
        expected = (False, float(array.sum()))
        assert ex.submit(describe, handle).result(timeout=60) == expected
        assert list(ex.map(describe, [handle] * 4, chunksize=2)) == [expected] * 4
        handle.release()
    _settle()
    assert _own_memfds() == before
