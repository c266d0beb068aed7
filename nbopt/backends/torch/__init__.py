"""The PyTorch backend: a ``torch.nn.Module`` in, an ExecuTorch ``.pte`` (XNNPACK) or ``.pt2`` out.

``backend`` holds the backend class, ``recipes`` its recipe handlers, ``runner`` the runtimes that run
the files, ``convert`` export and lowering, ``quant`` / ``prune`` the techniques, ``reports`` what a
candidate holds.
"""
from .backend import TorchBackend
from . import recipes, qat, distill, resolution  # noqa: E402,F401  (each registers its recipe handlers)

__all__ = ["TorchBackend"]
