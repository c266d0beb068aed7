"""Small helpers every backend uses: thread count, library versions, hashing weights and files."""
from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import numpy as np


def default_threads() -> int:
    """Threads a runtime uses for one inference (``NBOPT_THREADS`` overrides the core count)."""
    env = os.environ.get("NBOPT_THREADS")
    return int(env) if env else (os.cpu_count() or 1)


def versions(*dists: str) -> dict[str, str]:
    """Installed versions of the given distributions (missing ones are left out)."""
    out = {}
    for dist in dists:
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def hash_arrays(arrays: Iterable[np.ndarray], extra: str = "") -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(extra.encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def hash_file(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_files(paths: Iterable[Path], tag: str) -> str:
    return hash_arrays([], tag + ":" + ":".join(hash_file(Path(p)) for p in paths))


def _tensor_arrays(tensors: dict) -> list[np.ndarray]:
    """Torch tensors by sorted name as numpy (float ones as float32), for hashing."""
    arrays = []
    for key in sorted(tensors):
        t = tensors[key]
        if hasattr(t, "detach"):
            t = t.detach().cpu()
            arrays.append(t.float().numpy() if t.dtype.is_floating_point else t.numpy())
    return arrays


def hash_torch_module(model: Any, tag: str) -> str:
    """A torch module's weights and structure (float tensors hashed as float32)."""
    state = model.state_dict()
    return hash_arrays(_tensor_arrays(state), extra=f"{tag}:{model!r}|" + ",".join(sorted(state)))


def hash_exported_program(program: Any, tag: str) -> str:
    """What a ``torch.export`` program computes: its graph (ops, shapes, order) and every weight and
    constant, so that editing ``forward()`` or any weight changes the hash."""
    tensors = {**dict(program.state_dict), **{f"const:{k}": v for k, v in program.constants.items()}}
    return hash_arrays(_tensor_arrays(tensors), extra=f"{tag}:{program.graph_module.code}|" + ",".join(sorted(tensors)))


def cache_off(model: Any) -> str:
    """Turn off a transformers model's key/value cache on nbopt's own copy (a cache object in the outputs
    cannot be exported, and one forward pass over the whole sequence needs none); '' or the note saying so."""
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", False):
        config.use_cache = False
        return "key/value cache turned off (use_cache=False): one forward pass over the whole sequence"
    return ""


# -- language models (the gguf and genai backends) -------------------------------------------------------
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def model_tokenizer(model: Any) -> Path | None:
    """The model's own folder when it holds tokenizer files (a model loaded from disk), else None."""
    folder = Path(str(getattr(model.config, "_name_or_path", "") or ""))
    try:
        if folder.is_dir() and any((folder / f).is_file() for f in TOKENIZER_FILES):
            return folder
    except OSError:
        return None
    return None


def token_ids(inputs: dict, runtime: str) -> tuple:
    """(input_ids, attention_mask or None) from a runner's named inputs, as int64 (N, T) arrays."""
    import numpy as np

    from ..errors import NboptError

    if "input_ids" in inputs:
        ids = inputs["input_ids"]
    elif len(inputs) == 1:
        ids = next(iter(inputs.values()))
    else:
        raise NboptError(f"The {runtime} model takes token ids: name one input 'input_ids' (the data has "
                         f"{', '.join(map(repr, inputs))}).")
    mask = inputs.get("attention_mask")
    ids = np.asarray(ids).astype(np.int64).reshape(len(ids), -1)
    return ids, None if mask is None else np.asarray(mask).reshape(ids.shape)


def check_token_input(example: Any, backend: str) -> None:
    """The eval data of a backend that runs token ids must name one input 'input_ids' (or have one input)."""
    from ..errors import NboptError

    names = list(getattr(example, "input_names", None) or [])
    if names and "input_ids" not in names and len(names) != 1:
        raise NboptError(f"The {backend} backend runs token ids: the eval data needs an 'input_ids' input (it has "
                         f"{', '.join(map(repr, names))}).")
