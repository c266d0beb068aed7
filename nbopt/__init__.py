"""nbopt: make a model fit on a phone, from inside a notebook.

``import nbopt`` stays light: torch, TensorFlow and ONNX Runtime load only when a backend is used.
"""
from __future__ import annotations

from ._version import __version__  # noqa: E402

__all__ = ["optimize", "Study", "Candidate", "Panel", "NboptError", "last_study", "load_ipython_extension",
           "__version__"]

from .errors import NboptError  # noqa: E402


def __getattr__(name: str):
    if name in ("optimize", "Study", "Candidate", "last_study"):
        from . import study

        return getattr(study, name)
    if name == "open":  # nbopt.open(".nbopt"): the studies in a store (not in __all__: it would shadow open)
        from .reopen import open

        return open
    if name == "Panel":
        from .widget import Panel

        return Panel
    raise AttributeError(f"module 'nbopt' has no attribute {name!r}")


def load_ipython_extension(ipython) -> None:
    """``%load_ext nbopt``: registers the ``%%optimize`` cell magic."""
    from .magic import load_ipython_extension as _load

    _load(ipython)
