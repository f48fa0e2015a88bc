"""The main module as workers see it: no guard, no file (issue 27, "Bad input").

Each test runs a real program, as a user would: a script file, a script
read from standard input (``python - < script``), ``python -c`` (as a
notebook, a ``__main__`` with no ``__file__``) or ``python -m module``,
with workers started by spawn or forkserver. Every program is bounded, and
every process it started must be gone when it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from conftest import backend_factory

#: Seconds a program may take; a Dask cluster starts in a few.
RUN_BOUND = 120.0
#: Seconds its processes get to end once it has exited.
EXIT_GRACE = 10.0
#: The environment variable that marks every process a program started.
MARK = "EXECUTORS_MAIN_MODULE_TEST"

GUARD = 'if __name__ == "__main__":'
SPAWNED = ("spawn", "forkserver")

# A script as users write it, guard forgotten: workers started by spawn or
# forkserver run it again.
UNGUARDED = """\
import executors

def square(x):
    return x * x

ex = executors.create(BACKEND, **OPTIONS)
print("result", ex.submit(square, 7).result(timeout=60))
ex.shutdown()
"""

UNGUARDED_MAIN = """\
import executors

def square(x):
    return x * x

def main():
    ex = executors.create(BACKEND, **OPTIONS)
    print("result", ex.submit(square, 7).result(timeout=60))
    ex.shutdown()

main()
"""

# The same mistake inside a block that a worker is not certain to run:
# found by the worker, not by the caller.
UNGUARDED_IN_BLOCK = """\
import executors

def square(x):
    return x * x

if True:  # not a guard: workers run it too
    ex = executors.create(BACKEND, **OPTIONS)
    print("result", ex.submit(square, 7).result(timeout=60))
    ex.shutdown()
"""

GUARDED = """\
import executors

def square(x):
    return x * x

if __name__ == "__main__":
    with executors.create(BACKEND, **OPTIONS) as ex:
        print("result", ex.submit(square, 7).result(timeout=60))
"""

# Correct scripts that create the executor from a function, or from a
# top-level line that is conditional itself: nothing may misfire on them.
FROM_THE_GUARD = """\
import executors

def square(x):
    return x * x

def main():
    with executors.create(BACKEND, **OPTIONS) as ex:
        print("result", ex.submit(square, 7).result(timeout=60))

if __name__ == "__main__":
    main()
"""

CONDITIONAL_LINE = """\
import multiprocessing
import executors

def square(x):
    return x * x

ex = executors.create(BACKEND, **OPTIONS) if __name__ == "__main__" else None
if multiprocessing.current_process().name == "MainProcess":
    print("result", ex.submit(square, 7).result(timeout=60))
    ex.shutdown()
"""

EARLY_RETURN = """\
import multiprocessing
import executors

def square(x):
    return x * x

def main():
    if multiprocessing.current_process().name != "MainProcess":
        return
    ex = executors.create(BACKEND, **OPTIONS)
    print("result", ex.submit(square, 7).result(timeout=60))
    ex.shutdown()

main()
"""

# Read from standard input or given with -c: no file to run again. Its
# functions (a lambda too) and what they read travel by value.
NO_FILE = """\
import executors

OFFSET = 100

def shift(x):
    return x + OFFSET

ex = executors.create(BACKEND, **OPTIONS)
print("result", sorted(ex.map(shift, range(3))), ex.submit(lambda: -1).result(60))
ex.shutdown()
"""


def _quick_first(*cases: tuple[object, ...]) -> list[object]:
    """Parameters: the first case in the quick run, the others under -m slow."""
    first, *rest = cases
    return [first, *(pytest.param(*case, marks=pytest.mark.slow) for case in rest)]


def _options(backend: str, method: str | None) -> dict[str, object]:
    backend_factory(backend)  # skips a backend that is not installed
    options: dict[str, object] = {"max_workers": 2}
    if method is not None:
        options["mp_context"] = method
    return options


def _source(template: str, backend: str, options: dict[str, object]) -> str:
    return (
        template.replace("BACKEND", repr(backend))
        .replace("OPTIONS", f"json.loads({json.dumps(options)!r})")
        .replace("import executors\n", "import json\nimport executors\n", 1)
    )


def _line_of(source: str, text: str) -> int:
    """The number of the first line that starts with ``text``."""
    return next(
        n for n, line in enumerate(source.splitlines(), 1) if line.startswith(text)
    )


def _run(
    command: list[str], cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a program to its end; fail if it or any process it started lives on."""
    mark = uuid.uuid4().hex
    env = {**os.environ, MARK: mark, "PYTHONUNBUFFERED": "1"}
    try:
        return subprocess.run(
            [sys.executable, *command],
            check=False,
            input=stdin,
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=RUN_BOUND,
        )
    finally:
        left = _marked(mark, EXIT_GRACE)
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()
        assert not left, f"processes outlived the program: {left}"


def _marked(mark: str, grace: float) -> list[psutil.Process]:
    """The live processes carrying ``mark``, once ``grace`` has passed for them."""
    deadline = time.monotonic() + grace
    while True:
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if (
                    process.status() != psutil.STATUS_ZOMBIE
                    and process.environ().get(MARK) == mark
                ):
                    found.append(process)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _script(tmp_path: Path, source: str, name: str = "script.py") -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


def _report(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit status {result.returncode}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}"
    )


def _assert_ran(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 0, _report(result)
    assert f"result {expected}" in result.stdout, _report(result)


def _assert_one_error(result: subprocess.CompletedProcess[str]) -> None:
    """One traceback, the caller's: no worker printed one, nothing internal."""
    stderr = result.stderr
    assert result.returncode == 1, _report(result)
    assert stderr.count("Traceback (most recent call last)") == 1, _report(result)
    for leak in ("AttributeError", "bootstrapping phase", "FileNotFoundError"):
        assert leak not in stderr, _report(result)


# -- the missing guard --------------------------------------------------------


def _assert_names_the_guard(
    result: subprocess.CompletedProcess[str], script: Path, line: int
) -> None:
    _assert_one_error(result)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: "), _report(result)
    assert GUARD in last, _report(result)
    assert f"the script {script} runs line {line} " in last, _report(result)
    assert "result" not in result.stdout, _report(result)


@pytest.mark.parametrize(
    ("backend", "method"),
    _quick_first(
        ("mp_pool", "spawn"),
        ("mp_pool", "forkserver"),
        ("joblib", "spawn"),
        ("joblib", "forkserver"),
        ("joblib", "loky_init_main"),
        ("process", "spawn"),
        ("process", "forkserver"),
        ("queue", "spawn"),
        ("queue", "forkserver"),
        ("dask", "spawn"),
        ("dask", "forkserver"),
        ("dask", None),
    ),
)
def test_an_unguarded_script_fails_once_at_its_line(
    backend: str, method: str | None, tmp_path: Path
) -> None:
    source = _source(UNGUARDED, backend, _options(backend, method))
    script = _script(tmp_path, source)
    result = _run([str(script)], tmp_path)
    _assert_names_the_guard(result, script, _line_of(source, "ex = executors.create("))


@pytest.mark.slow
def test_an_unguarded_main_function_fails_at_its_call(tmp_path: Path) -> None:
    source = _source(UNGUARDED_MAIN, "mp_pool", _options("mp_pool", "spawn"))
    script = _script(tmp_path, source)
    result = _run([str(script)], tmp_path)
    _assert_names_the_guard(result, script, _line_of(source, "main()"))


@pytest.mark.slow
def test_an_unguarded_module_run_with_dash_m_fails_at_its_line(tmp_path: Path) -> None:
    source = _source(UNGUARDED, "mp_pool", _options("mp_pool", "forkserver"))
    script = _script(tmp_path, source, "unguarded_module.py")
    result = _run(["-m", "unguarded_module"], tmp_path)
    _assert_names_the_guard(result, script, _line_of(source, "ex = executors.create("))


@pytest.mark.parametrize(
    ("backend", "method"),
    _quick_first(
        ("mp_pool", "spawn"),
        ("mp_pool", "forkserver"),
        ("joblib", "spawn"),
        ("queue", "spawn"),
        ("queue", "forkserver"),
        ("process", "forkserver"),
        ("process", "spawn"),
    ),
)
def test_a_worker_that_reaches_create_exits_silently(
    backend: str, method: str, tmp_path: Path
) -> None:
    # Where the caller cannot be sure, each worker finds it and exits with
    # the code the caller's error names: one error, no worker's traceback.
    source = _source(UNGUARDED_IN_BLOCK, backend, _options(backend, method))
    script = _script(tmp_path, source)
    result = _run([str(script)], tmp_path)
    _assert_one_error(result)
    last = result.stderr.strip().splitlines()[-1]
    assert "exit code 78" in last, _report(result)
    assert GUARD in last, _report(result)
    line = _line_of(source, "    ex = executors.create(")
    assert f"at line {line} of {script}" in last, _report(result)


@pytest.mark.parametrize(
    ("backend", "method", "template"),
    _quick_first(
        ("mp_pool", "spawn", GUARDED),
        ("mp_pool", "forkserver", FROM_THE_GUARD),
        ("mp_pool", "spawn", CONDITIONAL_LINE),
        ("mp_pool", "spawn", EARLY_RETURN),
        ("joblib", "spawn", FROM_THE_GUARD),
        ("joblib", "loky_init_main", GUARDED),
        ("process", "spawn", FROM_THE_GUARD),
        ("queue", "forkserver", FROM_THE_GUARD),
        ("dask", "spawn", GUARDED),
    ),
)
def test_a_guarded_script_runs(
    backend: str, method: str, template: str, tmp_path: Path
) -> None:
    source = _source(template, backend, _options(backend, method))
    result = _run([str(_script(tmp_path, source))], tmp_path)
    _assert_ran(result, "49")


@pytest.mark.slow
def test_a_guarded_module_run_with_dash_m_runs(tmp_path: Path) -> None:
    source = _source(FROM_THE_GUARD, "mp_pool", _options("mp_pool", "forkserver"))
    _script(tmp_path, source, "guarded_module.py")
    _assert_ran(_run(["-m", "guarded_module"], tmp_path), "49")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["process", "mp_pool", "queue"])
def test_an_unguarded_script_runs_with_fork(backend: str, tmp_path: Path) -> None:
    # fork copies the main module: nothing runs it again, nothing to refuse.
    source = _source(UNGUARDED, backend, _options(backend, "fork"))
    _assert_ran(_run([str(_script(tmp_path, source))], tmp_path), "49")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["thread", "inline"])
def test_a_worker_may_create_an_executor_without_processes(
    backend: str, tmp_path: Path
) -> None:
    # A thread pool created by the main module of every worker is wasteful
    # but harmless, and worked before: it is left alone.
    source = _source(GUARDED, "mp_pool", _options("mp_pool", "spawn")).replace(
        "def square", f"helper = executors.create({backend!r})\n\ndef square", 1
    )
    _assert_ran(_run([str(_script(tmp_path, source))], tmp_path), "49")


# -- a main module without a file ---------------------------------------------


NO_FILE_CASES = _quick_first(
    ("mp_pool", "forkserver"),
    ("mp_pool", "spawn"),
    ("process", "spawn"),
    ("process", "forkserver"),
    ("queue", "spawn"),
    ("queue", "forkserver"),
    ("joblib", "spawn"),
    ("joblib", "forkserver"),
    ("joblib", None),
    ("dask", "spawn"),
    ("dask", "forkserver"),
    ("celery", None),
)


@pytest.mark.parametrize(("backend", "method"), NO_FILE_CASES)
def test_a_script_read_from_stdin_runs(
    backend: str, method: str | None, tmp_path: Path
) -> None:
    source = _source(NO_FILE, backend, _options(backend, method))
    result = _run(["-"], tmp_path, stdin=source)
    _assert_ran(result, "[100, 101, 102] -1")
    assert result.stderr == "", _report(result)


@pytest.mark.parametrize(("backend", "method"), NO_FILE_CASES[:3])
def test_a_script_given_with_dash_c_runs(
    backend: str, method: str | None, tmp_path: Path
) -> None:
    # As a notebook's kernel: a __main__ with no __file__.
    source = _source(NO_FILE, backend, _options(backend, method))
    result = _run(["-c", source], tmp_path)
    _assert_ran(result, "[100, 101, 102] -1")
    assert result.stderr == "", _report(result)
