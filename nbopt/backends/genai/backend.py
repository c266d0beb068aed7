"""The genai backend class: taking a causal LM, the fp32 baseline, loading, defaults.

``prepare`` saves the model once into a ``convert.Source`` (the folder's bytes), so every recipe runs the
builder on the same files. The backend is never in a default sweep (``default_backends`` gives torch models
the torch backend): ask for it with ``backends=["genai"]``.
"""
from __future__ import annotations

from typing import Any

from ...errors import CandidateError
from ...recipes import Recipe
from ..base import Artifact, Backend, Context
from ..common import check_token_input, hash_arrays, model_tokenizer, versions
from .convert import UNSUPPORTED, Source, arch_of, build, source
from .runner import GenAIRunner



class GenAIBackend(Backend):
    name = "genai"

    @classmethod
    def accepts(cls, model: Any) -> bool:
        return arch_of(model) is not None

    def warm_imports(self) -> None:
        import onnxruntime_genai  # noqa: F401

    def prepare(self, model: Any, example: Any) -> Source:
        if arch_of(model) is None:
            raise CandidateError(UNSUPPORTED)
        check_token_input(example, "genai")
        return source(model, model_tokenizer(model))

    def fingerprint(self, prepared: Source) -> str:
        """The saved folder's files: weights, config and tokenizer."""
        import numpy as np

        names = sorted(prepared.files)
        arrays = [np.frombuffer(prepared.files[n], dtype=np.uint8) for n in names]
        return hash_arrays(arrays, f"genai:{prepared.arch}:{names}")

    def baseline(self, prepared: Source, ctx: Context) -> Artifact:
        return genai_artifact(prepared, ctx, "fp32", {}, "fp32 weights (the model as given)")

    def load(self, artifact: Artifact) -> GenAIRunner:
        return GenAIRunner(artifact.path)

    def default_recipes(self, prepared: Source) -> list[Recipe]:
        # int8 activations: the builder's own default for the CPU (accuracy_level 4), beside nbopt's float
        return [Recipe("fp16"), Recipe("int8-weight-only"), Recipe("int4-weight-only"),
                Recipe("int4-weight-only", {"activations": "int8"})]

    def size_breakdown(self, artifact: Artifact) -> dict:
        from .reports import size_breakdown

        return size_breakdown(artifact)

    def versions(self) -> dict[str, str]:
        return versions("onnxruntime-genai", "onnxruntime", "torch", "transformers")


def genai_artifact(prepared: Source, ctx: Context, precision: str, options: dict, how: str) -> Artifact:
    """Run the builder into ``<workdir>/<precision>`` and read back what the folder holds."""
    from .reports import summary

    out = ctx.workdir / f"genai-{precision}"
    build(prepared, out, precision, options)
    try:
        stored = summary(out)
    except Exception:  # noqa: BLE001  (a report that fails must not fail the candidate)
        stored = "(model.onnx could not be read back)"
    files = sorted(p for p in out.rglob("*") if p.is_file())
    shown = ", ".join(f"{k}={v}" for k, v in options.items())
    notes = (f"{how}: builder precision {precision}" + (f" ({shown})" if shown else "") + f"; {stored}; "
             f"{prepared.note}; CPU execution provider")
    return Artifact(path=out, format="genai", files=files, notes=notes,
                    info={"quantized": stored, "builder_precision": precision})
