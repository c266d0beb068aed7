"""The Core ML backend: a PyTorch module or a Keras model in, a Core ML ML Program (``.mlpackage``) out.

The model is converted with ``coremltools`` (``ct.convert(..., convert_to="mlprogram")``): PyTorch through
``torch.export`` (TorchScript tracing when that fails), Keras through a ``tf.function`` concrete function.
Recipes: the fp32 baseline, ``fp16``, ``int8-weight-only``, ``int4-weight-only`` (int4 blockwise or a
4-bit palette) and ``prune-unstructured``, the last three with ``coremltools.optimize.coreml`` on the fp16
program. Core ML runs only on Apple's systems: elsewhere the packages are built and their size measured,
and each artifact says that its accuracy and latency need macOS (``runner.measurable_info``).

``backend`` holds the backend class, ``recipes`` its recipe handlers, ``convert`` conversion and saving,
``runner`` the macOS runner, ``reports`` what a package holds. coremltools, torch and TensorFlow are
imported inside functions only.
"""
from .backend import CoreMLBackend
from . import recipes  # noqa: E402,F401  (registers the recipe handlers)

__all__ = ["CoreMLBackend"]
