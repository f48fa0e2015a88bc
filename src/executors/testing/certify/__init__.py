"""Certify any ``concurrent.futures.Executor`` against the conformance suite.

``python -m executors.testing certify TARGET`` runs the shipped behaviour
classes of :mod:`executors.testing` against ``TARGET``: a ``module:callable``
that returns an executor (``concurrent.futures:ProcessPoolExecutor``,
``loky:get_reusable_executor``, ``executors:create`` with ``--kwargs``), or
the name of a registered backend. Each test runs in a child process, bounded
in time, so a target that hangs or crashes fails its test, not the run;
the result is a scorecard, on the terminal and with ``--report`` /
``--json`` in files. ``python -m executors.testing compare`` runs the
certification of every peer and of every built-in backend and writes the
side-by-side page, ``docs/peers.md``.

Nothing here is imported by ``import executors``; pytest and the suite are
imported only in the child processes of a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._card import Options, Scorecard, TestResult, missing_dependencies
from ._run import run

__all__ = ["Options", "Scorecard", "TestResult", "certify", "main"]


def certify(options: Options) -> Scorecard:
    """Run a certification; see :class:`Options`. Progress goes to stdout."""
    return run(options)


def _capability_flags(parser: argparse.ArgumentParser) -> None:
    from ..._capabilities import Capabilities

    group = parser.add_argument_group(
        "capabilities of a foreign executor",
        "What the tests expect of the target, one flag per field of "
        "executors.Capabilities. Ignored for an executor of this library, "
        "which declares them. Without a flag, runs_concurrently, "
        "process_isolation, survives_worker_death and retries_lost_tasks are "
        "probed by running a few tasks; the others are assumed (the "
        "stdlib's contract: queued futures cancel; no task control).",
    )
    doc = Capabilities.__doc__ or ""
    for name in Capabilities.__dataclass_fields__:
        flag = name.replace("_", "-")
        match = doc.split(f"{name}:", 1)
        summary = match[1].split(".", 1)[0].split("\n\n")[0] if len(match) > 1 else ""
        group.add_argument(
            f"--{flag}",
            dest=f"cap_{name}",
            action=argparse.BooleanOptionalAction,
            default=None,
            help=" ".join(summary.split())[:150] or None,
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m executors.testing",
        description="The conformance suite of executors, as a command.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cert = commands.add_parser(
        "certify",
        help="run the suite against one executor and print its scorecard",
        description="Run the conformance suite of executors against TARGET, "
        "each test bounded in time in a child process, and print its "
        "scorecard: per test passed, failed (with the reason), not applicable "
        "(with why) or hung.",
        epilog="Exit status: 0 when nothing applicable failed or hung, 1 "
        "otherwise (or when the target could not be created), 2 for a usage "
        "error.",
    )
    cert.add_argument(
        "target",
        help="module:callable returning a concurrent.futures.Executor, "
        "or a registered backend name",
    )
    cert.add_argument(
        "--kwargs",
        default="{}",
        help="JSON object of keyword arguments for TARGET, "
        'e.g. \'{"backend": "queue"}\'',
    )
    cert.add_argument(
        "--workers",
        type=int,
        default=2,
        help="max_workers passed to TARGET when it takes it (default: 2)",
    )
    cert.add_argument("--label", default="", help="the name on the scorecard")
    cert.add_argument(
        "--topic",
        action="append",
        default=[],
        help="run only this topic (repeatable); topics: " + ", ".join(_topics()),
    )
    cert.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds each test may take before it counts as hung (default: 60)",
    )
    cert.add_argument(
        "--max-time",
        type=float,
        default=1800.0,
        help="seconds the whole run may take; tests left are 'not run' (default: 1800)",
    )
    cert.add_argument("--report", type=Path, help="write a Markdown scorecard here")
    cert.add_argument("--json", type=Path, help="write the results as JSON here")
    cert.add_argument("-v", "--verbose", action="store_true", help="a line per test")
    _capability_flags(cert)

    comp = commands.add_parser(
        "compare",
        help="certify every peer and built-in backend; write docs/peers.md",
    )
    from ._compare import add_arguments

    add_arguments(comp)
    return parser


def _topics() -> list[str]:
    from ._suite import TOPICS

    return TOPICS


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "compare":
        from ._compare import main as compare_main

        return compare_main(args)
    missing = missing_dependencies()
    if missing:
        print(
            "certify needs the test extra: pip install 'executors[test]' "
            f"(missing: {', '.join(missing)})",
            file=sys.stderr,
        )
        return 2
    try:
        kwargs: Any = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        print(f"--kwargs is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(kwargs, dict):
        print("--kwargs must be a JSON object", file=sys.stderr)
        return 2
    unknown = set(args.topic) - set(_topics())
    if unknown:
        print(
            f"unknown topic {sorted(unknown)}; topics: {', '.join(_topics())}",
            file=sys.stderr,
        )
        return 2
    given = {
        key.removeprefix("cap_"): value
        for key, value in vars(args).items()
        if key.startswith("cap_") and value is not None
    }
    options = Options(
        target=args.target,
        kwargs=kwargs,
        workers=args.workers,
        given=given,
        topics=args.topic,
        timeout=args.timeout,
        max_time=args.max_time,
        label=args.label,
        verbose=args.verbose,
    )
    card = certify(options)
    from ._report import markdown, summary

    print(summary(card))
    if args.report:
        args.report.write_text(markdown(card))
        print(f"scorecard written to {args.report}")
    if args.json:
        args.json.write_text(json.dumps(card.to_json(), indent=1) + "\n")
        print(f"results written to {args.json}")
    return 0 if card.ok else 1
