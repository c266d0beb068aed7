"""The units of work a study hands to a worker process: prepare a backend's model, build and measure one
candidate. Both run the same way in a local worker, a Ray task or (``executor="inline"``) the caller.

A job carries only what pickles cheaply and safely: the backend by name (and, for a plug-in, its package
and class), paths (the user's model and the prepared model are cloudpickled into files under the
study's store once, then read by path), the Arrow-backed data (pickled by file reference), the recipe
and the measurement settings. A result is a plain dict, so that a crash of the worker can only lose the
candidate being built, never the study.
"""
from __future__ import annotations

import os
import pickle
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CandidateError, NboptError, SkipCandidate, one_line
from .quiet import candidate_log, quiet, write_log
from .recipes import Recipe
from .schema import FAILED, OK, SKIPPED, info_columns

BASELINE = "baseline"


@dataclass
class PrepareJob:
    """Convert the user's model for one backend (export, checks) and keep the result for the candidates."""

    backend: str
    spec: tuple[str, str]  # (package, class): a plug-in backend loads in the worker too
    model_path: Path  # the user's model, cloudpickled (or a model file path, as text)
    eval: Any  # nbopt.data.Data
    scratch: Path  # where the backend may write (the exported model), owned by the study's process
    log: Path
    name: str = ""  # for messages: "preparing the torch backend"


@dataclass
class CandidateJob:
    key: str
    name: str  # the row's name, for messages
    backend: str
    spec: tuple[str, str]
    recipe: Recipe
    prepared_path: Path | None  # the prepared model, cloudpickled; None: prepare here from model_path
    model_path: Path
    eval: Any
    calib: Any
    seed: int
    latency: Any  # nbopt.evaluator.LatencySettings
    measure_memory: bool
    workdir: Path
    log: Path
    extra: dict = field(default_factory=dict)
    train: Any = None  # nbopt.data.Data (train=) for training recipes, else None
    metric: str | None = None  # the study's metric by name (built-in metrics only), for mixed-precision
    stop_flag: Path | None = None  # the study creates it on Stop; a training engine looks between batches


class NoGate:
    """Measurement gate of a single process: nothing else builds while it measures."""

    def building(self):
        return _null()

    def measuring(self):
        return _null()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- the worker's caches: imports and prepared models are paid once per worker ------------------------
_backends: dict[str, Any] = {}
_prepared: dict[str, Any] = {}


def backend_of(name: str, spec: tuple[str, str]):
    if name not in _backends:
        from .backends import _PACKAGES, get_backend, register_backend

        if name not in _PACKAGES:
            register_backend(name, *spec)
        _backends[name] = get_backend(name)
    return _backends[name]


_objects: dict[str, Any] = {}  # inline executor: the objects themselves, by the path they would have


def remember(path: Path, obj: Any) -> None:
    _objects[str(path)] = obj


def load_blob(path: Path) -> Any:
    """An object the study's own process cloudpickled (the user's model, or a model file's path)."""
    if str(path) in _objects:
        return _objects[str(path)]
    with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 - written by this study's own process, never user input


def run_prepare(job: PrepareJob) -> dict:
    """{"prepared": path | None, "defaults": [Recipe], "fingerprint": str} or {"unusable": reason}, with
    "usage": True when the reason is an NboptError (the model or data as given). Any failure here is that
    backend's failed baseline row; the study raises a usage reason only when no backend took the model."""
    from .store import scratch_in

    backend = backend_of(job.backend, job.spec)
    with candidate_log(job.log), quiet(), scratch_in(job.scratch):
        try:
            prepared = backend.prepare(load_blob(job.model_path), job.eval)
            out = {"defaults": backend.default_recipes(prepared), "fingerprint": backend.fingerprint(prepared)}
        except NboptError as exc:
            write_log(traceback.format_exc())
            return {"unusable": one_line(exc), "usage": True}
        except CandidateError as exc:
            write_log(traceback.format_exc())
            return {"unusable": one_line(exc)}
        except Exception as exc:  # noqa: BLE001 - a backend that breaks is that backend's failed row
            write_log(traceback.format_exc())
            return {"unusable": one_line(exc)}
    path = job.scratch / f"prepared-{job.backend}.pkl"
    try:
        import cloudpickle

        path.write_bytes(cloudpickle.dumps(prepared))
        out["prepared"] = path
    except Exception:  # noqa: BLE001 - some prepared models hold live handles: each worker prepares its own
        out["prepared"] = None
    _prepared[_cache_key(job.backend, out["prepared"] or job.model_path)] = prepared
    return out


def _cache_key(backend: str, path: Path) -> str:
    return f"{backend}:{path}"


def prepared_for(job: CandidateJob, backend) -> Any:
    """The prepared model: this worker's cached copy, else loaded from the study's file, else prepared here."""
    key = _cache_key(job.backend, job.prepared_path or job.model_path)
    if key not in _prepared:
        if job.prepared_path is not None:
            _prepared[key] = load_blob(job.prepared_path)
        else:
            _prepared[key] = backend.prepare(load_blob(job.model_path), job.eval)
    return _prepared[key]


def run_candidate(job: CandidateJob, gate=None) -> dict:
    """Build the artifact in ``job.workdir`` and measure it there (outputs saved beside it). Any failure is
    the row's error; the traceback and everything the libraries printed go to ``job.log``."""
    gate = gate or NoGate()
    row: dict[str, Any] = {"log": str(job.log)}
    t0 = time.perf_counter()
    with candidate_log(job.log), quiet():
        try:
            backend = backend_of(job.backend, job.spec)
            with gate.building():
                artifact = _artifact(job, backend)
            _describe(row, job, backend, artifact)
            if not artifact.info.get("unmeasured"):
                with gate.measuring():
                    _measure(row, job, backend, artifact)
        except SkipCandidate as exc:  # the recipe does not apply to this model
            row = {"log": str(job.log), "status": SKIPPED, "error": one_line(exc)}
        except Exception as exc:  # noqa: BLE001 - a failed candidate is a row with its error, not a crash
            write_log(traceback.format_exc())
            row = {"log": str(job.log), "status": FAILED, "error": one_line(exc)}
    row["build_seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _artifact(job: CandidateJob, backend):
    from .backends.base import Context

    from .training import PROGRESS_FILE

    prepared = prepared_for(job, backend)
    job.workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(workdir=job.workdir, calib=job.calib, seed=job.seed, train=job.train,
                  progress=job.workdir / PROGRESS_FILE, stop_flag=job.stop_flag, metric=job.metric)
    if job.recipe.name == BASELINE:
        return backend.baseline(prepared, ctx)
    return backend.apply(prepared, job.recipe, ctx)


def _describe(row: dict, job: CandidateJob, backend, artifact) -> None:
    """Size and what the artifact holds, read from the file itself."""
    from .speed import recipe_check

    row.update(info_columns(artifact.info))
    row.update(status=OK, format=artifact.format, size_bytes=artifact.size_bytes, notes=artifact.notes,
               artifact_path=str(artifact.path), artifact_files=[str(f) for f in artifact.files])
    try:
        row["size_breakdown"] = backend.size_breakdown(artifact)
    except Exception:  # noqa: BLE001 - a file the reader cannot parse costs the row nothing
        write_log(traceback.format_exc())
        row["size_breakdown"] = None
    check = recipe_check(job.recipe.name, row["size_breakdown"])  # did the recipe do what it says?
    notes = [artifact.notes, check, artifact.info.get("unmeasured")]
    row["notes"] = "; ".join(p for p in notes if p)


def _measure(row: dict, job: CandidateJob, backend, artifact) -> None:
    from .evaluator import measure
    from .resize import eval_for

    # the eval data as the artifact takes it: resized images for ``resolution`` (nbopt.resize)
    data = artifact.eval_data if artifact.eval_data is not None else eval_for(artifact.info, job.eval)
    m = measure(backend, artifact, data, job.latency, job.measure_memory)
    bad = int(np.size(m.outputs) - np.isfinite(m.outputs).sum()) if np.issubdtype(m.outputs.dtype, np.floating) else 0
    if bad:
        raise CandidateError(f"The candidate's outputs contain {bad} NaN or inf values on the evaluation data "
                             "(an overflow after quantization?); its accuracy cannot be measured.")
    outputs = job.workdir / "outputs.npy"
    np.save(outputs, m.outputs)
    row.update(outputs_path=str(outputs), latency_ms=m.latency_ms, latency_p90_ms=m.latency_p90_ms,
               peak_memory_mb=m.peak_memory_mb, threads=m.threads, batch_size=m.batch_size)


def rebased(row: dict, old: Path, new: Path) -> dict:
    """The row with every path inside ``old`` (the build folder) moved to ``new`` (its place in the store)."""
    prefix = str(old)

    def move(value):
        if isinstance(value, str) and (value == prefix or value.startswith(prefix + os.sep)):
            return str(new) + value[len(prefix):]
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return {k: move(v) for k, v in row.items()}
