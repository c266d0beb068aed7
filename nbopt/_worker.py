"""A worker process: ``python -m nbopt._worker READ_FD WRITE_FD GATE_DIR`` (started by ``nbopt.pool``).

It reads jobs (cloudpickled) from READ_FD, runs them, and writes each result dict to WRITE_FD. Its
imports and prepared models stay warm between jobs. An empty message, or the parent gone, ends it.
"""
from __future__ import annotations

import pickle
import sys
from multiprocessing.connection import Connection


def main(read_fd: int, write_fd: int, gate_dir: str) -> None:
    from . import jobs
    from .pool import MeasureGate

    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    gate = MeasureGate(gate_dir)
    while True:
        try:
            message = inbox.recv_bytes()
        except (EOFError, OSError):
            return
        if not message:
            return
        job = pickle.loads(message)  # noqa: S301 - written by the study's own process
        if isinstance(job, jobs.PrepareJob):
            result = jobs.run_prepare(job)
        else:  # the build shares the gate, the measurement holds it alone (see run_candidate)
            result = jobs.run_candidate(job, gate)
        outbox.send_bytes(pickle.dumps(result))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
