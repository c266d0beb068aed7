"""Helpers around onnxruntime.quantization: quiet calls, calibration readers, option names.

onnxruntime is imported inside functions only.
"""
from __future__ import annotations

import numpy as np

from ...errors import library_failure
from ...quiet import quiet


def ort_call(what: str, fn, *args, **kw):
    """Run an onnxruntime.quantization call quietly; any failure becomes a CandidateError that says why."""
    with quiet(), library_failure(f"{what} on this model"):
        return fn(*args, **kw)


class _Reader:
    """CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.feeds)

    def __len__(self):
        return len(self.feeds)


QUANT_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def make_reader(feeds: list[dict[str, np.ndarray]]):
    """A CalibrationDataReader over a list of feed dicts."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Reader, CalibrationDataReader):
        pass

    return Reader(feeds)


def node_aliases(names: list[str] | None) -> list[str] | None:
    """Node names as the quantizer sees them: it rewrites a Gemm 'x' as MatMul 'x_MatMul' + Add first."""
    if not names:
        return None
    return [a for n in names for a in (n, f"{n}_MatMul")]
