"""The GGUF backend: a Llama or GPT-2 causal LM (transformers, torch) in, a llama.cpp ``.gguf`` file out.

The file is written with the ``gguf`` package (``pip install "nbopt[llm]"``): its writer, its quantizers
(``gguf.quants``: Q8_0, Q4_0) and its tensor-name maps. It is measured with llama.cpp through
llama-cpp-python when that is installed (``pip install "nbopt[llama]"``, which builds llama.cpp from
source); otherwise the row has the file's real size and says that accuracy needs llama-cpp-python.
Recipes: the F32 baseline, ``fp16`` (F16), ``int8-weight-only`` (Q8_0), ``int4-weight-only`` (Q4_0).
Not in any default sweep: ask for it with ``backends=["gguf"]``.

``backend`` holds the backend class, ``recipes`` its recipe handlers, ``convert`` the mapping from the
Hugging Face model to GGUF, ``runner`` the llama.cpp runner, ``reports`` what a file holds. gguf, torch
and llama_cpp are imported inside functions only.
"""
from .backend import GGUFBackend
from . import recipes  # noqa: E402,F401  (registers the recipe handlers)

__all__ = ["GGUFBackend"]
