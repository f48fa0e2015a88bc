"""``python -m executors.testing compare``: every peer's scorecard, side by side.

Certifies each target of :data:`PEERS` (the stdlib pools, loky, pebble,
Dask's ``Client.get_executor()``, then every built-in backend), each in its
own ``certify`` process, keeps each run's JSON in ``--json-dir``, and writes
the page (``docs/peers.md``) from them. A run whose JSON is already in the
directory is not repeated unless ``--rerun``: an interrupted regeneration
goes on where it stopped, and runs made in parallel by hand (each with
``certify ... --json DIR/LABEL.json``) are rendered together.
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._card import Scorecard

__all__ = ["PEERS", "Peer", "add_arguments", "main", "page"]


@dataclass(frozen=True)
class Peer:
    """One column of the page: a label and how to certify it."""

    label: str
    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()

    def command(self, json_path: Path, timeout: float, max_time: float) -> list[str]:
        """The ``certify`` command line of this column."""
        cmd = [
            sys.executable,
            "-m",
            "executors.testing",
            "certify",
            self.target,
            "--label",
            self.label,
            "--json",
            str(json_path),
            "--timeout",
            str(timeout),
            "--max-time",
            str(max_time),
            *self.flags,
        ]
        if self.kwargs:
            cmd += ["--kwargs", json.dumps(self.kwargs)]
        return cmd


#: The columns of docs/peers.md, in order.
PEERS = [
    Peer("stdlib process", "concurrent.futures:ProcessPoolExecutor"),
    Peer("stdlib thread", "concurrent.futures:ThreadPoolExecutor"),
    Peer("loky", "loky:get_reusable_executor"),
    Peer("pebble", "executors.testing.adapters:PebbleExecutor"),
    Peer("Dask get_executor", "executors.testing.adapters:DaskClientExecutor"),
    Peer("process", "process"),
    Peer("mp_pool", "mp_pool"),
    Peer("queue", "queue"),
    Peer("joblib", "joblib"),
    # As the project's own suite runs it: a warm forkserver starts workers
    # in a fraction of spawn's time, and most tests start a new cluster.
    Peer("dask", "dask", {"mp_context": "forkserver"}),
    Peer("celery", "celery"),
    Peer("thread", "thread"),
    Peer("inline", "inline"),
]


def _json_name(label: str) -> str:
    return label.replace(" ", "_") + ".json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``compare``."""
    parser.add_argument(
        "--json-dir",
        type=Path,
        default=Path("peers-runs"),
        help="where each run's JSON is kept (default: ./peers-runs)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/peers.md"),
        help="the page to write (default: docs/peers.md)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="certify only this column (repeatable); columns: "
        + ", ".join(p.label for p in PEERS),
    )
    parser.add_argument(
        "--rerun", action="store_true", help="certify again even if its JSON exists"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="write the page from the JSON files present; certify nothing",
    )
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--max-time", type=float, default=2400.0)


def _adapters_source() -> str:
    from .. import adapters

    return inspect.getsource(adapters)


def page(cards: list[Scorecard], missing: list[Peer]) -> str:
    """The whole peers page."""
    from ._report import comparison

    intro = """# Peers, measured

Every column is one run of `python -m executors.testing certify` against one
executor: the shipped conformance suite, each test bounded in time, in a
child process that a hang or a crash cannot take down. A cell is *pass*,
**FAIL** or **HUNG** (the reason follows each table), *n/a* (the test
needs a capability the target does not have, or this library's API beyond
the stdlib's `Executor`: point at the cell for which), or *not run* (the
run reached its time bound first). Nothing here is written by hand.

The property-based tests run with a fixed seed, so each run draws the same
examples. The *machine* in the versions says where the runs were made. Each
wait in the suite is bounded at 15 s; on a machine shared with other work
(as these runs were: a few at a time, on 2 cores) a row that failed on a
timeout may pass on a quiet one, and the reason given is always the test's
own message.

The first five columns are peers; the others are this library's backends.
Foreign executors get no special treatment: their capabilities are probed
by running a few tasks (does a task run in another process, does the pool
survive a worker that calls `os._exit`?), and a test is judged against what
was probed, exactly as a backend is judged against what it declares.
How to regenerate the page, and the two adapters, are at its end.
"""
    outro = f"""## Regenerate it

```bash
pip install -e ".[all,test,peers]"
python -m executors.testing compare --json-dir peers-runs --out docs/peers.md
```

Each column takes minutes (the Dask and Celery ones the longest); runs whose
JSON is already in `--json-dir` are kept, so an interrupted regeneration
goes on where it stopped. One column, with its own Markdown scorecard:

```bash
python -m executors.testing certify concurrent.futures:ThreadPoolExecutor \\
    --report out.md
```

## The adapters

pebble's `ProcessPool` and Dask's `Client` are not `concurrent.futures`
executors themselves, so each gets the smallest adapter that makes it one
(`executors.testing.adapters`, in full):

```python
{_adapters_source().rstrip()}
```
"""
    if missing:
        intro += "\n## Not measured\n\n"
        intro += "These columns have no run in this version of the page:\n\n"
        intro += "".join(f"* {p.label} (`{p.target}`)\n" for p in missing)
    return comparison(cards, intro, outro)


def main(args: argparse.Namespace) -> int:
    """Run ``compare``; see the module docstring."""
    json_dir: Path = args.json_dir
    json_dir.mkdir(parents=True, exist_ok=True)
    unknown = set(args.only) - {p.label for p in PEERS}
    if unknown:
        print(f"unknown columns: {sorted(unknown)}", file=sys.stderr)
        return 2
    status = 0
    if not args.render_only:
        for peer in PEERS:
            if args.only and peer.label not in args.only:
                continue
            path = json_dir / _json_name(peer.label)
            if path.exists() and not args.rerun:
                print(f"{peer.label}: kept {path}")
                continue
            print(f"== {peer.label}", flush=True)
            code = subprocess.call(peer.command(path, args.timeout, args.max_time))
            status = max(status, min(code, 1))
    cards: list[Scorecard] = []
    missing: list[Peer] = []
    for peer in PEERS:
        path = json_dir / _json_name(peer.label)
        if path.exists():
            cards.append(Scorecard.from_json(json.loads(path.read_text())))
        else:
            missing.append(peer)
    args.out.write_text(page(cards, missing))
    print(f"{args.out} written: {len(cards)} columns, {len(missing)} missing")
    return status
