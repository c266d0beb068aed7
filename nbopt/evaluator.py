"""Measures an artifact in its own runtime: metric on the eval data, batch-1 latency, peak memory.

Accuracy uses the evaluation data only. Latency: warm-up runs, then timed runs until both a minimum count
and a minimum time are reached; median and p90 are reported with the runtime's thread count and the batch
size. Peak memory is measured in a fresh process (see ``nbopt._memprobe``) so earlier candidates'
allocations cannot hide or inflate it.
"""
from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends.base import Artifact, Runner
from .data import Data
from .errors import CandidateError
from .metrics import Metric, scored_positions


@dataclass
class LatencySettings:
    batch_size: int = 1
    warmup: int = 3
    min_runs: int = 20
    min_seconds: float = 0.3
    max_runs: int = 500


@dataclass
class Measurement:
    outputs: np.ndarray
    latency_ms: float
    latency_p90_ms: float
    threads: int
    batch_size: int
    peak_memory_mb: float | None = None


def run_all(runner: Runner, data: Data, batch_size: int) -> np.ndarray:
    """The model's outputs for every example, fed at the deployed batch size (one at a time where the
    program has a static batch of 1): dynamic quantization takes its scales from the whole batch, so a
    bigger evaluation batch would measure a different model than the one a phone runs."""
    step = min(batch_size, runner.max_batch or batch_size)
    outputs = [np.asarray(runner(inputs)) for inputs, _ in data.batches(step)]
    if not outputs:
        raise CandidateError("The evaluation data yielded no examples.")
    return np.concatenate(outputs)


def score(metric: Metric, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> float:
    """The metric's value: against the labels, or against the baseline's outputs for cosine/agreement/
    next-token (next-token only at the positions whose next token is in the labels: not padding)."""
    if metric.vs_baseline:
        ref = reference if reference is not None else outputs
        return metric(outputs, ref, mask=scored_positions(labels, outputs))
    return metric(outputs, labels)


def latency(runner: Runner, example: dict[str, np.ndarray], cfg: LatencySettings) -> tuple[float, float]:
    """Median and p90 of wall time per call, in milliseconds."""
    for _ in range(cfg.warmup):
        runner(example)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < cfg.max_runs and (len(times) < cfg.min_runs or time.perf_counter() - start < cfg.min_seconds):
        t0 = time.perf_counter()
        runner(example)
        times.append(time.perf_counter() - t0)
    arr = np.array(times) * 1000.0
    return float(np.median(arr)), float(np.percentile(arr, 90))


def measure(backend, artifact: Artifact, data: Data, cfg: LatencySettings, memory: bool = True) -> Measurement:
    """Outputs on every eval example, latency and peak memory, all at the deployed batch size. The metric
    is computed from the outputs by the study (on every run, so it is never stale)."""
    runner = backend.load(artifact)
    outputs = run_all(runner, data, cfg.batch_size)
    example = data.example(cfg.batch_size)
    med, p90 = latency(runner, example, cfg)
    peak = peak_memory_mb(backend.name, artifact, example) if memory else None
    return Measurement(outputs, med, p90, int(runner.threads), cfg.batch_size, peak)


def peak_memory_mb(backend_name: str, artifact: Artifact, example: dict[str, np.ndarray]) -> float | None:
    """Peak RSS growth (MiB) of loading the artifact and running it, in a fresh process (see _memprobe)."""
    with tempfile.TemporaryDirectory(prefix="nbopt-mem-") as tmp:
        feed = Path(tmp) / "example.npz"
        np.savez(feed, **example)
        spec = {"path": str(artifact.path), "format": artifact.format, "files": [str(f) for f in artifact.files],
                "info": _jsonable(artifact.info), "example": str(feed)}
        answer = _probe(backend_name).ask(spec)
    return answer.get("peak_memory_mb")  # None on failure: the table shows no figure rather than a wrong one


class _Probe:
    """One long-lived probe process per backend; it forks a clean child per measurement."""

    def __init__(self, backend_name: str):
        from .backends import backend_spec

        # The backend by package and class, and this process's import path: a plug-in backend registered
        # here (nbopt.backends.register_backend) loads there too.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "nbopt._memprobe", backend_name,
                                      *backend_spec(backend_name)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env)
        self.lock = threading.Lock()
        self.ready = self._read().get("ready", False)

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        try:
            return json.loads(line)
        except ValueError:
            return {"error": "probe gave no answer"}

    def ask(self, spec: dict) -> dict:
        with self.lock:
            if not self.ready or self.proc.poll() is not None:
                return {"error": "probe not running"}
            self.proc.stdin.write(json.dumps(spec) + "\n")
            self.proc.stdin.flush()
            return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        self.proc.stdout.close()


_probes: dict[str, _Probe] = {}


def _probe(backend_name: str) -> _Probe:
    probe = _probes.get(backend_name)
    if probe is None or probe.proc.poll() is not None:
        probe = _probes[backend_name] = _Probe(backend_name)
    return probe


@atexit.register
def _close_probes() -> None:
    for probe in _probes.values():
        probe.close()


def _jsonable(info: dict) -> dict:
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))}
