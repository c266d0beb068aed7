"""A Hugging Face causal LM (torch) as a GGUF file: hyperparameters, vocabulary and tensors, written with
the ``gguf`` package (``GGUFWriter``, ``gguf.quants``, ``gguf.TensorNameMap``, ``gguf.vocab``).

Only the mapping glue is here: which config field is which GGUF key, and the two layout changes llama.cpp
expects (the same ones llama.cpp's own ``convert_hf_to_gguf.py`` makes):

* GPT-2 stores its linear layers as ``Conv1D`` with weights (in, out); ggml wants (out, in): transposed.
* Llama's q / k projections are laid out for Hugging Face's rotate-half RoPE; llama.cpp's LLAMA graph
  rotates adjacent pairs, so the rows of each head are interleaved back (``permute_rope``).

A tied output projection (``lm_head`` sharing the token embedding) is not written twice: llama.cpp uses
the token embedding when ``output.weight`` is absent. gguf and torch are imported inside functions only.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CandidateError, library_failure

# transformers class -> GGUF architecture name (gguf.MODEL_ARCH_NAMES)
SUPPORTED = {"LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2"}
UNSUPPORTED = (f"The gguf backend converts {' and '.join(SUPPORTED)} models (transformers) only; export other "
               "models with the torch or onnx backend.")
# GGML types by nbopt's name for them; matrices take the recipe's type, vectors stay F32 (llama.cpp's norms
# and biases are F32), as does GPT-2's position table (convert_hf_to_gguf keeps POS_EMBD in F32 too)
TYPES = ("F32", "F16", "Q8_0", "Q4_0")
_BYTE_TOKENS = 256


@dataclass
class Vocab:
    """What the file's ``tokenizer.ggml.*`` keys hold."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    tokens: list
    scores: list
    types: list
    special: Any = None  # a gguf.SpecialVocab (merges, bos/eos ids) or None
    pre: str = ""  # tokenizer.ggml.pre
    note: str = ""


@dataclass
class Source:
    """A model ready to write: GGUF tensor names to float32 arrays in ggml's layout, and its keys."""

    arch: str
    name: str
    hparams: list  # (GGUFWriter method, value)
    tensors: dict = field(repr=False)
    vocab: Vocab = field(repr=False)
    note: str = ""

    @property
    def context_length(self) -> int:
        return int(dict(self.hparams)["add_context_length"])


def arch_of(model: Any) -> str | None:
    """'llama' / 'gpt2' for a supported transformers model (by class name: transformers is not imported)."""
    for cls in type(model).__mro__:
        if cls.__name__ in SUPPORTED and cls.__module__.startswith("transformers"):
            return SUPPORTED[cls.__name__]
    return None


def source(model: Any, tokenizer: Any = None) -> Source:
    """The model's tensors renamed and laid out for llama.cpp, its hyperparameters and a vocabulary
    (``tokenizer``: a folder with tokenizer files or a Hugging Face tokenizer; None: a minimal one)."""
    arch = arch_of(model)
    if arch is None:
        raise CandidateError(UNSUPPORTED)
    config = model.config
    hparams = _llama_hparams(config) if arch == "llama" else _gpt2_hparams(config)
    tensors = _tensors(model, arch, config)
    vocab = vocab_for(tokenizer, int(config.vocab_size), arch)
    name = getattr(config, "_name_or_path", "") or type(model).__name__
    note = f"{type(model).__name__} as GGUF architecture '{arch}'; {vocab.note}"
    return Source(arch, Path(str(name)).name or type(model).__name__, hparams, tensors, vocab, note)


# -- hyperparameters -----------------------------------------------------------------------------------
def _gpt2_hparams(c) -> list:
    if getattr(c, "scale_attn_by_inverse_layer_idx", False) or getattr(c, "reorder_and_upcast_attn", False):
        raise CandidateError("This GPT-2 config scales attention by layer index (scale_attn_by_inverse_layer_idx "
                             "/ reorder_and_upcast_attn), which llama.cpp does not do: use the torch or onnx backend.")
    return [("add_context_length", c.n_positions), ("add_embedding_length", c.n_embd),
            ("add_feed_forward_length", c.n_inner or 4 * c.n_embd), ("add_block_count", c.n_layer),
            ("add_head_count", c.n_head), ("add_layer_norm_eps", float(c.layer_norm_epsilon)),
            ("add_vocab_size", c.vocab_size)]


def _rope_theta(c) -> float:
    """rope_theta (transformers < 5) or rope_parameters['rope_theta'] (transformers 5)."""
    params = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise CandidateError(f"This Llama uses rope scaling '{kind}', which nbopt's GGUF writer does not map yet: "
                             "use the torch or onnx backend.")
    return float(getattr(c, "rope_theta", None) or params.get("rope_theta", 10000.0))


def _llama_hparams(c) -> list:
    if getattr(c, "hidden_act", "silu") != "silu":
        raise CandidateError(f"llama.cpp's Llama uses SiLU, this model uses '{c.hidden_act}': use the torch or onnx "
                             "backend.")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return [("add_context_length", c.max_position_embeddings), ("add_embedding_length", c.hidden_size),
            ("add_block_count", c.num_hidden_layers), ("add_feed_forward_length", c.intermediate_size),
            ("add_head_count", c.num_attention_heads), ("add_head_count_kv", kv_heads),
            ("add_key_length", head_dim), ("add_value_length", head_dim),
            ("add_rope_dimension_count", head_dim), ("add_rope_freq_base", _rope_theta(c)),
            ("add_layer_norm_rms_eps", float(c.rms_norm_eps)), ("add_vocab_size", c.vocab_size)]


# -- tensors -------------------------------------------------------------------------------------------
def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of each head from rotate-half order (x0..x(d/2-1), then the partners) to adjacent pairs, as
    llama.cpp's convert_hf_to_gguf does: its LLAMA graph rotates (x0, x1), (x2, x3), ..."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model, arch: str, config) -> dict[str, np.ndarray]:
    import gguf

    conv1d = {f"{n}.weight" for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    state = model.state_dict()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], _blocks(config, arch))
    out = {}
    for key, tensor in state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue  # causal-mask and RoPE buffers: llama.cpp builds its own
        if key == "lm_head.weight" and _tied(model, state, key):
            continue  # llama.cpp uses token_embd when output.weight is absent
        new = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise CandidateError(f"The gguf backend does not know where tensor '{key}' goes in a GGUF '{arch}' "
                                 "file (an unusual variant of the architecture?): use the torch or onnx backend.")
        array = tensor.detach().float().cpu().numpy()
        out[new] = np.ascontiguousarray(_layout(key, array, arch, config, conv1d))
    return out


def _blocks(config, arch: str) -> int:
    return int(config.n_layer if arch == "gpt2" else config.num_hidden_layers)


def _tied(model, state: dict, key: str) -> bool:
    import torch

    emb = model.get_input_embeddings().weight
    return state[key].data_ptr() == emb.data_ptr() or (state[key].shape == emb.shape and torch.equal(state[key], emb))


def _layout(key: str, array: np.ndarray, arch: str, config, conv1d: set) -> np.ndarray:
    if key in conv1d:  # GPT-2 Conv1D: (in, out) -> (out, in)
        return array.T
    if arch == "llama" and key.endswith(("q_proj.weight", "q_proj.bias")):
        return permute_rope(array, config.num_attention_heads)
    if arch == "llama" and key.endswith(("k_proj.weight", "k_proj.bias")):
        return permute_rope(array, getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    return array


# -- vocabulary ----------------------------------------------------------------------------------------
def vocab_for(tokenizer: Any, n_vocab: int, arch: str) -> Vocab:
    if tokenizer is None:
        return minimal_vocab(n_vocab)
    if hasattr(tokenizer, "save_pretrained"):  # a transformers tokenizer: gguf.vocab reads its files
        with tempfile.TemporaryDirectory(prefix="nbopt-tok-") as tmp:
            with library_failure("Saving the tokenizer"):
                tokenizer.save_pretrained(tmp)
            return folder_vocab(Path(tmp), n_vocab, arch)
    return folder_vocab(Path(tokenizer), n_vocab, arch)


def minimal_vocab(n_vocab: int) -> Vocab:
    """Placeholder tokens: unk / bos / eos, the 256 byte tokens SentencePiece files have, then '[i]'.
    llama.cpp loads it and runs token ids; it cannot turn text into those ids."""
    import gguf

    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(_BYTE_TOKENS)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * _BYTE_TOKENS
    tokens, types = tokens[:n_vocab], types[:n_vocab]
    tokens += [f"[{i}]".encode() for i in range(len(tokens), n_vocab)]
    types += [gguf.TokenType.NORMAL] * (n_vocab - len(types))
    note = (f"minimal vocabulary of {n_vocab} placeholder tokens (no tokenizer given): the file runs token ids, "
            "but llama.cpp cannot tokenize text with it")
    return Vocab("llama", tokens, [0.0] * n_vocab, [int(t) for t in types], None, "", note)


def folder_vocab(folder: Path, n_vocab: int, arch: str) -> Vocab:
    """The tokenizer in ``folder`` read by gguf.vocab (byte-level BPE, Llama HF or SentencePiece), padded
    with unused tokens up to the model's vocab size (embeddings are often padded)."""
    import gguf

    vocab = _read_vocab(folder)
    tokens, scores, types = (list(x) for x in zip(*vocab.all_tokens()))
    if len(tokens) > n_vocab:
        raise CandidateError(f"The tokenizer has {len(tokens)} tokens but the model's embedding only {n_vocab}: "
                             "give the tokenizer that belongs to this model.")
    pad = range(len(tokens), n_vocab)
    tokens += [f"[PAD{i}]".encode() for i in pad]
    scores += [-1000.0] * len(pad)
    types += [gguf.TokenType.UNUSED] * len(pad)
    special = gguf.SpecialVocab(folder, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=n_vocab)
    pre = "gpt-2" if arch == "gpt2" and vocab.tokenizer_model == "gpt2" else ""
    note = f"tokenizer vocabulary of {len(tokens) - len(pad)} tokens ({vocab.name})"
    return Vocab(vocab.tokenizer_model, tokens, [float(s) for s in scores], [int(t) for t in types], special, pre,
                 note)


def _read_vocab(folder: Path):
    from gguf.vocab import BpeVocab, LlamaHfVocab, SentencePieceVocab

    for kind in (BpeVocab, LlamaHfVocab, SentencePieceVocab):
        try:
            return kind(folder)
        except (FileNotFoundError, TypeError, ImportError, KeyError, ValueError):
            continue
    raise CandidateError(f"No tokenizer gguf can read in '{folder}' (tokenizer.json, vocab.json or "
                         "tokenizer.model): give the model's tokenizer folder, or none for a minimal vocabulary.")


# -- writing -------------------------------------------------------------------------------------------
def stored_type(name: str, array: np.ndarray, wanted: str) -> str:
    """The GGML type one tensor is stored in: vectors and the position table F32; a matrix whose rows
    are not whole blocks of the quantized type falls back to F16 (as llama.cpp's quantizer does)."""
    import gguf

    if array.ndim < 2 or name.startswith("position_embd") or wanted == "F32":
        return "F32"
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[wanted]][0]
    return wanted if array.shape[-1] % block == 0 else "F16"


def write(src: Source, path: Path, wanted: str) -> dict[str, int]:
    """Write ``src`` with its matrices in ``wanted`` (one of TYPES); returns tensor counts by stored type."""
    import gguf

    qt = gguf.GGMLQuantizationType
    path.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with library_failure("Writing the GGUF file"):
        writer = gguf.GGUFWriter(str(path), src.arch)
        writer.add_name(src.name)
        for method, value in src.hparams:
            getattr(writer, method)(value)
        writer.add_file_type(_file_type(wanted))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_vocab(writer, src.vocab)
        for name, array in src.tensors.items():
            kind = stored_type(name, array, wanted)
            counts[kind] = counts.get(kind, 0) + 1
            data = gguf.quants.quantize(array, qt[kind])
            writer.add_tensor(name, data, raw_dtype=qt[kind] if kind not in ("F32", "F16") else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return counts


def _add_vocab(writer, vocab: Vocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.special is not None:
        vocab.special.add_to_gguf(writer, quiet=True)
    else:  # the minimal vocabulary's own unk / bos / eos
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)


def _file_type(wanted: str):
    """llama.cpp's general.file_type for the recipe's matrix type."""
    import gguf

    ft = gguf.LlamaFileType
    return {"F32": ft.ALL_F32, "F16": ft.MOSTLY_F16, "Q8_0": ft.MOSTLY_Q8_0, "Q4_0": ft.MOSTLY_Q4_0}[wanted]
