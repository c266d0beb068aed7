"""Running a study's sweep in a background thread, and the notebook hook that makes later cells wait.

The kernel's main thread stays free while a sweep runs, so widget messages (Stop, export) are handled and
the page stays live. The thread only runs the sweep; views follow it through the study's events and
never print from it (output from a thread lands in whatever cell happens to be running).
"""
from __future__ import annotations

import contextvars
import threading
import weakref
from typing import Callable

# Sweeps that are running, so that a later cell can wait for them (see ``wait_for_sweeps``).
_RUNNING: "weakref.WeakSet[BackgroundSweep]" = weakref.WeakSet()


class BackgroundSweep:
    """Runs ``work()`` in a daemon thread. ``stop()`` asks it to end after the running candidate;
    ``on_waiting(flag)`` is told when a later cell starts and stops waiting for it."""

    def __init__(self, work: Callable[[], None], stop: Callable[[], None],
                 on_waiting: Callable[[bool], None] = lambda flag: None):
        self._work, self._stop, self.on_waiting = work, stop, on_waiting
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # what ended the sweep early, its traceback included

    def start(self) -> "BackgroundSweep":
        ctx = contextvars.copy_context()  # stray output from the thread goes to this cell
        self._thread = threading.Thread(target=ctx.run, args=(self._run,), name="nbopt-sweep", daemon=True)
        _RUNNING.add(self)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # noqa: BLE001 - kept for the caller to report; never printed here
            self.error = exc
        finally:
            _RUNNING.discard(self)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self.is_running:
            self._stop()

    def wait(self, timeout: float | None = None) -> "BackgroundSweep":
        """Block until the sweep has finished (``KeyboardInterrupt`` stops it, then waits)."""
        if self._thread is None:
            return self
        try:
            self._thread.join(timeout)
        except KeyboardInterrupt:
            self.stop()
            self._thread.join(timeout)
        return self


def running() -> list[BackgroundSweep]:
    return [s for s in list(_RUNNING) if s.is_running]


def wait_for_sweeps(*_args) -> None:
    """``pre_run_cell`` hook: a cell run while a sweep is running waits for it to finish.

    Without it, "Run all" would reach ``study.results`` before the study exists, and the cell's own
    work would disturb the latency measurements. Interrupting the kernel stops the sweep (after the
    running candidate; a second interrupt stops waiting), keeps what finished, and then propagates, so
    that "Run all" stops too.
    """
    for sweep in running():
        sweep.on_waiting(True)
        try:
            sweep._thread.join()
        except KeyboardInterrupt:
            sweep.stop()
            try:
                sweep._thread.join()
            finally:
                raise
        finally:
            sweep.on_waiting(False)
