"""The genai backend: a transformers causal LM (Llama, Mistral, Qwen, Phi, Gemma, ...) built into an ONNX
model folder by onnxruntime-genai's own model builder, and measured with onnxruntime-genai.

The model is saved with ``save_pretrained`` to a private folder and the builder
(``python -m onnxruntime_genai.models.builder``) runs on it offline, for the CPU execution provider:
``model.onnx``, ``model.onnx.data``, ``genai_config.json`` and the tokenizer files, all counted in the size.
Recipes: the fp32 baseline, ``fp16``, ``int8-weight-only`` and ``int4-weight-only`` (the builder's
MatMulNBits quantization, its ``block_size``, ``accuracy_level``, ``algo_config`` and ``is_symmetric``).
Not in any default sweep: ask for it with ``backends=["genai"]`` (``pip install "nbopt[genai]"``).

``backend`` holds the backend class, ``recipes`` its recipe handlers, ``convert`` the saved folder and the
builder call, ``runner`` the onnxruntime-genai runner, ``reports`` what a built folder holds.
onnxruntime_genai, transformers and torch are imported inside functions only.
"""
from .backend import GenAIBackend
from . import recipes  # noqa: E402,F401  (registers the recipe handlers)

__all__ = ["GenAIBackend"]
