"""What every fine-tuning engine shares, framework-free: the settings a training recipe gives it, the
held-out split, progress reports from a worker to the study, Stop, and the check that eval examples are
never trained on.

Each framework has one engine (``nbopt.backends.torch.train.fit``, ``nbopt.backends.tflite.train.fit``);
every training recipe (qat, distill, resolution's fine-tune, structured pruning's fine-tune) calls it.
An engine runs inside a worker process: it reports progress by appending JSON lines to a file the study
tails (``Context.report``), and it looks for Stop between batches (``Context.should_stop``), a flag file the
study's process creates, so Stop reaches a training run in another process within one batch.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CandidateError

HOLDOUT_FRACTION = 0.1  # of train=, for early stopping and the choice of epoch; eval data never decides
MIN_HOLDOUT = 16
PROGRESS_FILE = "progress.jsonl"  # in the candidate's work folder


class TrainingStopped(CandidateError):
    """Stop was pressed while a candidate trained: the row fails with this sentence, the sweep ends."""


@dataclass(frozen=True)
class TrainSettings:
    """A training recipe's ``epochs``, ``lr`` and ``max_train_seconds``, and the engine's own knobs."""

    epochs: int
    lr: float
    max_train_seconds: float = 300.0
    batch_size: int = 32
    seed: int = 0

    @classmethod
    def of(cls, params: dict, seed: int = 0, **kw: Any) -> "TrainSettings":
        return cls(int(params["epochs"]), float(params["lr"]), float(params.get("max_train_seconds", 300)),
                   seed=seed, **kw)


@dataclass
class TrainReport:
    """What a training run did, for the row's notes and its ``train_seconds`` column."""

    epochs_run: int = 0
    epochs: int = 0
    seconds: float = 0.0
    examples: int = 0  # training examples per epoch (the held-out part excluded)
    holdout: int = 0
    best_epoch: int | None = None  # 1-based; the weights kept (lowest held-out loss)
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    holdout_losses: list[float] = field(default_factory=list)
    out_of_time: bool = False

    def note(self, what: str = "trained") -> str:
        """'trained 3/5 epochs on 900 train examples in 12.0 s (held-out loss 0.41, kept epoch 3; stopped at
        max_train_seconds)'."""
        parts = [f"{what} {self.epochs_run}/{self.epochs} epochs on {self.examples} train examples in "
                 f"{self.seconds:.1f} s"]
        if self.holdout_losses and self.best_epoch is not None:
            parts.append(f"held-out loss {self.holdout_losses[self.best_epoch - 1]:.4g} on {self.holdout} "
                         f"train examples held out, kept epoch {self.best_epoch}")
        if self.out_of_time:
            parts.append("stopped at max_train_seconds")
        head, rest = parts[0], parts[1:]
        return head + (f" ({'; '.join(rest)})" if rest else "")

    def info(self) -> dict:
        return {"train_seconds": round(self.seconds, 3), "train_epochs": self.epochs_run}


def split_holdout(data: Any, seed: int = 0, fraction: float = HOLDOUT_FRACTION) -> tuple[Any, Any]:
    """(fit, held-out) parts of the train data, seeded; held-out is None when train is too small to spare
    ``MIN_HOLDOUT`` examples (then the last epoch's weights are kept) or streams."""
    n = data.num_examples
    if n is None or n < 4 * MIN_HOLDOUT:
        return data, None
    k = max(MIN_HOLDOUT, int(round(n * fraction)))
    order = np.random.default_rng(seed).permutation(n)
    return _subset(data, sorted(order[k:].tolist()), "fit"), _subset(data, sorted(order[:k].tolist()), "holdout")


def _subset(data: Any, idx: list[int], part: str) -> Any:
    from .data import Data, _hash_text

    return Data(data.ds.select(idx), data.input_names, data.label_name, _hash_text(data.fingerprint, part, len(idx)))


def example_hashes(data: Any, limit: int = 200_000) -> set[bytes]:
    """One digest per example (its inputs' bytes), for the train/eval overlap check."""
    out: set[bytes] = set()
    for inputs, _ in data.batches(256):
        n = len(next(iter(inputs.values())))
        for i in range(n):
            h = hashlib.blake2b(digest_size=16)
            for name in sorted(inputs):
                a = np.ascontiguousarray(inputs[name][i])
                h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
            out.add(h.digest())
        if len(out) >= limit:
            break
    return out


def overlap(train: Any, eval_data: Any) -> int:
    """How many eval examples also appear (byte for byte) in the train data."""
    return len(example_hashes(eval_data) & example_hashes(train))


def check_divergence(loss: float, epoch: int, batch: int) -> None:
    if not np.isfinite(loss):
        raise CandidateError(f"Training diverged: the loss became {loss} at epoch {epoch}, batch {batch}; try a "
                             "smaller lr.")


class Clock:
    """The ``max_train_seconds`` budget of one run."""

    def __init__(self, budget: float):
        self.start, self.budget = time.perf_counter(), budget

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def out(self) -> bool:
        return self.seconds >= self.budget


# -- the channel between a worker's engine and the study ------------------------------------------------
def report(path: Path | None, **payload: Any) -> None:
    """Append one progress line (epoch, loss, seconds, ...) for the study to pick up."""
    if path is None:
        return
    with open(path, "a") as f:
        f.write(json.dumps(payload, default=float) + "\n")


def read_new(path: Path, offset: int) -> tuple[list[dict], int]:
    """Progress lines written since ``offset`` (whole lines only), and the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except OSError:
        return [], offset
    end = chunk.rfind(b"\n") + 1
    out = []
    for line in chunk[:end].splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out, offset + end
