"""The error tree drawn in executors._errors is the tree of the classes."""

from __future__ import annotations

import builtins
import concurrent.futures
import re
from concurrent.futures.process import BrokenProcessPool

import executors
from executors import _errors

_KNOWN = {
    "concurrent.futures.BrokenExecutor": concurrent.futures.BrokenExecutor,
    "concurrent.futures.CancelledError": concurrent.futures.CancelledError,
    "BrokenProcessPool": BrokenProcessPool,
}


def _resolve(name: str) -> type:
    if name in _KNOWN:
        return _KNOWN[name]
    found = getattr(executors, name, None) or getattr(builtins, name)
    assert isinstance(found, type), name
    return found


def _drawn_edges() -> list[tuple[str, str]]:
    """(parent, child) pairs of the drawing in the module docstring."""
    doc = _errors.__doc__ or ""
    drawing = doc.split("::", 1)[1].split("\n\n", 2)[1]
    edges = []
    # The names above the current line, by the column where each starts.
    above: list[tuple[int, str]] = []
    for line in drawing.splitlines():
        text = line[4:]  # the docstring's indentation
        if "── " in text:
            column = text.index("── ") + 3
        elif text[:1].isalpha():
            column = 0
        else:
            continue  # a description's second line
        name = re.match(r"[\w.]+", text[column:])
        assert name is not None, line
        while above and above[-1][0] >= column:
            above.pop()
        if above:
            edges.append((above[-1][1], name.group()))
        above.append((column, name.group()))
    return edges


def test_the_drawing_matches_the_classes() -> None:
    edges = _drawn_edges()
    assert len(edges) >= 10
    for parent, child in edges:
        assert issubclass(_resolve(child), _resolve(parent)), (
            f"{child} is drawn under {parent}"
        )


def test_every_public_error_is_drawn() -> None:
    drawn = {child for _, child in _drawn_edges()}
    public = {name for name in executors.__all__ if name.endswith("Error")}
    assert public <= drawn


def test_losing_a_scheduler_is_an_executor_failure() -> None:
    # Code that catches ExecutorFailedError catches the loss of Dask's
    # scheduler as it catches the loss of Celery's broker.
    assert issubclass(executors.DaskClusterError, executors.ExecutorFailedError)
