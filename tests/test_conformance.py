"""The contract, checked on every backend (see executors.testing)."""

from __future__ import annotations

from executors.testing import (
    CallbackContract,
    CrashContract,
    InitializerContract,
    MapContract,
    ReferenceContract,
    ShutdownContract,
    SubmitContract,
    TaskControlContract,
)


class TestSubmit(SubmitContract):
    pass


class TestMap(MapContract):
    pass


class TestShutdown(ShutdownContract):
    pass


class TestInitializer(InitializerContract):
    pass


class TestCrash(CrashContract):
    pass


class TestCallbacks(CallbackContract):
    pass


class TestReferences(ReferenceContract):
    pass


class TestTaskControl(TaskControlContract):
    pass
