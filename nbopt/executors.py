"""Where a study's jobs run: ``local`` worker processes (the default), a Ray cluster, or ``inline`` in the
caller's own process (no isolation: for debugging and for measuring what isolation costs).

Every executor takes jobs (``nbopt.jobs``) with a token, and hands back ``Finished`` results as they come,
so the study records rows, and the panel draws them, in the order candidates finish.
"""
from __future__ import annotations

import os
from typing import Any

from .errors import NboptError
from .pool import Finished, get_pool

EXECUTORS = ("local", "ray", "inline")
DEFAULT_TIMEOUT_S = 3600.0  # generous: a transformer's export and calibration can take many minutes


def check_workers(workers: Any) -> int:
    """``workers`` as a count: a positive integer, or "auto" (the cores left when each runtime uses two
    threads, at least one)."""
    if workers == "auto":
        return max(1, (os.cpu_count() or 1) // 2)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise NboptError(f"workers must be a positive integer or 'auto', got {workers!r}.")
    return workers


def check_timeout(timeout_s: Any) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise NboptError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}.")
    return float(timeout_s)


def make_executor(name: str, workers: int, timeout_s: float, ray_address: str | None = None):
    if name == "local":
        return LocalExecutor(workers, timeout_s)
    if name == "inline":
        return InlineExecutor()
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(workers, timeout_s, ray_address)
    raise NboptError(f"Unknown executor {name!r}; known executors: {', '.join(EXECUTORS)}.")


class LocalExecutor:
    """Worker processes on this machine (warm, reused by later studies of this process)."""

    isolated = True

    def __init__(self, workers: int, timeout_s: float):
        self.pool = get_pool(workers)
        self.timeout_s = timeout_s

    @property
    def capacity(self) -> int:
        return self.pool.free

    def submit(self, job, token) -> None:
        self.pool.submit(job, token)

    def wait(self) -> list[Finished]:
        return self.pool.wait(self.timeout_s)

    def busy(self) -> bool:
        return self.pool.free < self.pool.size

    def cancel(self) -> None:
        self.pool.cancel()


class InlineExecutor:
    """Runs each job at once in this process: a crash here is a crash of the caller."""

    isolated = False

    def __init__(self):
        self._done: list[Finished] = []

    @property
    def capacity(self) -> int:
        return 0 if self._done else 1

    def submit(self, job, token) -> None:
        from . import jobs

        result = jobs.run_prepare(job) if isinstance(job, jobs.PrepareJob) else jobs.run_candidate(job)
        self._done.append(Finished(token, result=result))

    def wait(self) -> list[Finished]:
        done, self._done = self._done, []
        return done

    def busy(self) -> bool:
        return bool(self._done)

    def cancel(self) -> None:
        self._done = []
