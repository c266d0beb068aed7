"""Running a .gguf file with llama.cpp through llama-cpp-python, and the contract when it is not installed.

llama-cpp-python is an optional extra (``nbopt[llama]``): it builds llama.cpp from source, which takes
minutes. Without it every artifact carries ``measurable_info()`` = ``{"unmeasured": LLAMA_REASON}``: the
size is real, accuracy and latency stay empty (never estimated) and the row stays off the Pareto front.

The runner feeds token ids (``input_ids``) and returns the logits at every position, (batch, seq, vocab)
float32, as the torch model does, so the study's agreement, next-token and perplexity metrics compare them.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ...errors import CandidateError, NboptError, library_failure
from ...quiet import quiet
from ..common import default_threads
from ..common import token_ids as common_token_ids

LLAMA_REASON = "accuracy needs llama-cpp-python: pip install 'nbopt[llama]' (builds llama.cpp from source, minutes)"
MAX_CONTEXT = 4096  # llama.cpp allocates its KV cache for the whole context: no more than eval rows need


class NeedsLlamaCpp(CandidateError):
    """llama-cpp-python is not installed: the file's size is real, its accuracy and latency unknown."""


def can_run() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def measurable_info() -> dict:
    """What every GGUF artifact's ``info`` says about measuring it on this system."""
    return {} if can_run() else {"unmeasured": LLAMA_REASON}


def token_ids(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """(input_ids, attention_mask or None) from the runner's named inputs."""
    return common_token_ids(inputs, "GGUF")


def valid_length(mask: np.ndarray | None, length: int) -> int:
    """Tokens before the padding. llama.cpp runs one sequence from its first token, so only right padding
    works; the padded positions are run too (a causal model's earlier logits do not see them)."""
    if mask is None:
        return length
    mask = np.asarray(mask).reshape(-1) != 0
    n = int(mask.sum())
    if not mask[:n].all():
        raise CandidateError("llama.cpp runs a sequence from its first token: pad the token ids on the right "
                             "(tokenizer.padding_side = 'right').")
    return n


class LlamaCppRunner:
    """Runs a .gguf with ``llama_cpp.Llama``, one sequence at a time, returning every position's logits."""

    max_batch = None  # sequences run one by one, any batch size

    def __init__(self, path: Path, context_length: int, threads: int | None = None):
        if not can_run():
            raise NeedsLlamaCpp(f"This GGUF file was built and its size measured, but {LLAMA_REASON}.")
        import llama_cpp

        self.threads = threads or default_threads()
        self.n_ctx = min(int(context_length), MAX_CONTEXT)
        with library_failure("Loading the GGUF file in llama.cpp"), quiet():
            self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=self.n_ctx, n_batch=min(self.n_ctx, 512),
                                       logits_all=True, n_threads=self.threads, n_threads_batch=self.threads,
                                       seed=0, verbose=False)
        self.n_vocab = int(self.llm.n_vocab())

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        ids, mask = token_ids(inputs)
        if ids.shape[1] > self.n_ctx:
            raise CandidateError(f"The sequences have {ids.shape[1]} tokens, more than the {self.n_ctx} this runner "
                                 "holds: evaluate on shorter sequences.")
        for i, row in enumerate(ids):
            valid_length(None if mask is None else mask[i], len(row))  # right padding only
        return np.stack([self._logits(row) for row in ids])

    def _logits(self, row: np.ndarray) -> np.ndarray:
        if row.min() < 0 or row.max() >= self.n_vocab:
            raise NboptError(f"A token id ({int(row.max())}) lies outside the model's vocabulary of {self.n_vocab}: "
                             "tokenize the eval data with the model's own tokenizer.")
        with library_failure("llama.cpp evaluation"):
            self.llm.reset()
            self.llm.eval([int(t) for t in row])
            return np.array(self.llm.scores[: len(row)], dtype=np.float32)
