"""Running a built folder with onnxruntime-genai: token ids in, every position's logits out.

One forward pass per sequence, no generation: a ``Generator`` is given the whole sequence with
``append_tokens`` and its ``logits`` output read, (1, positions, vocabulary), as the torch model returns
them, so the study's perplexity, next-token and agreement metrics compare them. Sequences run one at a
time: with a batch of several, onnxruntime-genai takes every token equal to the pad id for padding (a real
token of that id would be masked), while one sequence runs every token as given.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import CandidateError, NboptError, library_failure
from ...quiet import quiet
from ..common import default_threads
from ..common import token_ids as common_token_ids


def token_ids(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """(input_ids, attention_mask or None) from the runner's named inputs."""
    return common_token_ids(inputs, "genai")


def check_right_padding(mask: np.ndarray | None) -> None:
    """A sequence runs from its first token: padding must come after the tokens (a causal model's earlier
    logits do not see it), never before them."""
    if mask is None:
        return
    for row in np.asarray(mask) != 0:
        n = int(row.sum())
        if not row[:n].all():
            raise CandidateError("onnxruntime-genai runs a sequence from its first token: pad the token ids on the "
                                 "right (tokenizer.padding_side = 'right').")


class GenAIRunner:
    """Runs a model folder with ``onnxruntime_genai.Model``, one sequence at a time."""

    max_batch = None  # sequences run one by one, any batch size

    def __init__(self, folder: Path, threads: int | None = None):
        import onnxruntime_genai as og

        self.og = og
        self.threads = threads or default_threads()
        config = json.loads((Path(folder) / "genai_config.json").read_text())["model"]
        self.n_vocab = int(config["vocab_size"])
        self.context = int(config.get("context_length") or 0)
        with library_failure("Loading the model in onnxruntime-genai"), quiet():
            og_config = og.Config(str(folder))
            og_config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": self.threads, "inter_op_num_threads": 1}}}}))
            self.model = og.Model(og_config)

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        ids, mask = token_ids(inputs)
        check_right_padding(mask)
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            raise NboptError(f"A token id ({int(ids.max())}) lies outside the model's vocabulary of {self.n_vocab}: "
                             "tokenize the eval data with the model's own tokenizer.")
        if self.context and ids.shape[1] > self.context:
            raise CandidateError(f"The sequences have {ids.shape[1]} tokens, more than the model's context of "
                                 f"{self.context}: evaluate on shorter sequences.")
        return np.stack([self._logits(row) for row in ids])

    def _logits(self, row: np.ndarray) -> np.ndarray:
        og = self.og
        with library_failure("onnxruntime-genai evaluation"):
            params = og.GeneratorParams(self.model)
            params.set_search_options(max_length=len(row), batch_size=1)
            generator = og.Generator(self.model, params)
            generator.append_tokens(row.astype(np.int32)[None])
            logits = np.asarray(generator.get_output("logits"))
        return logits.reshape(len(row), -1).astype(np.float32)  # fp16 models return fp16 logits
