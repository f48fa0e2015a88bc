"""The core's pickling helpers, in one process: no worker, no shared memory.

``pickled_by_name`` decides whether a wrapped callable can travel by name;
``dumps_apart`` and ``place_apart`` are the queue backend's fast path.
"""

from __future__ import annotations

import functools
import pickle

from executors._outcome import OUT_OF_BAND_BYTES, dumps_apart, place_apart
from executors._serialize import pickled_by_name, portable
from executors.testing import tasks


def test_a_module_function_travels_by_name() -> None:
    assert pickled_by_name(portable(tasks.add)) is tasks.add


def test_a_lambda_keeps_its_wrapper() -> None:
    wrapped = portable(lambda x: x)
    assert pickled_by_name(wrapped) is wrapped


def test_a_partial_keeps_its_wrapper() -> None:
    # A partial has no module-level name to be found by.
    wrapped = portable(functools.partial(tasks.add, 1))
    assert pickled_by_name(wrapped) is wrapped


def test_a_callable_not_wrapped_is_returned_as_is() -> None:
    assert pickled_by_name(tasks.add) is tasks.add


def test_only_large_buffers_leave_the_pickle() -> None:
    small = bytearray(b"s" * 100)
    large = bytearray(b"L" * OUT_OF_BAND_BYTES)
    data, buffers = dumps_apart(
        (pickle.PickleBuffer(small), pickle.PickleBuffer(large))
    )
    assert [b.nbytes for b in buffers] == [OUT_OF_BAND_BYTES]
    back = pickle.loads(data, buffers=buffers)
    assert bytes(back[0]) == bytes(small) and bytes(back[1]) == bytes(large)


def test_a_threshold_below_64_kib_takes_smaller_buffers_apart() -> None:
    _, buffers = dumps_apart(pickle.PickleBuffer(bytearray(2048)), 1024)
    assert [b.nbytes for b in buffers] == [2048]


def test_place_apart_leaves_a_pickle_under_the_threshold_alone() -> None:
    data, buffers = dumps_apart(pickle.PickleBuffer(bytearray(OUT_OF_BAND_BYTES)))
    assert place_apart(data, buffers, None) == (data, buffers)
    assert place_apart(data, buffers, 10 * OUT_OF_BAND_BYTES) == (data, buffers)
    small, none = dumps_apart(1)
    assert place_apart(small, none, 1) == (small, [])
