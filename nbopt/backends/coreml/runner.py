"""Running an .mlpackage with Core ML, and the contract for systems where Core ML does not exist.

Core ML's runtime ships only with Apple's systems: coremltools on Linux can convert, compress and save a
model, but ``MLModel.predict`` is not available there. So every artifact carries ``measurable_info()``:
``{"unmeasured": MACOS_REASON}`` off macOS, which tells the study to leave
accuracy and latency empty (never estimated) and the row off the Pareto front; ``load`` raises
``NeedsMacOS`` (a ``CandidateError``) with the same sentence if it is called anyway.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np

from ...errors import CandidateError, NboptError, library_failure
from ...quiet import quiet

MACOS_REASON = "accuracy and latency need macOS (Core ML runs only on Apple's systems)"


class NeedsMacOS(CandidateError):
    """Core ML cannot run this artifact on this system; its size is real, accuracy and latency are unknown."""


def can_run() -> bool:
    return sys.platform == "darwin"


def measurable_info() -> dict:
    """What every Core ML artifact's ``info`` says about measuring it on this system."""
    if can_run():
        return {}
    return {"unmeasured": MACOS_REASON}


@functools.lru_cache(maxsize=None)
def import_ct():
    """coremltools, imported once quietly (its import prints about missing native parts off macOS)."""
    with quiet():
        import coremltools

    return coremltools


class CoreMLRunner:
    """Runs an .mlpackage with ``MLModel.predict`` (macOS only), one example at a time.

    The programs have a static batch of 1 (a phone's batch), so ``max_batch == 1``. Core ML picks its own
    threads and compute units (``ComputeUnit.ALL``: CPU, GPU and Neural Engine), so ``threads`` is 0.
    """

    max_batch = 1
    threads = 0

    def __init__(self, path: Path, compute_units: str = "ALL"):
        if not can_run():
            raise NeedsMacOS(f"This Core ML package was built and its size measured, but {MACOS_REASON}; "
                             f"this system is {sys.platform}.")
        ct = import_ct()
        with library_failure("Loading the .mlpackage in Core ML"), quiet():
            self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        desc = self.model.get_spec().description
        self.inputs = [(i.name, _dtype(i.type.multiArrayType.dataType)) for i in desc.input]
        self.output = desc.output[0].name
        self.compute_units = compute_units

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(self.inputs) == 1 and len(inputs) == 1:
            (name, dtype), = self.inputs
            return {name: np.ascontiguousarray(next(iter(inputs.values())), dtype=dtype)}
        missing = [n for n, _ in self.inputs if n not in inputs]
        if missing:
            raise NboptError(f"The Core ML model needs input(s) {', '.join(map(repr, missing))}, but the data has "
                             f"{', '.join(map(repr, inputs)) or 'none'}: name the data's inputs after the model's.")
        return {n: np.ascontiguousarray(inputs[n], dtype=d) for n, d in self.inputs}

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = self._feed(inputs)
        n = len(next(iter(feed.values())))
        outs = []
        for i in range(n):
            with library_failure("Core ML prediction"):
                out = self.model.predict({k: v[i:i + 1] for k, v in feed.items()})
            outs.append(np.asarray(out[self.output], dtype=np.float32))
        return np.concatenate(outs)


def _dtype(code: int) -> type:
    """numpy type of a Core ML MultiArray data type (INT32 for token ids, float32 otherwise)."""
    ct = import_ct()
    kinds = ct.proto.FeatureTypes_pb2.ArrayFeatureType
    return {kinds.INT32: np.int32, kinds.FLOAT16: np.float16, kinds.DOUBLE: np.float64}.get(code, np.float32)
