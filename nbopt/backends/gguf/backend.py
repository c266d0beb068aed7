"""The GGUF backend class: taking a Llama or GPT-2 causal LM, the F32 baseline, loading, defaults.

``prepare`` reads the model once into a ``convert.Source`` (tensors renamed and laid out for llama.cpp, as
numpy copies), so recipes only choose how the matrices are stored. The backend is never in a default sweep
(``default_backends`` gives torch models the torch backend): ask for it with ``backends=["gguf"]``.
"""
from __future__ import annotations

from typing import Any

from ...errors import CandidateError
from ...recipes import Recipe
from ..base import Artifact, Backend, Context
from ..common import check_token_input, hash_arrays, model_tokenizer, versions
from .convert import UNSUPPORTED, Source, arch_of, source, write
from .runner import LlamaCppRunner, measurable_info



class GGUFBackend(Backend):
    name = "gguf"

    @classmethod
    def accepts(cls, model: Any) -> bool:
        return arch_of(model) is not None

    def warm_imports(self) -> None:
        import gguf  # noqa: F401

    def prepare(self, model: Any, example: Any) -> Source:
        if arch_of(model) is None:
            raise CandidateError(UNSUPPORTED)
        check_token_input(example, "gguf")
        return source(model, model_tokenizer(model))

    def fingerprint(self, prepared: Source) -> str:
        """The tensors as written (renamed, transposed), the keys and the vocabulary."""
        vocab = "|".join(t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                         for t in prepared.vocab.tokens)
        tag = f"gguf:{prepared.arch}:{prepared.hparams!r}:{prepared.vocab.model}:{vocab}:{sorted(prepared.tensors)}"
        return hash_arrays([prepared.tensors[k] for k in sorted(prepared.tensors)], tag)

    def baseline(self, prepared: Source, ctx: Context) -> Artifact:
        return gguf_artifact(prepared, ctx, "F32", "f32", "F32 weights (the model as given, in GGUF)")

    def load(self, artifact: Artifact) -> LlamaCppRunner:
        from .reports import summary

        return LlamaCppRunner(artifact.path, summary(artifact.path).context_length or 2048)

    def default_recipes(self, prepared: Source) -> list[Recipe]:
        return [Recipe("fp16"), Recipe("int8-weight-only"), Recipe("int4-weight-only")]

    def size_breakdown(self, artifact: Artifact) -> dict:
        from .reports import size_breakdown

        return size_breakdown(artifact)

    def versions(self) -> dict[str, str]:
        return versions("gguf", "llama-cpp-python", "torch", "transformers")


def gguf_artifact(prepared: Source, ctx: Context, wanted: str, stem: str, how: str) -> Artifact:
    """Write the file, read back what it holds, and say whether it can be measured here."""
    from .reports import summary

    path = ctx.workdir / f"{stem}.gguf"
    counts = write(prepared, path, wanted)
    try:
        quantized = summary(path).text
    except Exception:  # noqa: BLE001  (a report that fails must not fail the candidate)
        quantized = "tensors " + ", ".join(f"{k} {n}" for k, n in counts.items())
    fallback = ""
    if wanted not in ("F32", "F16") and counts.get("F16"):
        fallback = f"; {counts['F16']} matrices whose rows are not whole blocks of 32 kept in F16"
    notes = f"{how}: {quantized}; norms and biases F32{fallback}; {prepared.note}"
    info = {"quantized": quantized, "gguf_type": wanted, **measurable_info()}
    return Artifact(path=path, format="gguf", notes=notes, info=info)
