"""A fake backend whose recipes crash or hang the way a converter's native code can: for the worker tests.

fp16 works; int8-dynamic segfaults; prune-structured aborts; int4-weight-only hangs; int8-weight-only
raises. Registered as "crashy" by tests/test_workers.py.
"""
import os
import signal
import time

from fake_backend import FakeBackend, FakeModel, _fp16

from nbopt.backends.base import Artifact, Context


class CrashyBackend(FakeBackend):
    name = "crashy"


CrashyBackend.recipe("fp16")(_fp16)


@CrashyBackend.recipe("int8-dynamic")
def _segfault(backend, prepared: FakeModel, params: dict, ctx: Context) -> Artifact:
    os.kill(os.getpid(), signal.SIGSEGV)


@CrashyBackend.recipe("prune-structured")
def _abort(backend, prepared: FakeModel, params: dict, ctx: Context) -> Artifact:
    os.abort()


@CrashyBackend.recipe("int4-weight-only")
def _hang(backend, prepared: FakeModel, params: dict, ctx: Context) -> Artifact:
    time.sleep(3600)


@CrashyBackend.recipe("int8-weight-only")
def _raise(backend, prepared: FakeModel, params: dict, ctx: Context) -> Artifact:
    raise RuntimeError("the converter said no")
