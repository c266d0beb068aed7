"""The TFLite backend: Keras models, SavedModels and .tflite files through the TFLite converter, run in
the LiteRT interpreter.

``backend`` holds the backend class, ``recipes`` its recipe handlers, ``runner`` the interpreter,
``convert`` the converter calls, ``reports`` the weight types and the delegate report.
"""
from .backend import TFLiteBackend
from . import recipes, qat, distill, resolution  # noqa: E402,F401  (each registers its recipe handlers)

__all__ = ["TFLiteBackend"]
