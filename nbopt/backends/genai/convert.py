"""A transformers causal LM as a folder onnxruntime-genai's model builder takes, and the builder's run.

``source(model)`` saves the model with ``save_pretrained`` (and a tokenizer: the builder loads one) into a
private temporary folder and keeps the folder's bytes, so that the prepared model travels to worker
processes and every recipe builds from the same files; the user's files are never read or written but for
the tokenizer of a model loaded from a folder. ``build`` writes those bytes to a fresh private folder and
runs ``python -m onnxruntime_genai.models.builder`` on it, offline, for the CPU execution provider.
transformers, tokenizers and torch are imported inside functions only.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import CandidateError, library_failure
from ...quiet import write_log

# The text causal LMs of the builder's architecture list (onnxruntime_genai/models/builder.py) that nbopt
# tested end to end (built, then logits compared with transformers'). GPT-2 is not in the builder's list;
# Gemma 2's sliding-window cache refuses a cache as short as the one forward pass the runner allocates.
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
             "GemmaForCausalLM", "GraniteForCausalLM")
UNSUPPORTED = (f"The genai backend builds transformers causal LMs of the families onnxruntime-genai's model "
               f"builder supports ({', '.join(SUPPORTED)}); use the torch or onnx backend for other models.")
BUILDER = "onnxruntime_genai.models.builder"
# What the builder may print when it fails: the last "SomethingError: ..." line is the sentence to show
_ERROR_LINE = re.compile(r"^\s*(\w+(?:Error|Exception)|AssertionError): (.+)$")


@dataclass
class Source:
    """The saved model folder as bytes by file name, and what the runner and the notes need from it."""

    arch: str
    files: dict = field(repr=False)  # file name -> bytes (config.json, model.safetensors, tokenizer files)
    vocab_size: int = 0
    context_length: int = 0
    note: str = ""


def arch_of(model: Any) -> str | None:
    """The supported transformers class ``model`` is (by class name: transformers is not imported)."""
    for cls in type(model).__mro__:
        if cls.__name__ in SUPPORTED and cls.__module__.startswith("transformers"):
            return cls.__name__
    return None


def source(model: Any, tokenizer_folder: Path | None = None) -> Source:
    """``model`` saved with ``save_pretrained`` plus a tokenizer: the one in ``tokenizer_folder`` (the
    model's own folder), else a minimal one of placeholder tokens (the builder insists on a tokenizer)."""
    arch = arch_of(model)
    if arch is None:
        raise CandidateError(UNSUPPORTED)
    config = model.config
    with tempfile.TemporaryDirectory(prefix="nbopt-genai-src-") as tmp:
        folder = Path(tmp)
        _save_model(model, folder)
        note = _save_tokenizer(tokenizer_folder, folder, int(config.vocab_size), config)
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    return Source(arch, files, int(config.vocab_size), context, f"{arch} built by onnxruntime-genai's model builder; {note}")


def _save_model(model: Any, folder: Path) -> None:
    config = model.config
    architectures = getattr(config, "architectures", None)
    try:
        with library_failure("Saving the model with save_pretrained"):
            model.save_pretrained(str(folder))
    finally:
        config.architectures = architectures  # save_pretrained sets it on the user's config: put it back


def _save_tokenizer(given: Path | None, folder: Path, n_vocab: int, config: Any) -> str:
    """Writes the tokenizer into ``folder``; returns the note saying which one it is."""
    if given is not None:
        try:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(given), local_files_only=True).save_pretrained(str(folder))
            return f"the model's tokenizer from '{given}'"
        except Exception as exc:  # noqa: BLE001 - an unreadable tokenizer: the placeholder one still builds
            write_log(f"tokenizer in {given} not loadable: {exc!r}")
    minimal_tokenizer(n_vocab, config).save_pretrained(str(folder))
    return (f"minimal tokenizer of {n_vocab} placeholder tokens (none found beside the model): the folder runs "
            "token ids, but onnxruntime-genai cannot tokenize text with it")


def minimal_tokenizer(n_vocab: int, config: Any = None):
    """A word-level tokenizer whose tokens are '[0]' .. '[n-1]', with the config's bos / eos ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"[{i}]": i for i in range(n_vocab)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[0]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {}
    for role in ("bos", "eos"):
        value = getattr(config, f"{role}_token_id", None)
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(value, int) and 0 <= value < n_vocab:
            special[f"{role}_token"] = f"[{value}]"
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[0]", **special)


def build(src: Source, out: Path, precision: str, options: dict[str, Any]) -> None:
    """Run the model builder on ``src`` into the folder ``out`` (``precision``: fp32 / fp16 / int8 / int4,
    ``options``: its ``--extra_options``). The builder runs in its own process: its module puts its own
    folder on ``sys.path`` and imports top-level modules named ``builders`` and ``quantization``."""
    with tempfile.TemporaryDirectory(prefix="nbopt-genai-build-") as tmp:
        hf, cache = Path(tmp) / "hf", Path(tmp) / "cache"
        hf.mkdir()
        for name, data in src.files.items():
            (hf / name).write_bytes(data)
        if out.exists():
            shutil.rmtree(out)
        cmd = [sys.executable, "-m", BUILDER, "-i", str(hf), "-o", str(out), "-p", precision, "-e", "cpu",
               "-c", str(cache)]
        if options:
            cmd += ["--extra_options", *(f"{k}={_flag(v)}" for k, v in options.items())]
        # offline: the input is a local folder, and nothing may reach the network at run time
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, errors="replace")
        write_log(f"$ {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    if done.returncode != 0 or not (out / "model.onnx").is_file():
        raise CandidateError(f"onnxruntime-genai's model builder failed ({builder_error(done.stderr, done.returncode)}); "
                             "the candidate's log has its full output.")


def _flag(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def builder_error(stderr: str, code: int) -> str:
    """The builder's own error sentence (its last 'SomethingError: ...' line), else its exit status."""
    for line in reversed(stderr.splitlines()):
        match = _ERROR_LINE.match(line)
        if match:
            return f"{match.group(1)}: {match.group(2).strip()[:300]}"
    return f"exit status {code}"
