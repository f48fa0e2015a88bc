"""Smoke tests of the benchmark suite (``python -m executors.bench``).

They check that every backend and raw library is measured, that the results
the workloads return are correct, that hung and crashing measurements are
reported and their processes killed: never how fast anything is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import executors
from _programs import run_python
from executors.bench._config import make_config
from executors.bench._workloads import WORKLOADS

pytestmark = pytest.mark.slow

RAW = [
    "raw.ProcessPoolExecutor",
    "raw.Pool",
    "raw.joblib",
    "raw.dask",
    "raw.celery",
    "raw.ThreadPoolExecutor",
    "raw.Process",
]
# A full --quick run is well under a minute on an idle 2-core machine; the
# bound is generous because CI machines are shared.
QUICK_BOUND = 600


def _processes_marked(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker``.

    Every process a benchmark run starts inherits its environment, even
    after it has been re-parented, so this finds leftovers anywhere.
    """
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("EXECUTORS_BENCH_TEST") == marker:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _bench(
    args: list[str], cwd: Path, timeout: float = QUICK_BOUND
) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """Run the benchmark CLI; return its outcome and any processes it left."""
    marker = uuid.uuid4().hex
    env = {**os.environ, "EXECUTORS_BENCH_TEST": marker}
    done = subprocess.run(
        [sys.executable, "-m", "executors.bench", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    deadline = time.monotonic() + 15
    while (left := _processes_marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return done, left


def _records(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["target"], r["workload"]): r for r in report["results"]}


def _write_module(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")


def _quick_run(
    tmp: Path,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], list[int]]:
    # One repeat per figure: the checks below prove that every target runs
    # every workload, checks its results and is reported, which one sample
    # shows as well as three; repeats only steady the figures.
    done, left = _bench(
        [
            "--quick",
            "--repeats",
            "1",
            "--json",
            str(tmp / "out.json"),
            "--plot",
            str(tmp / "out.png"),
        ],
        cwd=tmp,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp / "out.json").read_text(encoding="utf-8"))
    return done, report, left


# One test, not one per check: the run they check takes a minute, and a
# module fixture shared by several tests is run again on every xdist worker
# that gets one of them.
@pytest.mark.timeout(QUICK_BOUND + 60)
def test_quick_run_measures_and_reports_every_target(tmp_path: Path) -> None:
    done, report, left = _quick_run(tmp_path)
    _check_lists_every_backend_and_raw_library(done, report)
    _check_results_are_correct(report)
    _check_reports_ratios_versions_and_a_chart(done, report, tmp_path)
    _check_leaves_no_process_behind(left, report)


def _check_lists_every_backend_and_raw_library(
    done: subprocess.CompletedProcess[str], report: dict[str, Any]
) -> None:
    targets = {t["name"]: t for t in report["targets"]}
    for info in executors.list_backends():
        assert info.name in targets
        assert targets[info.name]["available"] == info.available
        assert f"`{info.name}`" in done.stdout or f"**{info.name}**" in done.stdout
    for name in [*RAW, "serial"]:
        assert name in targets
        if targets[name]["available"]:
            assert name in done.stdout
        else:
            assert targets[name]["reason"]
    config = make_config(quick=True)
    for name in report["workloads"]:
        assert f"## {WORKLOADS[name].title(config)}" in done.stdout


def _check_results_are_correct(report: dict[str, Any]) -> None:
    records = _records(report)
    available = [t for t in report["targets"] if t["available"]]
    for target in available:
        for workload in report["workloads"]:
            record = records[(target["name"], workload)]
            assert record["status"] in ("ok", "unsupported"), record
            if record["status"] == "unsupported":
                assert workload in target["unsupported"] or record["message"]
                continue
            # Every workload compares what came back with what was expected
            # before it reports a figure.
            assert record["checked"] is True
            headline = WORKLOADS[workload].headline.key
            assert record["summary"][headline]["n"] >= 1
            assert all(v >= 0 for v in record["samples"][headline])
    # Every backend of ours runs every workload but --func.
    for target in available:
        if target["kind"] == "ours":
            for workload in report["workloads"]:
                assert records[(target["name"], workload)]["status"] == "ok"


def _check_reports_ratios_versions_and_a_chart(
    done: subprocess.CompletedProcess[str], report: dict[str, Any], tmp: Path
) -> None:
    assert report["quick"] is True
    assert report["versions"]["executors"] == executors.__version__
    assert report["machine"]["usable_cpus"] >= 1
    records = _records(report)
    assert "default vs raw default" in records[("process", "tiny")]["ratios"]
    assert records[("process", "cpu")]["speedup_vs_serial"] > 0
    assert "## Performance goals" in done.stdout
    # Rows say what they measure, not which tracker issue asked for them.
    assert "| what it checks | figure | measured | goal | met |" in done.stdout
    assert "| #" not in done.stdout
    assert all("area" in goal and "issue" not in goal for goal in report["goals"])
    assert (tmp / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _check_leaves_no_process_behind(left: list[int], report: dict[str, Any]) -> None:
    assert left == []
    for target in report["targets"]:
        assert not any("were killed" in note for note in target["notes"]), target


@pytest.mark.timeout(300)
def test_own_function_runs_on_every_target_with_the_same_results(
    tmp_path: Path,
) -> None:
    _write_module(
        tmp_path,
        "benchwork",
        """
        def square(x):
            return x * x

        def inputs():
            return range(40)
        """,
    )
    done, left = _bench(
        [
            "--quick",
            "--backends",
            "thread,process,inline",
            "--workloads",
            "func",
            "--func",
            "benchwork:square",
            "--inputs",
            "benchwork:inputs",
            "--json",
            str(tmp_path / "out.json"),
        ],
        cwd=tmp_path,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert left == []
    report = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    records = _records(report)
    # The counterparts and the serial baseline come along for the ratios.
    expected = [
        "thread",
        "process",
        "inline",
        "raw.ProcessPoolExecutor",
        "raw.ThreadPoolExecutor",
        "serial",
    ]
    digests = set()
    for name in expected:
        record = records[(name, "func")]
        assert record["status"] == "ok", record
        assert record["params"]["items"] == 40
        digests.add(record["params"]["digest"])
    assert len(digests) == 1
    assert records[("process", "func")]["speedup_vs_serial"] > 0
    assert "results differ" not in done.stdout


@pytest.mark.timeout(300)
def test_hung_backend_is_reported_and_killed(tmp_path: Path) -> None:
    _write_module(
        tmp_path,
        "benchhang",
        """
        import time

        def hang(x):
            time.sleep(3600)

        inputs = [1, 2, 3]
        """,
    )
    began = time.monotonic()
    done, left = _bench(
        [
            "--quick",
            "--backends",
            "process,raw.Pool",
            "--no-counterparts",
            "--workloads",
            "func",
            "--func",
            "benchhang:hang",
            "--inputs",
            "benchhang:inputs",
            "--timeout",
            "8",
            "--json",
            str(tmp_path / "out.json"),
        ],
        cwd=tmp_path,
        timeout=240,
    )
    assert time.monotonic() - began < 200
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    records = _records(report)
    assert [t["name"] for t in report["targets"]] == ["process", "raw.Pool"]
    for name in ("process", "raw.Pool"):
        assert records[(name, "func")]["status"] == "hung"
        assert records[(name, "func")]["message"] == "hung after 8 s"
    assert "hung after 8 s" in done.stdout
    # The workers sleeping in the hung tasks were killed with their group.
    assert left == []


@pytest.mark.timeout(300)
def test_crash_of_the_measurement_is_reported(tmp_path: Path) -> None:
    _write_module(
        tmp_path,
        "benchcrash",
        """
        import os

        def die(x):
            os._exit(3)

        inputs = [1]
        """,
    )
    # inline runs the task in the measurement process itself, so the
    # measurement process dies.
    done, left = _bench(
        [
            "--quick",
            "--backends",
            "inline",
            "--no-counterparts",
            "--workloads",
            "func",
            "--func",
            "benchcrash:die",
            "--inputs",
            "benchcrash:inputs",
            "--json",
            str(tmp_path / "out.json"),
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 1
    assert left == []
    report = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    record = _records(report)[("inline", "func")]
    assert record["status"] == "crashed"
    assert "exit code 3" in record["message"]


@pytest.mark.timeout(120)
def test_task_errors_are_reported_not_measured(tmp_path: Path) -> None:
    _write_module(
        tmp_path,
        "bencherror",
        """
        def fail(x):
            raise ValueError(f"bad item {x}")

        inputs = [1, 2]
        """,
    )
    done, left = _bench(
        [
            "--quick",
            "--backends",
            "thread",
            "--no-counterparts",
            "--workloads",
            "func",
            "--func",
            "bencherror:fail",
            "--inputs",
            "bencherror:inputs",
            "--json",
            str(tmp_path / "out.json"),
        ],
        cwd=tmp_path,
        timeout=100,
    )
    assert done.returncode == 1
    assert left == []
    report = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    record = _records(report)[("thread", "func")]
    assert record["status"] == "error"
    assert "ValueError: bad item 1" in record["message"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "nosuch"], "unknown target 'nosuch'"),
        (["--workloads", "nosuch"], "unknown workload 'nosuch'"),
        (["--func", "m:f"], "--func and --inputs go together"),
        (["--workloads", "func"], "the func workload needs --func"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--timeout", "-1"], "--timeout must be a positive number"),
    ],
)
def test_bad_arguments_exit_with_a_message(args: list[str], message: str) -> None:
    done = run_python("-m", "executors.bench", *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_plot_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    # A real failed import: the module is blocked in a fresh interpreter.
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        "from executors.bench.__main__ import main; "
        "sys.exit(main(['--plot', 'out.png', '--list']))"
    )
    done = run_python("-c", code, cwd=tmp_path)
    assert done.returncode == 2
    assert 'pip install "executors[plot]"' in done.stderr
    assert not (tmp_path / "out.png").exists()


def test_list_names_every_target_and_workload() -> None:
    done = run_python("-m", "executors.bench", "--list")
    assert done.returncode == 0
    for info in executors.list_backends():
        assert info.name in done.stdout
    for name in [*RAW, "serial", *WORKLOADS]:
        assert name in done.stdout


def test_each_raw_library_is_measured_next_to_its_backend() -> None:
    from executors.bench.__main__ import measurement_order
    from executors.bench._targets import discover_targets

    specs = [s for s in discover_targets(2, None) if s.available]
    names = [s.name for s in measurement_order(specs)]
    assert sorted(names) == sorted(s.name for s in specs)
    for spec in specs:
        if spec.kind == "ours" and spec.counterpart in names:
            first = min(
                names.index(s.name) for s in specs if s.counterpart == spec.counterpart
            )
            # The counterpart follows the first backend compared against it.
            assert names.index(spec.counterpart) == first + 1


def test_rounds_pool_the_samples_of_every_round(tmp_path: Path) -> None:
    done, left = _bench(
        [
            "--quick",
            "--backends",
            "inline,thread",
            "--no-counterparts",
            "--workloads",
            "roundtrip",
            "--repeats",
            "2",
            "--rounds",
            "2",
            "--json",
            str(tmp_path / "out.json"),
        ],
        cwd=tmp_path,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "round 2 of 2" in done.stderr
    assert "over 2 rounds" in done.stdout
    report = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    records = _records(report)
    assert {t["name"] for t in report["targets"]} == {"inline", "thread"}
    for name in ("inline", "thread"):
        record = records[(name, "roundtrip")]
        assert record["status"] == "ok"
        # Each round times its own calls (200 with --quick); both are kept.
        assert len(record["samples"]["us"]) == 2 * record["params"]["calls"]
    assert left == []


def test_merge_rounds_notes_a_round_that_failed() -> None:
    from executors.bench._runner import TargetRun, merge_rounds
    from executors.bench._targets import TargetSpec

    spec = TargetSpec("x", "ours", "a target", 2)
    good = {"workload": "tiny", "status": "ok", "samples": {"a": [1.0]}, "notes": []}
    bad = {"workload": "tiny", "status": "hung", "message": "hung after 8 s"}
    merged = merge_rounds(
        [TargetRun(spec, [good]), TargetRun(spec, [bad]), TargetRun(spec, [good])]
    )
    (record,) = merged.records
    assert record["samples"] == {"a": [1.0, 1.0]}
    assert record["notes"] == ["one round of 3: hung: hung after 8 s"]
    assert merge_rounds([TargetRun(spec, [bad])]).records == [bad]


@pytest.mark.timeout(400)
def test_recycle_compares_recycling_with_none_and_bounds_the_stdlib_hang(
    tmp_path: Path,
) -> None:
    # ProcessPoolExecutor(max_tasks_per_child=) hangs on some CPython
    # releases (gh-115634): the run reports it rather than hang, and kills it.
    done, left = _bench(
        [
            "--quick",
            "--repeats",
            "1",
            "--backends",
            "process,mp_pool,thread,raw.ProcessPoolExecutor,raw.Pool",
            "--no-counterparts",
            "--workloads",
            "recycle",
            "--json",
            str(tmp_path / "out.json"),
        ],
        cwd=tmp_path,
        timeout=360,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    records = _records(report)
    for name in ("process", "mp_pool", "raw.Pool"):
        record = records[(name, "recycle")]
        assert record["status"] == "ok", record
        samples = record["samples"]
        assert len(samples["recycling"]) == len(samples["plain"]) == 1
        ratio = samples["recycling"][0] / samples["plain"][0]
        assert samples["ratio"] == [pytest.approx(ratio)]
        assert record["params"]["max_tasks_per_child"] == 25
    # thread has no max_tasks_per_child: not measured, and said why.
    assert records[("thread", "recycle")]["status"] == "unsupported"
    raw = records[("raw.ProcessPoolExecutor", "recycle")]
    assert raw["status"] == "ok", raw
    if raw["params"].get("hung"):
        assert raw["samples"]["recycling"] == []
        assert any("gh-115634" in note for note in raw["notes"])
    else:
        assert len(raw["samples"]["recycling"]) == 1
    assert "Recycling: 500 tasks of 1 ms" in done.stdout
    assert left == []


def test_measurement_child_imports_no_workload_before_it_runs() -> None:
    # Under spawn and forkserver every worker of a measured pool imports
    # the child module as its __main__: a recycling pool starts one every
    # few tasks, and would be measured importing the benchmark.
    code = (
        "import sys, executors.bench._child; "
        "print(sorted(m for m in sys.modules if m.startswith('executors.bench.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "['executors.bench._child']"
