"""The conformance suite, shipped so that any backend can prove the contract.

A backend's test module inherits the behaviour classes and provides one
fixture, ``executor_factory``: a callable taking keyword options and returning
a new executor. See ``docs/plugins.md``.

Needs the ``test`` extra (pytest, hypothesis, psutil).
"""

from __future__ import annotations

from ._support import BOUND, ContractBase, child_processes, wait_for_no_new_children
from .contract import (
    CrashContract,
    InitializerContract,
    MapContract,
    ShutdownContract,
    SubmitContract,
)

__all__ = [
    "BOUND",
    "ContractBase",
    "CrashContract",
    "InitializerContract",
    "MapContract",
    "ShutdownContract",
    "SubmitContract",
    "child_processes",
    "wait_for_no_new_children",
]
