"""Worker processes: every candidate is built and measured outside the caller's process.

A native crash (a segfault or abort inside a converter or runtime) or a hang then costs one row, never
the notebook's kernel: the pool notices a worker that died (its exit signal is in the row) or ran past
``timeout_s`` (it is killed), replaces it and goes on. Each worker is a fresh interpreter running
``nbopt._worker`` (never a fork of a process whose torch / TensorFlow threads already run, and never
multiprocessing's spawn, which re-runs the caller's main script in the child: a script that calls
``nbopt.optimize()`` at top level would start workers forever). Workers stay warm between candidates and
between the studies of one process, and share one ``MeasureGate``: builds may overlap, but latency and
peak memory are measured while nothing else runs, so parallel builds never distort them.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any


class MeasureGate:
    """A readers-writer lock across processes, on two lock files: builds hold ``gate.lock`` shared, a
    measurement holds it exclusively. A measurement first takes ``turnstile``, which every new build passes
    through, so builds that start later wait and a measurement is never starved."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def building(self):
        return _Flock(self.folder, shared=True)

    def measuring(self):
        return _Flock(self.folder, shared=False)


class _Flock:
    def __init__(self, folder: Path, shared: bool):
        self.folder, self.shared = folder, shared
        self.fd: int | None = None

    def __enter__(self):
        import fcntl

        turnstile = os.open(self.folder / "turnstile", os.O_RDWR | os.O_CREAT, 0o600)
        gate = os.open(self.folder / "gate.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(turnstile, fcntl.LOCK_EX)
            if self.shared:  # pass through the turnstile, then share the gate
                fcntl.flock(turnstile, fcntl.LOCK_UN)
                fcntl.flock(gate, fcntl.LOCK_SH)
            else:  # keep the turnstile until the gate is ours alone
                fcntl.flock(gate, fcntl.LOCK_EX)
        finally:
            os.close(turnstile)  # closing releases it
        self.fd = gate
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases its lock
            self.fd = None
        return False


@dataclass
class _Worker:
    process: Any  # subprocess.Popen
    inbox: Connection  # results from the worker
    outbox: Connection  # jobs to the worker
    job: Any = None
    started: float = 0.0
    token: Any = None  # the caller's handle for the job in flight


@dataclass
class Finished:
    """What came back for a job: its result dict, or why the worker could not give one."""

    token: Any
    result: dict | None = None
    error: str = ""  # "the worker died with signal 11 (SIGSEGV) while ..." / "timed out after N s ..."


@dataclass
class WorkerPool:
    size: int
    workers: list[_Worker] = field(default_factory=list)

    def __post_init__(self):
        self.gate_dir = Path(tempfile.mkdtemp(prefix="nbopt-gate-"))  # two empty lock files, removed at exit

    # -- workers ---------------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        child_in, parent_out = os.pipe()  # jobs: the parent writes, the worker reads
        parent_in, child_out = os.pipe()  # results: the worker writes, the parent reads
        # the caller's import path, so that a plug-in backend or a model's own module imports there too
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        process = subprocess.Popen([sys.executable, "-m", "nbopt._worker", str(child_in), str(child_out),
                                    str(self.gate_dir)], pass_fds=(child_in, child_out), env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)  # Ctrl-C in the notebook is the study's to handle
        os.close(child_in)
        os.close(child_out)
        return _Worker(process, Connection(parent_in, writable=False), Connection(parent_out, readable=False))

    @property
    def free(self) -> int:
        return self.size - sum(w.job is not None for w in self.workers)

    def submit(self, job, token) -> None:
        import cloudpickle

        message = cloudpickle.dumps(job)  # first: a job that cannot be pickled leaves no worker marked busy
        self.workers = [w for w in self.workers if w.process.poll() is None or w.job is not None]
        worker = next((w for w in self.workers if w.job is None), None)
        if worker is None:
            if len(self.workers) >= self.size:
                raise RuntimeError("no idle worker: check WorkerPool.free first")
            worker = self._spawn()
            self.workers.append(worker)
        worker.job, worker.token, worker.started = job, token, time.monotonic()
        try:
            worker.outbox.send_bytes(message)
        except OSError:  # the idle worker had died: its row says so on the next wait()
            pass

    # -- results ---------------------------------------------------------------------------------------
    def wait(self, timeout_s: float, poll: float = 0.5) -> list[Finished]:
        """Block until at least one job in flight is done (or failed); returns every one that is."""
        while True:
            done = self.collect(timeout_s)
            busy = [w for w in self.workers if w.job is not None]
            if done or not busy:
                return done
            wait([w.inbox for w in busy], poll)

    def collect(self, timeout_s: float) -> list[Finished]:
        done = []
        for w in self.workers:
            if w.job is not None:
                finished = self._check(w, timeout_s)
                if finished is not None:
                    done.append(finished)
                    w.job, w.token = None, None
        return done

    def _check(self, w: _Worker, timeout_s: float) -> Finished | None:
        import pickle

        if w.inbox.poll():
            try:
                return Finished(w.token, result=pickle.loads(w.inbox.recv_bytes()))  # noqa: S301 - our worker
            except (EOFError, OSError):
                pass  # died while sending: its exit code says how
        code = w.process.poll()
        if code is not None:
            self._discard(w)
            return Finished(w.token, error=_death(code, _what(w.job)))
        if time.monotonic() - w.started > timeout_s:
            self._kill(w)
            return Finished(w.token, error=f"timed out after {timeout_s:g} s while {_what(w.job)} "
                                           "(raise timeout_s=... if it needs longer); the sweep went on")
        return None

    def _kill(self, w: _Worker) -> None:
        w.process.kill()
        w.process.wait(10)
        self._discard(w)

    def _discard(self, w: _Worker) -> None:
        for conn in (w.inbox, w.outbox):
            conn.close()
        self.workers = [x for x in self.workers if x is not w]

    def cancel(self) -> None:
        """Stop every job in flight now (their workers are killed; new ones start on the next submit)."""
        for w in list(self.workers):
            if w.job is not None:
                self._kill(w)

    def close(self) -> None:
        for w in list(self.workers):
            if w.job is None and w.process.poll() is None:
                try:
                    w.outbox.send_bytes(b"")  # the worker's signal to leave
                    w.process.wait(5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if w.process.poll() is None:
                w.process.kill()
                w.process.wait(5)
            self._discard(w)
        shutil.rmtree(self.gate_dir, ignore_errors=True)


def _what(job) -> str:
    from .jobs import PrepareJob

    if isinstance(job, PrepareJob):
        return f"preparing the {job.backend} backend"
    return f"building {job.name}"


def _death(code: int, what: str) -> str:
    if code < 0:
        try:
            how = f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            how = f"signal {-code}"
        if -code == signal.SIGKILL:
            how += ", perhaps killed for memory"
    else:
        how = f"exit code {code}"
    return f"the worker died with {how} while {what}; the sweep went on"


# -- pools are reused by the studies of this process ----------------------------------------------------------
_pools: dict[int, WorkerPool] = {}


def get_pool(size: int) -> WorkerPool:
    pool = _pools.get(size)
    if pool is None:
        pool = _pools[size] = WorkerPool(size)
    return pool


@atexit.register
def _close_pools() -> None:
    for pool in _pools.values():
        pool.close()
