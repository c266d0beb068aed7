"""Metrics: a name or a callable ``(outputs, labels) -> float``, called once with all outputs.

Language-model metrics read logits of shape (examples, positions, vocabulary). Their labels are the next
tokens: the input ids, with ``IGNORE_INDEX`` where a position is not scored (padding), as Hugging Face
writes them; the study derives them from ``input_ids`` and ``attention_mask``. Evaluation runs the whole
sequence in one forward pass without a KV cache: the logits are the same, only generation would be faster.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import NboptError


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray | None], float]
    greater_is_better: bool = True
    needs_labels: bool = True
    vs_baseline: bool = False  # compares with the baseline's outputs instead of labels

    def __call__(self, outputs: np.ndarray, labels: np.ndarray | None, mask: np.ndarray | None = None) -> float:
        """``mask``: the positions to score (examples, positions), for metrics that take one (next-token)."""
        if mask is not None and getattr(self.fn, "takes_mask", False):
            return float(self.fn(outputs, labels, mask=mask))
        return float(self.fn(outputs, labels))

    @property
    def relative(self) -> bool:
        """True when a drop is a fraction of the baseline's value (perplexity: 0.05 = 5 % higher)."""
        return bool(getattr(self.fn, "relative_drop", False))

    @property
    def next_tokens(self) -> bool:
        """True when the metric reads the next tokens of the input ids (language-model metrics)."""
        return bool(getattr(self.fn, "next_tokens", False))

    def drop(self, value: float, baseline: float) -> float:
        """How much worse than the baseline (positive = worse), whatever the direction; relative to the
        baseline's value for metrics that say so (perplexity), since a perplexity's scale depends on the data."""
        diff = baseline - value if self.greater_is_better else value - baseline
        return diff / np.maximum(np.abs(baseline), 1e-12) if self.relative else diff


def _classes(outputs: np.ndarray) -> np.ndarray:
    outputs = np.asarray(outputs)
    if outputs.ndim == 1 or outputs.shape[-1] == 1:  # one logit: binary
        return (outputs.reshape(len(outputs)) > 0).astype(np.int64)
    return outputs.reshape(len(outputs), -1).argmax(-1)


def accuracy(outputs, labels):
    return float(np.mean(_classes(outputs) == np.asarray(labels).reshape(-1)))


def top5(outputs, labels):
    top = np.argsort(-np.asarray(outputs).reshape(len(outputs), -1), axis=-1)[:, :5]
    return float(np.mean([lab in row for lab, row in zip(np.asarray(labels).reshape(-1), top)]))


def f1(outputs, labels):
    from sklearn.metrics import f1_score

    return float(f1_score(np.asarray(labels).reshape(-1), _classes(outputs), average="macro"))


def mse(outputs, labels):
    return float(np.mean((np.asarray(outputs).reshape(np.shape(labels)) - labels) ** 2))


def mae(outputs, labels):
    return float(np.mean(np.abs(np.asarray(outputs).reshape(np.shape(labels)) - labels)))


def _vectors(outputs) -> np.ndarray:
    """One row per compared vector: per example, or per position for sequence outputs (N, T, C)."""
    a = np.asarray(outputs, dtype=np.float64)
    return a.reshape(-1, a.shape[-1]) if a.ndim == 3 else a.reshape(len(a), -1)


def cosine(outputs, reference):
    """Mean cosine similarity with the baseline: per example, or per position of (N, T, C) outputs."""
    a, b = _vectors(outputs), _vectors(reference)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)))


def agreement(outputs, reference):
    """Share of predictions equal to the baseline's: per example, or per position of (N, T, C) outputs
    (flattening a sequence would compare one argmax over all positions and classes)."""
    a, b = np.asarray(outputs), np.asarray(reference)
    if a.ndim == 3:
        return float(np.mean(a.argmax(-1) == b.argmax(-1)))
    return float(np.mean(_classes(a) == _classes(b)))


# -- language models -----------------------------------------------------------------------------------
IGNORE_INDEX = -100  # a label that is not scored (padding), as Hugging Face's losses read it


def _check_logits(outputs: np.ndarray, what: str) -> None:
    if outputs.ndim != 3:
        raise ValueError(f"metric='{what}' needs language-model logits of shape (examples, positions, vocabulary), "
                         f"but the model's output has shape {outputs.shape}: give a model with a language-model "
                         "head (e.g. AutoModelForCausalLM).")


def scored_positions(labels, outputs) -> np.ndarray | None:
    """The positions whose next token is scored, (N, T) bool: position t predicts label t+1 (the last
    position has no known next token). None when ``labels`` are not next tokens of these outputs."""
    lab, out = (None if labels is None else np.asarray(labels)), np.asarray(outputs)
    if lab is None or out.ndim != 3 or lab.shape != out.shape[:2] or lab.dtype.kind not in "iu":
        return None
    mask = np.zeros(lab.shape, dtype=bool)
    mask[:, :-1] = lab[:, 1:] != IGNORE_INDEX
    return mask


def token_nll(outputs, labels, chunk_elements: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Per example: the summed negative log-likelihood of its scored next tokens, and how many there are.
    Computed in float64, a few million logits at a time (a real vocabulary is 50k wide)."""
    logits, lab = np.asarray(outputs), np.asarray(labels)
    _check_logits(logits, "perplexity")
    if lab.shape != logits.shape[:2]:
        raise ValueError(f"metric='perplexity' needs one next token per position, but the labels have shape "
                         f"{lab.shape} and the logits {logits.shape}: drop the label column (nbopt takes the "
                         "next tokens from input_ids).")
    n, t, vocab = logits.shape
    if lab.max(initial=0) >= vocab:
        raise ValueError(f"Token id {int(lab.max())} is outside the model's {vocab} output logits: the model "
                         "has no language-model head over its vocabulary, or the ids come from another tokenizer.")
    targets, scored = lab[:, 1:], lab[:, 1:] != IGNORE_INDEX
    rows = logits[:, :-1].reshape(-1, vocab)
    picks, keep = np.where(scored, targets, 0).reshape(-1), scored.reshape(-1)
    nll = np.zeros(len(rows))
    step = max(1, chunk_elements // vocab)
    for s in range(0, len(rows), step):
        x = rows[s:s + step].astype(np.float64)
        top = x.max(axis=1, keepdims=True)
        lse = np.log(np.exp(x - top).sum(axis=1)) + top[:, 0]
        nll[s:s + step] = lse - x[np.arange(len(x)), picks[s:s + step]]
    nll = np.where(keep, nll, 0.0).reshape(n, t - 1)
    return nll.sum(axis=1), scored.sum(axis=1)


def perplexity(outputs, labels):
    """exp(mean negative log-likelihood of the next token) over the scored positions; lower is better."""
    sums, counts = token_nll(outputs, labels)
    if counts.sum() == 0:
        raise ValueError("metric='perplexity' found no next token to score: give sequences of 2 tokens or more.")
    return float(np.exp(sums.sum() / counts.sum()))


def next_token(outputs, reference, mask=None):
    """Share of positions where the top-1 next token equals the baseline's (only ``mask``'s positions:
    the study passes those whose next token is not padding)."""
    a, b = np.asarray(outputs), np.asarray(reference)
    _check_logits(a, "next-token")
    same = a.argmax(-1) == b.argmax(-1)
    if mask is None:
        return float(same.mean())
    mask = np.asarray(mask, dtype=bool)
    return float(same[mask].mean()) if mask.any() else 1.0


# the direction and the data these read, declared on the function so that a reopened study keeps them
perplexity.greater_is_better, perplexity.relative_drop, perplexity.next_tokens = False, True, True
next_token.takes_mask, next_token.next_tokens = True, True


METRICS = {
    "accuracy": Metric("accuracy", accuracy),
    "top5": Metric("top5", top5),
    "f1": Metric("f1", f1),
    "mse": Metric("mse", mse, greater_is_better=False),
    "mae": Metric("mae", mae, greater_is_better=False),
    "cosine": Metric("cosine", cosine, needs_labels=False, vs_baseline=True),
    "agreement": Metric("agreement", agreement, needs_labels=False, vs_baseline=True),
    "perplexity": Metric("perplexity", perplexity, greater_is_better=False),
    "next-token": Metric("next-token", next_token, needs_labels=False, vs_baseline=True),
}


def get_metric(metric: str | Callable | Metric) -> Metric:
    """A metric by name, or a callable (higher is better unless it has ``greater_is_better = False``)."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        name = getattr(metric, "__name__", "custom")
        return Metric(name, metric, greater_is_better=getattr(metric, "greater_is_better", True))
    if metric not in METRICS:
        raise NboptError(f"Unknown metric '{metric}'; known metrics: {', '.join(METRICS)} (or a callable "
                         "(outputs, labels) -> float).")
    return METRICS[metric]
