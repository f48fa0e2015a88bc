"""The main module as worker processes see it, checked where workers start.

A worker started by spawn or forkserver (loky's workers and Dask's nannies
too) re-runs the caller's main module under the name ``__mp_main__``, so
that what the caller pickles by reference to ``__main__`` exists there::

    caller                                worker (spawn, forkserver, loky)
    ──────                                ──────
    create() ─▶ check_create()            multiprocessing.spawn.prepare():
      └─ workers start ─────────────────▶   re-runs the main module from the
         get_preparation_data(): what        path or the module name it was
         the worker re-runs                  given, with the process flagged
                                             current_process()._inheriting

Two things go wrong there, and both are settled here, once for every
backend, from :func:`executors.create`:

* **The main module has no file.** Under ``python - <<EOF`` its
  ``__file__`` is ``"<stdin>"``; the stdlib has every worker re-run
  ``<cwd>/<stdin>``, which does not exist, and every worker dies at
  start. :func:`check_create` installs a wrapper of
  ``multiprocessing.spawn.get_preparation_data`` that drops a path which
  is not a file: nothing can be re-run from it, and the callables such a
  script defines travel by value (:mod:`executors._serialize`). ``python
  -c`` and notebooks have no ``__file__``: nothing is re-run for them.
* **The script creates an executor without the**
  ``if __name__ == "__main__":`` **guard.** Each worker, re-running it,
  would create an executor and start workers of its own (which the stdlib
  refuses, with a ``RuntimeError`` printed by every worker). Two checks,
  in the caller and in the worker:

  - the caller raises :class:`RuntimeError` at the ``create()`` call when
    the script calls it from a top-level statement (directly or through
    its own functions) that a worker re-running the script is certain to
    reach too (:func:`_certain_in_workers`), and the backend
    says its workers start by a method that re-runs the main module (its
    ``_workers_start_method(options)`` class hook; without one, only the
    worker's check applies);
  - a worker whose re-run of the main module reaches ``create()`` exits at
    once, silently, with :data:`MAIN_REIMPORTED_EXITCODE`, and the
    caller's message for that exit code (:func:`describe_reimport`) names
    the guard and the line that the caller saw create an executor. (From
    Python 3.13.8 and 3.14.1 the fork server itself preloads ``__main__``:
    this check then ends the fork server, and the caller sees its backend's
    error for a worker that could not start.)

A backend's hook, a classmethod given the options of ``create()``, returns
the start method of its local worker processes (``"fork"``, ``"spawn"``,
``"forkserver"``, ``"loky"``...), or ``None`` when it starts none in this
process (threads, a remote cluster); if it raises, the options are the
constructor's to report, and only the worker's check applies.
"""

from __future__ import annotations

import ast
import functools
import inspect
import multiprocessing.process
import multiprocessing.spawn
import os
import sys
import threading
from collections.abc import Callable, Mapping
from types import FrameType, ModuleType
from typing import Any, TypeVar, cast

__all__ = [
    "MAIN_REIMPORTED_EXITCODE",
    "check_create",
    "describe_reimport",
    "reimporting_main",
]

#: Exit code of a worker that re-ran a main module which creates an
#: executor outside the ``if __name__ == "__main__":`` guard.
MAIN_REIMPORTED_EXITCODE = 78

# How many create() sites of the main module the caller remembers, for the
# message: the first unguarded one is named, and scripts have few.
_MAX_SITES = 8

_PACKAGE = __name__.partition(".")[0]

# The start methods whose workers re-run the main module; "fork" copies it,
# and loky's default ("loky", fork then exec) does not import it.
_RERUN_BY = frozenset({"spawn", "forkserver", "loky_init_main"})

_sites: list[tuple[str, int]] = []
_lock = threading.Lock()


class _Unknown:
    """A backend without the hook: it may start processes, by any method."""


_UNKNOWN = _Unknown()


def reimporting_main() -> bool:
    """Whether this process is a worker re-running the caller's main module.

    ``multiprocessing.spawn`` (and loky's copy of it, and the fork server
    while it preloads ``__main__``) sets ``current_process()._inheriting``
    while it prepares a new process; the stdlib reads the same flag to
    refuse starting a process from there.
    """
    return bool(
        getattr(multiprocessing.process.current_process(), "_inheriting", False)
    )


def check_create(cls: type[Any], backend: str, options: Mapping[str, Any]) -> None:
    """Check a :func:`executors.create` call against the main module.

    Called by ``create()`` before the executor exists. In a worker
    re-running the main module, exits the worker (see the module's
    docstring); in the caller, makes workers that start by spawn or
    forkserver skip a main module without a file, notes where the script
    called ``create()``, and raises if that call is certain to run again
    in every worker.

    Raises:
        RuntimeError: the script creates this executor outside the
            ``if __name__ == "__main__":`` guard.
    """
    if not cls.capabilities.process_isolation:
        return
    method = _start_method(cls, options)
    if method is None:
        return
    if reimporting_main():
        _exit_reimported()
    _install_preparation_data()
    caller = _caller_frame()
    site = _main_site(caller)
    if site is None:
        return
    with _lock:
        if site not in _sites and len(_sites) < _MAX_SITES:
            _sites.append(site)
    if method not in _RERUN_BY or not _main_is_rerun():
        return
    if caller is not None and _certain_in_workers(caller):
        path, line = site
        raise RuntimeError(
            f"the script {path} runs line {line} outside an "
            '`if __name__ == "__main__":` guard, and that line creates a '
            f"{backend!r} executor whose workers start by {method}: every "
            "worker runs the script again and would create an executor "
            "there too. Put the code that creates and uses executors under "
            '`if __name__ == "__main__":` (or in a function called from there)'
        )


def describe_reimport() -> str:
    """What an exit with :data:`MAIN_REIMPORTED_EXITCODE` means, for a person.

    Names the script and the line of the first top-level statement that
    created an executor outside an ``if __name__ ...`` block, when the
    caller saw one.
    """
    with _lock:
        sites = list(_sites)
    where = "at module level"
    for path, line in sites:
        if line not in _guarded_lines(path):
            where = f"at line {line} of {path}"
            break
    return (
        "the worker re-ran the main module, which creates an executor "
        f'{where} outside an `if __name__ == "__main__":` guard; workers '
        "started by spawn or forkserver run the main module again, so the "
        "code that creates executors must run only under that guard"
    )


def _start_method(cls: type[Any], options: Mapping[str, Any]) -> object:
    hook = getattr(cls, "_workers_start_method", None)
    if hook is None:
        return _UNKNOWN
    try:
        method: object = hook(options)
    except Exception:
        # The options are the constructor's to report.
        return _UNKNOWN
    return method


def _exit_reimported() -> None:
    """End this worker: its caller explains why, once for all workers.

    Silent, where every worker's traceback would repeat the same mistake;
    the script's buffered output is flushed first, as any exit would.
    ``os._exit``: a ``SystemExit`` would come out of a fork server's
    child as exit code 1.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(MAIN_REIMPORTED_EXITCODE)


def _caller_frame() -> FrameType | None:
    """The innermost frame outside this package: who called create()."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name != _PACKAGE and not name.startswith(_PACKAGE + "."):
            return frame
        frame = frame.f_back
    return None


def _main_namespace() -> dict[str, Any] | None:
    main = sys.modules.get("__main__")
    return getattr(main, "__dict__", None)


def _main_site(frame: FrameType | None) -> tuple[str, int] | None:
    """The (file, line) of the main module's top-level code on the stack."""
    namespace = _main_namespace()
    site = None
    while frame is not None:
        if frame.f_globals is namespace and frame.f_code.co_name == "<module>":
            site = (frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return site


def _main_is_rerun() -> bool:
    """Whether a worker started by spawn or forkserver re-runs ``__main__``.

    As ``multiprocessing.spawn.get_preparation_data`` decides, with a path
    that is not a file dropped (see :func:`_wrap`).
    """
    main: ModuleType | None = sys.modules.get("__main__")
    if main is None:
        return False
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        # A package's __main__ (python -m pkg) is not run again.
        return not (name == "__main__" or name.endswith(".__main__"))
    path = getattr(main, "__file__", None)
    return isinstance(path, str) and os.path.isfile(path)


def _certain_in_workers(frame: FrameType) -> bool:
    """Whether a worker re-running the script certainly runs this call too.

    The worker runs every top-level statement of the script in order (one
    that raised or exited would have ended the worker). Certain: a call
    from such a statement, or from a function of the script reached the
    same way from one, with no ``return`` before it; statements inside
    ``if``, loops or ``except``, or with an ``x if c else y``,
    ``and``/``or``, a comprehension or ``__name__`` in them, are left to
    the worker's check, which is exact.
    """
    namespace = _main_namespace()
    while frame is not None and frame.f_globals is namespace:
        code = frame.f_code
        tree = _parse(code.co_filename)
        if tree is None:
            return False
        if code.co_name == "<module>":
            return _reached(tree.body, frame.f_lineno)
        if code.co_flags & _SUSPENDS:
            return False
        function = _function_node(code.co_filename, code.co_name, code.co_firstlineno)
        if function is None or not _reached(function.body, frame.f_lineno):
            return False
        frame = frame.f_back  # type: ignore[assignment]
    return False


# A generator's or coroutine's body runs when driven, not when called.
_SUSPENDS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


@functools.lru_cache(maxsize=64)
def _function_node(
    path: str, name: str, first_line: int
) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The definition of the function whose code starts at ``first_line``."""
    tree = _parse(path)
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if node.name == name and first == first_line:
                return node
    return None


def _reached(body: list[ast.stmt], line: int) -> bool:
    """Whether ``line`` runs whenever ``body`` runs (and runs on to it)."""
    while True:
        index = next((i for i, node in enumerate(body) if _spans(node, line)), None)
        if index is None:
            return False
        if any(_returns(before) for before in body[:index]):
            return False
        statement = body[index]
        if isinstance(statement, (ast.With, ast.AsyncWith)):
            if not statement.body or line < statement.body[0].lineno:
                # The with's header: its items run whatever its body holds.
                return all(_unconditional(item) for item in statement.items)
            body = statement.body
        elif isinstance(statement, ast.Try) and _within(statement.body, line):
            body = statement.body
        else:
            return _unconditional(statement)


def _returns(statement: ast.stmt) -> bool:
    """Whether ``statement`` may return from the function that holds it."""
    pending: list[ast.AST] = [statement]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Return):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        pending.extend(ast.iter_child_nodes(node))
    return False


def _spans(statement: ast.stmt, line: int) -> bool:
    return statement.lineno <= line <= (statement.end_lineno or statement.lineno)


def _within(body: list[ast.stmt], line: int) -> bool:
    last = body[-1]
    return body[0].lineno <= line <= (last.end_lineno or last.lineno)


_CONDITIONAL = (
    ast.If,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.Try,
    ast.ExceptHandler,
    ast.Match,
    ast.IfExp,
    ast.BoolOp,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.Lambda,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
)


def _unconditional(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, _CONDITIONAL):
            return False
        if isinstance(node, ast.Name) and node.id == "__name__":
            return False
    return True


@functools.lru_cache(maxsize=8)
def _parse(path: str) -> ast.Module | None:
    try:
        with open(path, "rb") as file:
            return ast.parse(file.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None


def _guarded_lines(path: str) -> frozenset[int]:
    """The lines of ``path`` inside an ``if`` whose test reads ``__name__``."""
    tree = _parse(path)
    if tree is None:
        return frozenset()
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and any(
            isinstance(name, ast.Name) and name.id == "__name__"
            for name in ast.walk(node.test)
        ):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return frozenset(lines)


_install_lock = threading.Lock()


def _install_preparation_data() -> None:
    """Wrap ``multiprocessing.spawn.get_preparation_data``, once per process.

    Every spawn and forkserver start reads what the worker re-runs from it
    (``popen_spawn_posix``, ``popen_forkserver``, and the fork server's own
    preload of ``__main__`` from Python 3.13.8 and 3.14.1), as a module
    attribute at each call: one wrapper covers every backend, Dask's
    nannies included. Other code in the process that starts processes
    gains the same fix.
    """
    with _install_lock:
        current = multiprocessing.spawn.get_preparation_data
        if not getattr(current, "_executors_wrapper", False):
            multiprocessing.spawn.get_preparation_data = _wrap(current)


_Prepare = TypeVar("_Prepare", bound=Callable[[str], dict[str, Any]])


def _wrap(original: _Prepare) -> _Prepare:
    @functools.wraps(original)
    def get_preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        path = data.get("init_main_from_path")
        if path is not None and not os.path.isfile(path):
            # "<stdin>" (python -), or a script deleted since it started:
            # the stdlib's worker would die on FileNotFoundError.
            del data["init_main_from_path"]
        return data

    get_preparation_data._executors_wrapper = True  # type: ignore[attr-defined]
    return cast(_Prepare, get_preparation_data)
