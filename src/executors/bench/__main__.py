"""Command line of the benchmark suite: ``python -m executors.bench``.

Also installed as the ``executors-bench`` console script. See
``docs/benchmarks.md`` for how to read its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from ._config import make_config
from ._runner import Runner, TargetRun, merge_rounds
from ._targets import TargetSpec, discover_targets
from ._workloads import WORKLOADS

__all__ = ["main"]

_EPILOG = """\
examples:
  python -m executors.bench --quick
  python -m executors.bench --json bench.json --plot bench.png
  python -m executors.bench --backends queue,mp_pool --workloads tiny,roundtrip
  python -m executors.bench --func mymodule:work --inputs mymodule:inputs

Targets: our backends by name, the raw libraries (raw.ProcessPoolExecutor,
raw.Pool, raw.joblib, raw.dask, raw.ThreadPoolExecutor, raw.Process) and
'serial'; the groups 'ours' and 'raw' select all of a kind. The raw library
each selected backend wraps (and 'serial', for speedups) is added unless
--no-counterparts is given.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="executors-bench",
        description=(
            "Measure every executors backend and the raw libraries they wrap, "
            "side by side, on this machine."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="scaled-down sizes: the whole run takes well under a minute",
    )
    parser.add_argument(
        "--backends",
        metavar="A,B",
        help="comma-separated targets to measure (default: all available)",
    )
    parser.add_argument(
        "--workloads",
        metavar="X,Y",
        help="comma-separated workloads, or 'all' (default: all but func, "
        f"and tiny-large with --quick): {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--no-counterparts",
        action="store_true",
        help="measure exactly --backends, without adding their raw libraries",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="workers per pool (default: 2)"
    )
    parser.add_argument(
        "--repeats", type=int, help="repeats per figure (default: 5, --quick: 3)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="measure every target this many times in turn, splitting the "
        "repeats and the budget between the rounds, so a drift of the "
        "machine's speed during the run weighs on every target alike "
        "(default: 1)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="bound on one measurement; past it the target is reported as hung "
        "and its processes are killed (default: 300, --quick: 30)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="time one measurement may spend repeating itself; slow targets get "
        "fewer repeats or items (default: 30, --quick: 1.5)",
    )
    parser.add_argument(
        "--start-method",
        choices=["fork", "spawn", "forkserver"],
        help="start method for every process pool, ours and raw (default: "
        "ours keep theirs, raw pools use the same as ours: forkserver)",
    )
    parser.add_argument(
        "--func", metavar="MODULE:CALLABLE", help="your own function to map"
    )
    parser.add_argument(
        "--inputs",
        metavar="MODULE:ITERABLE",
        help="its inputs: an iterable, or a callable that returns one",
    )
    parser.add_argument("--json", metavar="PATH", help="write every raw figure here")
    parser.add_argument(
        "--plot", metavar="PATH", help='draw a PNG chart (needs "executors[plot]")'
    )
    parser.add_argument(
        "--list", action="store_true", help="list targets and workloads, then exit"
    )
    return parser


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _select_targets(
    specs: list[TargetSpec], wanted: list[str], workloads: list[str], exact: bool
) -> list[TargetSpec]:
    by_name = {s.name.lower(): s for s in specs}
    if not wanted:
        return specs
    chosen: dict[str, TargetSpec] = {}
    for item in wanted:
        key = item.lower()
        if key in ("ours", "raw"):
            kind = "ours" if key == "ours" else "raw"
            chosen.update({s.name: s for s in specs if s.kind == kind})
        elif key in by_name:
            chosen[by_name[key].name] = by_name[key]
        else:
            names = ", ".join(s.name for s in specs)
            raise ValueError(
                f"unknown target {item!r}; choose from: {names} (or 'ours', 'raw')"
            )
    if not exact:
        extra = {s.counterpart for s in chosen.values() if s.counterpart}
        if {"cpu", "func"} & set(workloads):
            extra.add("serial")
        for name in extra:
            spec = by_name.get(name.lower())
            if spec is not None:
                chosen.setdefault(spec.name, spec)
    # Keep the canonical order: ours, raw, baseline.
    return [s for s in specs if s.name in chosen]


def _select_workloads(wanted: list[str], has_func: bool, quick: bool) -> list[str]:
    if wanted == ["all"]:
        return [n for n, w in WORKLOADS.items() if w.in_default or has_func]
    if not wanted:
        return [
            n
            for n, w in WORKLOADS.items()
            if (w.in_default or has_func) and (w.in_quick or not quick)
        ]
    unknown = [n for n in wanted if n not in WORKLOADS]
    if unknown:
        raise ValueError(
            f"unknown workload {unknown[0]!r}; choose from: {', '.join(WORKLOADS)}"
        )
    return [n for n in WORKLOADS if n in wanted]


def measurement_order(specs: list[TargetSpec]) -> list[TargetSpec]:
    """Each raw library right after the first backend compared against it.

    The speed of this kind of machine drifts by a third over minutes; a
    ratio is only as good as the closeness in time of its two figures.
    """
    raw = {spec.name: spec for spec in specs if spec.kind != "ours"}
    ordered: list[TargetSpec] = []
    for spec in specs:
        if spec.kind != "ours":
            continue
        ordered.append(spec)
        counterpart = raw.pop(spec.counterpart or "", None)
        if counterpart is not None:
            ordered.append(counterpart)
    return ordered + list(raw.values())


def calibrate(seconds: float) -> int:
    """Loop count of :func:`executors.bench._tasks.burn` taking ``seconds`` here."""
    from ._tasks import burn

    loops = 100_000
    per_loop = min(burn(loops)[0] for _ in range(3)) / loops
    return max(1_000, int(seconds / max(per_loop, 1e-9)))


def _list(specs: list[TargetSpec]) -> None:
    print("targets:")
    for spec in specs:
        state = "" if spec.available else f"  [unavailable: {spec.reason}]"
        print(f"  {spec.name:<24} {spec.kind:<8} {spec.summary}{state}")
    print("workloads:")
    for name, workload in WORKLOADS.items():
        extra = "" if workload.in_default else "  [with --func/--inputs]"
        print(f"  {name:<11} {workload.title(make_config(quick=False))}{extra}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the exit status.

    0: everything was measured; 1: a measurement hung, crashed or returned
    wrong results (the report says which); 2: bad arguments; 130: interrupted.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for option in ("timeout", "budget"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            parser.error(f"--{option} must be a positive number of seconds")
    if bool(args.func) != bool(args.inputs):
        parser.error("--func and --inputs go together")
    if args.plot:
        from ._plot import check_matplotlib

        try:
            check_matplotlib()
        except ImportError as exc:
            parser.error(str(exc))

    specs = discover_targets(args.workers, args.start_method)
    if args.list:
        _list(specs)
        return 0
    try:
        workloads = _select_workloads(
            _split(args.workloads), bool(args.func), args.quick
        )
        chosen = _select_targets(
            specs, _split(args.backends), workloads, args.no_counterparts
        )
    except ValueError as exc:
        parser.error(str(exc))
    if "func" in workloads and not args.func:
        parser.error("the func workload needs --func MODULE:CALLABLE and --inputs")

    config = make_config(
        quick=args.quick,
        workers=args.workers,
        repeats=args.repeats,
        rounds=args.rounds,
        bound=args.timeout,
        budget=args.budget,
        start_method=args.start_method,
        func=args.func,
        inputs=args.inputs,
        cwd=os.getcwd(),
    )
    from ._machine import machine_info
    from ._report import Results

    machine = machine_info()
    started = time.time()
    if "cpu" in workloads:
        config.cpu_loops = calibrate(config.cpu_seconds)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    available = [s for s in chosen if s.available]
    say(
        f"executors-bench: {len(available)} targets x {len(workloads)} workloads"
        f"{' (--quick)' if config.quick else ''}; each measurement bounded at "
        f"{config.bound:.0f} s"
    )
    runner = Runner(config.one_round(), say)
    rounds: dict[str, list[TargetRun]] = {}
    interrupted = False
    try:
        for number in range(1, config.rounds + 1):
            if config.rounds > 1:
                say(f"round {number} of {config.rounds}")
            for spec in measurement_order(available):
                rounds.setdefault(spec.name, []).append(
                    runner.run_target(spec, workloads)
                )
    except KeyboardInterrupt:
        # The runner has killed the measurement in progress.
        interrupted = True
        say("interrupted: reporting what was measured")

    # Reported in the order the targets were chosen, not measured.
    runs = [merge_rounds(rounds[s.name]) for s in available if s.name in rounds]
    results = Results(
        config=config,
        targets=chosen,
        runs=runs,
        workloads=workloads,
        command=[
            "python",
            "-m",
            "executors.bench",
            *(sys.argv[1:] if argv is None else argv),
        ],
        started=started,
        duration=time.time() - started,
        machine=machine,
        interrupted=interrupted,
    )
    sys.stdout.write(results.markdown())
    sys.stdout.flush()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results.to_json(), f, indent=1)
            f.write("\n")
        say(f"wrote {args.json}")
    if args.plot:
        from ._plot import plot

        try:
            plot(results, args.plot)
            say(f"wrote {args.plot}")
        except ValueError as exc:
            say(f"no plot: {exc}")
    if interrupted:
        return 130
    return 1 if results.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
