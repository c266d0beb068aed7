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


# -- weight-only (MatMulNBits) algorithms ----------------------------------------------------------------
WEIGHT_ONLY_ALGORITHMS = ("rtn", "hqq", "gptq", "awq")
NEEDS_CALIB = ("gptq",)


def weight_only_refusal(algorithm: str, bits: int, symmetric: bool) -> str:
    """'' or the sentence saying why onnxruntime's quantizer cannot run ``algorithm`` as asked (read from its
    1.32 source, ``matmul_nbits_quantizer.py``)."""
    if algorithm == "awq":
        # its only AWQ is 'nvidia_awq': NVIDIA ModelOpt, whose config downloads a tokenizer and a dataset
        return ("onnxruntime 1.32 offers AWQ only through NVIDIA ModelOpt (nvidia_awq), which downloads its own "
                "tokenizer and calibration dataset, so it cannot run offline here: use algorithm='gptq' "
                "(calibrated on calib=) or the torch backend's awq")
    if algorithm == "gptq" and bits != 4:
        return "onnxruntime 1.32's GPTQ writes 4-bit weights only: use algorithm='rtn' or 'hqq' for int8"
    if algorithm == "hqq" and bits != 4:
        return ("onnxruntime 1.32's CPU MatMulNBits cannot run 8-bit weights with HQQ's float zero points: use "
                "algorithm='rtn' for int8")
    if algorithm == "hqq" and symmetric:
        return "HQQ always fits a zero point per group: use symmetric=false with algorithm='hqq'"
    return ""


def nbits_quantizer(model, bits: int, group_size: int, symmetric: bool, algorithm: str,
                    accuracy_level: int | None, feeds: list[dict[str, np.ndarray]] | None = None):
    """onnxruntime's MatMulNBitsQuantizer set up for ``algorithm`` with the library's own config classes."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (GPTQWeightOnlyQuantConfig, HQQWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    # rtn: the quantizer's default config (round to nearest, 4 and 8 bits, in C++); RTNWeightOnlyQuantConfig
    # is the same rounding in a numpy loop that writes 4-bit weights only
    config = None
    if algorithm == "hqq":
        config = HQQWeightOnlyQuantConfig(block_size=group_size, bits=bits)
    elif algorithm == "gptq":
        config = GPTQWeightOnlyQuantConfig(calibration_data_reader=make_reader(feeds))
    return MatMulNBitsQuantizer(model, bits=bits, block_size=group_size, is_symmetric=symmetric,
                                accuracy_level=accuracy_level, algo_config=config)


def set_accuracy_level(model, level: int | None) -> None:
    """``accuracy_level`` on every MatMulNBits node: HQQ's quantizer does not write it (4 = int8 activations
    quantized on the fly)."""
    import onnx

    if level is None:
        return
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))


def packed_weights(model) -> list[bytes]:
    """The packed weight bytes of every MatMulNBits node, in graph order (to compare two algorithms' builds)."""
    inits = {t.name: t for t in model.graph.initializer}
    return [inits[n.input[1]].raw_data for n in model.graph.node
            if n.op_type == "MatMulNBits" and n.input[1] in inits]
