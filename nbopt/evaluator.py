"""Measures an artifact in its own runtime: metric on the eval data, batch-1 latency, peak memory.

Accuracy uses the evaluation data only. Latency: warm-up runs, then timed runs until both a minimum count
and a minimum time are reached; median and p90 are reported with the runtime's thread count and the batch
size. Peak memory is measured in a fresh process (see ``nbopt._memprobe``) so earlier candidates'
allocations cannot hide or inflate it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends.base import Artifact, Runner
from .data import Data
from .errors import CandidateError
from .metrics import Metric


@dataclass
class LatencySettings:
    batch_size: int = 1
    warmup: int = 3
    min_runs: int = 20
    min_seconds: float = 0.3
    max_runs: int = 500


@dataclass
class Measurement:
    value: float
    outputs: np.ndarray
    latency_ms: float
    latency_p90_ms: float
    threads: int
    batch_size: int
    peak_memory_mb: float | None = None
    extra: dict = field(default_factory=dict)


def run_all(runner: Runner, data: Data, batch_size: int = 64) -> np.ndarray:
    """The model's outputs for every example (one at a time where the program has a static batch of 1)."""
    step = min(batch_size, runner.max_batch or batch_size)
    outputs = [np.asarray(runner(inputs)) for inputs, _ in data.batches(step)]
    if not outputs:
        raise CandidateError("The evaluation data yielded no examples.")
    return np.concatenate(outputs)


def score(metric: Metric, outputs: np.ndarray, data: Data, reference: np.ndarray | None) -> float:
    if metric.vs_baseline:
        return metric(outputs, reference if reference is not None else outputs)
    return metric(outputs, data.labels())


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


def measure(backend, artifact: Artifact, data: Data, metric: Metric, reference: np.ndarray | None,
            cfg: LatencySettings, memory: bool = True) -> Measurement:
    runner = backend.load(artifact)
    outputs = run_all(runner, data)
    value = score(metric, outputs, data, reference)
    example = data.example(cfg.batch_size)
    med, p90 = latency(runner, example, cfg)
    peak = peak_memory_mb(backend.name, artifact, example) if memory else None
    return Measurement(value, outputs, med, p90, int(runner.threads), cfg.batch_size, peak)


def peak_memory_mb(backend_name: str, artifact: Artifact, example: dict[str, np.ndarray]) -> float | None:
    """Peak RSS growth (MiB) of loading the artifact and running it, in a fresh Python process."""
    with tempfile.TemporaryDirectory(prefix="nbopt-mem-") as tmp:
        feed = Path(tmp) / "example.npz"
        np.savez(feed, **example)
        spec = json.dumps({"backend": backend_name, "path": str(artifact.path), "format": artifact.format,
                           "files": [str(f) for f in artifact.files], "info": _jsonable(artifact.info),
                           "example": str(feed)})
        proc = subprocess.run([sys.executable, "-m", "nbopt._memprobe", spec], capture_output=True, text=True,
                              timeout=300)
    if proc.returncode != 0:
        return None  # the table shows no figure rather than a wrong one
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_memory_mb"])


def _jsonable(info: dict) -> dict:
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))}
