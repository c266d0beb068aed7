"""Helpers around onnxruntime.quantization: quiet calls, calibration readers, option names.

onnxruntime is imported inside functions only.
"""
from __future__ import annotations

import io
import logging
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout

import numpy as np

from ..errors import CandidateError, NboptError
from .onnx_export import _first_line


@contextmanager
def _quiet():
    """Silence onnxruntime.quantization's logging / prints; keep them out of the notebook."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _ort_call(what: str, fn, *args, **kw):
    """Run an onnxruntime.quantization call; any failure becomes a CandidateError that says why."""
    try:
        with _quiet():
            return fn(*args, **kw)
    except (NboptError, CandidateError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"{what} failed on this model ({type(exc).__name__}: "
                             f"{_first_line(exc)[:300]}).") from exc


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


_CT = {"int8": "QInt8", "uint8": "QUInt8"}
_CALIB = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _make_reader(feeds: list[dict[str, np.ndarray]]):
    """A CalibrationDataReader over a list of feed dicts."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Reader, CalibrationDataReader):
        pass

    return Reader(feeds)


def _aliases(names: list[str] | None) -> list[str] | None:
    """Node names as the quantizer sees them: it rewrites a Gemm 'x' as MatMul 'x_MatMul' + Add first."""
    if not names:
        return None
    return [a for n in names for a in (n, f"{n}_MatMul")]
