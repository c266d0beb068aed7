"""Worker processes: every candidate is built and measured outside the caller's process.

A native crash (a segfault or abort inside a converter or runtime) or a hang then costs one row, never
the notebook's kernel: the pool notices a worker that died (its exit signal is in the row) or ran past
``timeout_s`` (it is killed), replaces it and goes on. Workers are started with ``spawn`` (never a plain
fork of a process whose torch / TensorFlow threads already run), stay warm between candidates and between
studies of the same process, and share one ``MeasureGate``: builds may overlap, but latency and peak memory
are measured while nothing else runs, so parallel builds never distort them.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

# -- the gate: builds in parallel, each measurement alone ---------------------------------------------------


class MeasureGate:
    """A readers-writer lock across processes: builds share it, a measurement takes it alone (and new
    builds wait while a measurement is pending, so measurements are never starved)."""

    def __init__(self, ctx):
        self._cond = ctx.Condition()
        self._builders = ctx.Value("i", 0, lock=False)
        self._measuring = ctx.Value("i", 0, lock=False)
        self._pending = ctx.Value("i", 0, lock=False)

    def building(self):
        return _Hold(self._enter_build, self._exit_build)

    def measuring(self):
        return _Hold(self._enter_measure, self._exit_measure)

    def _enter_build(self):
        with self._cond:
            while self._measuring.value or self._pending.value:
                self._cond.wait()
            self._builders.value += 1

    def _exit_build(self):
        with self._cond:
            self._builders.value -= 1
            self._cond.notify_all()

    def _enter_measure(self):
        with self._cond:
            self._pending.value += 1
            while self._measuring.value or self._builders.value:
                self._cond.wait()
            self._pending.value -= 1
            self._measuring.value = 1

    def _exit_measure(self):
        with self._cond:
            self._measuring.value = 0
            self._cond.notify_all()


class _Hold:
    def __init__(self, enter: Callable, leave: Callable):
        self._enter, self._leave = enter, leave

    def __enter__(self):
        self._enter()
        return self

    def __exit__(self, *exc):
        self._leave()
        return False


# -- a worker ---------------------------------------------------------------------------------------------


def _worker_main(conn, gate) -> None:
    """The worker's loop: receive a job, run it, send the result dict back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the notebook is the study's to handle
    from . import jobs

    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        if isinstance(job, jobs.PrepareJob):
            result = jobs.run_prepare(job)
        else:  # the build holds the gate's shared side, the measurement the whole gate (see run_candidate)
            result = jobs.run_candidate(job, gate)
        conn.send(result)


@dataclass
class _Worker:
    process: Any
    conn: Any
    job: Any = None
    started: float = 0.0
    token: Any = None  # the caller's handle for the job in flight


@dataclass
class Finished:
    """What came back for a job: its result dict, or why the worker could not give one."""

    token: Any
    result: dict | None = None
    error: str = ""  # "the worker died with signal 11 (SIGSEGV) while ..." / "timed out after N s"


@dataclass
class WorkerPool:
    size: int
    ctx: Any = field(default_factory=lambda: mp.get_context("spawn"))
    workers: list[_Worker] = field(default_factory=list)

    def __post_init__(self):
        self.gate = MeasureGate(self.ctx)
        self._lock = threading.Lock()

    # -- workers ---------------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker_main, args=(child, self.gate), name="nbopt-worker", daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def _idle(self) -> _Worker | None:
        self.workers = [w for w in self.workers if w.process.is_alive() or w.job is not None]
        for w in self.workers:
            if w.job is None:
                return w
        if len(self.workers) < self.size:
            self.workers.append(self._spawn())
            return self.workers[-1]
        return None

    @property
    def free(self) -> int:
        busy = sum(w.job is not None for w in self.workers)
        return self.size - busy

    def submit(self, job, token) -> None:
        worker = self._idle()
        if worker is None:
            raise RuntimeError("no idle worker")  # the caller checks ``free`` first
        worker.job, worker.token, worker.started = job, token, time.monotonic()
        worker.conn.send(job)

    # -- results ---------------------------------------------------------------------------------------
    def wait(self, timeout_s: float, poll: float = 0.2) -> list[Finished]:
        """Block until at least one job in flight is done (or failed); returns every one that is."""
        while True:
            done = self.collect(timeout_s)
            if done or not any(w.job is not None for w in self.workers):
                return done
            _wait_any([w.conn for w in self.workers if w.job is not None], poll)

    def collect(self, timeout_s: float) -> list[Finished]:
        done = []
        for w in self.workers:
            if w.job is None:
                continue
            finished = self._check(w, timeout_s)
            if finished is not None:
                done.append(finished)
                w.job, w.token = None, None
        return done

    def _check(self, w: _Worker, timeout_s: float) -> Finished | None:
        if w.conn.poll():
            try:
                return Finished(w.token, result=w.conn.recv())
            except (EOFError, OSError):
                pass  # died while sending: its exit code says how
        if not w.process.is_alive():
            w.process.join()
            return Finished(w.token, error=_death(w.process.exitcode, _what(w.job)))
        if time.monotonic() - w.started > timeout_s:
            self._kill(w)
            return Finished(w.token, error=f"timed out after {timeout_s:g} s while {_what(w.job)} "
                                           "(raise timeout_s=... if it needs longer); the sweep went on")
        return None

    def _kill(self, w: _Worker) -> None:
        w.process.kill()
        w.process.join(5)
        w.conn.close()

    def cancel(self) -> None:
        """Stop every job in flight now (their workers are killed and replaced on the next submit)."""
        for w in self.workers:
            if w.job is not None:
                self._kill(w)
                w.job, w.token = None, None

    def close(self) -> None:
        for w in self.workers:
            try:
                if w.job is None and w.process.is_alive():
                    w.conn.send(None)
                    w.process.join(5)
            except (OSError, ValueError):
                pass
            if w.process.is_alive():
                w.process.kill()
                w.process.join(5)
        self.workers = []


def _wait_any(conns: list, timeout: float) -> None:
    from multiprocessing.connection import wait

    wait(conns, timeout)


def _what(job) -> str:
    from .jobs import PrepareJob

    if isinstance(job, PrepareJob):
        return f"preparing the {job.backend} backend"
    return f"building {job.name}"


def _death(code: int | None, what: str) -> str:
    if code is not None and code < 0:
        try:
            sig = signal.Signals(-code)
            how = f"signal {-code} ({sig.name})"
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
