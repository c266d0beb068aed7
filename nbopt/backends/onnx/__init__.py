"""The ONNX backend: quantize with ``onnxruntime.quantization``, run every candidate in onnxruntime.

``backend`` holds the backend class, ``recipes`` its recipe handlers, ``runner`` the onnxruntime
session, ``convert`` torch export and file loading, ``graph`` graph rewrites, ``quant`` the quantizer
helpers, ``sensitivity`` the per-node analysis, ``reports`` what a quantized graph holds.
"""
from .backend import OnnxBackend
from . import recipes, qat, distill, resolution  # noqa: E402,F401  (each registers its recipe handlers)

__all__ = ["OnnxBackend"]
