"""A fake in-memory backend for the fast test tier: a numpy linear classifier stored as an ``.npz`` file.

It implements the whole backend protocol (``nbopt.backends.base``) with numpy only, so the study, the store,
the Pareto front, the report, the magic and the panel run in milliseconds. Its recipes really change the
file (fp16 halves the weights, int8 quarters them, pruning zeroes them), so sizes, ratios and accuracy
drops are true measurements of the fake artifacts. Registered in ``conftest.py`` as backend ``"fake"``.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbopt.backends.base import Artifact, Backend, Context, Param
from nbopt.backends.common import hash_arrays
from nbopt.errors import CandidateError, NboptError
from nbopt.recipes import Recipe


@dataclass(eq=False)
class FakeModel:
    """logits = x.reshape(n, -1) @ weights + bias; ``weights`` is (features, classes)."""

    weights: np.ndarray
    bias: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32).reshape(len(x), -1) @ self.weights + self.bias


class FakeRunner:
    """Loads the .npz (no pickle) and runs it with numpy; int8 weights are dequantized, int8-static inputs
    are clipped to the calibrated range and rounded to 256 levels in it."""

    threads = 1
    max_batch = None

    def __init__(self, path):
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        self.w = arrays["weights"].astype(np.float32) * arrays.get("scale", np.float32(1.0))
        self.b = arrays["bias"].astype(np.float32)
        self.range = arrays.get("input_range")  # (lo, hi) from the calibration data, or None
        if "kept_idx" in arrays:  # mixed-precision: these columns stayed float
            self.w[:, arrays["kept_idx"]] = arrays["kept"]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        (x,) = inputs.values()
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        if self.range is not None:
            lo, hi = (float(v) for v in self.range)
            step = (hi - lo) / 255 or 1.0
            x = lo + np.round((np.clip(x, lo, hi) - lo) / step) * step
        return x @ self.w + self.b


class FakeBackend(Backend):
    name = "fake"

    @classmethod
    def accepts(cls, model: Any) -> bool:
        return isinstance(model, FakeModel)

    def prepare(self, model: FakeModel, example: Any) -> FakeModel:
        if not example.single_input:
            raise NboptError(f"The fake model takes one input array, but the eval data has inputs "
                             f"{example.input_names}.")
        shape = next(iter(example.example(1).values())).shape[1:]
        if int(np.prod(shape)) != model.weights.shape[0]:
            raise NboptError(f"The fake model takes {model.weights.shape[0]} input values per example, but the eval "
                             f"data's input has shape {tuple(shape)}: give inputs of that size.")
        return FakeModel(model.weights.astype(np.float32).copy(), model.bias.astype(np.float32).copy())

    def fingerprint(self, model: FakeModel) -> str:  # the user's model or the prepared one: the same arrays
        return hash_arrays([model.weights, model.bias], "fake")

    def baseline(self, prepared: FakeModel, ctx: Context) -> Artifact:
        return _save(ctx, "model.npz", "float32 weights", weights=prepared.weights, bias=prepared.bias)

    def load(self, artifact: Artifact) -> FakeRunner:
        return FakeRunner(artifact.path)

    def default_recipes(self, prepared: FakeModel) -> list[Recipe]:
        return [Recipe("fp16"), Recipe("int8-dynamic"), Recipe("int8-static"), Recipe("prune-unstructured")]

    def versions(self) -> dict[str, str]:
        return {"fake": "1"}

    # mixed-precision and sensitivity: a "layer" of the fake is one output class's weight column; only
    # "fake-mixed" says it has the capability (the panel's sensitivity section is tested without it)
    def sensitivity(self, prepared: FakeModel, calib: Any):
        """Each weight column's int8 (per-channel) error on the calibration inputs, most sensitive first."""
        import pandas as pd

        x = np.concatenate([np.asarray(v).reshape(len(v), -1) for inputs, _ in calib.batches(256)
                            for v in inputs.values()])
        q, scale = _int8(prepared.weights, per_channel=True)
        err = np.linalg.norm(x @ (q * scale - prepared.weights), axis=0) / np.maximum(
            np.linalg.norm(x @ prepared.weights, axis=0), 1e-12)
        df = pd.DataFrame({"node": [f"class{i}" for i in range(len(err))], "op_type": "column",
                           "params": prepared.weights.shape[0], "rel_error": err})
        df = df.sort_values("rel_error", ascending=False, kind="stable").reset_index(drop=True)
        df["rank"] = np.arange(1, len(df) + 1)
        return df

    def sensitivity_cost(self, prepared: FakeModel, calib: Any) -> tuple[bool, int]:
        return False, prepared.weights.shape[1]


def _save(ctx: Context, filename: str, notes: str, info: dict | None = None, **arrays) -> Artifact:
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    path = ctx.workdir / filename
    np.savez(path, **arrays)  # plain arrays: loaded back with allow_pickle=False
    return Artifact(path, "npz", notes=notes, info=info or {})


def _int8(w: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights and their scale: one per output class (per_channel) or one for the tensor."""
    peak = np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max(keepdims=True)
    scale = (np.maximum(peak, 1e-12) / 127).astype(np.float32)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


# -- recipes: shared parameters come from nbopt.recipes.RECIPES; ``honours`` says what this fake can do ----
@FakeBackend.recipe("fp16")
def _fp16(backend, prepared: FakeModel, params: dict, ctx: Context) -> Artifact:
    return _save(ctx, "model_fp16.npz", "float16 weights", weights=prepared.weights.astype(np.float16),
                 bias=prepared.bias)


@FakeBackend.recipe("int8-dynamic")
def _int8_dynamic(backend, prepared: FakeModel, params: dict, ctx: Context) -> Artifact:
    q, scale = _int8(prepared.weights, params["per_channel"])
    return _save(ctx, "model_int8.npz", f"int8 weights ({scale.size} scale(s))", weights=q, scale=scale,
                 bias=prepared.bias)


@FakeBackend.recipe("int8-static", honours={"calibration": ("minmax",), "activations": ("int8",)})
def _int8_static(backend, prepared: FakeModel, params: dict, ctx: Context) -> Artifact:
    q, scale = _int8(prepared.weights, params["per_channel"])
    x = np.concatenate([np.asarray(v).reshape(len(v), -1) for inputs, _ in ctx.calib.batches(256)
                        for v in inputs.values()])
    lo, hi = float(x.min()), float(x.max())  # minmax calibration of the one activation: the input
    return _save(ctx, "model_int8_static.npz", f"int8 weights, inputs in [{lo:.3g}, {hi:.3g}]", weights=q,
                 scale=scale, bias=prepared.bias, input_range=np.array([lo, hi], np.float32))


@FakeBackend.recipe("mixed-precision", honours={"mode": ("dynamic",), "per_channel": (True, False)})
def _mixed(backend, prepared: FakeModel, params: dict, ctx: Context) -> Artifact:
    """Per-tensor int8 with the ``keep_float`` most sensitive columns left float (stored as float32)."""
    keep = params["keep_float"]
    k = 1 if keep == "auto" else int(keep)
    kept = [int(n[5:]) for n in backend.sensitivity(prepared, ctx.calib)["node"][:k]]
    q, scale = _int8(prepared.weights, per_channel=params["per_channel"] is True)
    return _save(ctx, "model_mixed.npz", f"int8 with {len(kept)} column(s) float", {"kept_float": len(kept)},
                 weights=q, scale=scale, bias=prepared.bias, kept=prepared.weights[:, kept],
                 kept_idx=np.array(kept, np.int64))


@FakeBackend.recipe("prune-unstructured")
def _prune(backend, prepared: FakeModel, params: dict, ctx: Context) -> Artifact:
    w = prepared.weights.copy()
    w.flat[np.argsort(np.abs(w), axis=None)[: int(round(params["amount"] * w.size))]] = 0.0
    art = _save(ctx, "model_pruned.npz", f"{params['amount']:.0%} of weights zeroed", weights=w, bias=prepared.bias)
    art.info.update(sparsity=float((w == 0).mean()), size_compressed_bytes=len(zlib.compress(art.path.read_bytes())))
    return art


class MixedFakeBackend(FakeBackend):
    """The fake with per-layer sensitivity: search="auto" climbs to its keep-in-float rungs."""

    name = "fake-mixed"
    supports_sensitivity = True


class WideFakeBackend(FakeBackend):
    """A second fake backend ("fake-wide": float64 files) for studies that compare two backends."""

    name = "fake-wide"

    def baseline(self, prepared: FakeModel, ctx: Context) -> Artifact:
        return _save(ctx, "model64.npz", "float64 weights", weights=prepared.weights.astype(np.float64),
                     bias=prepared.bias)




# -- a training recipe on the fake: softmax regression with int8 fake-quantized weights (numpy) --------
@FakeBackend.recipe("qat", honours={"bits": (8,)},
                    batch_delay=Param(0.0, low=0.0, high=5.0, help="seconds of sleep per batch (Stop tests)"))
def _qat(backend, prepared: FakeModel, params: dict, ctx: Context) -> Artifact:
    """Trains through the shared pieces every engine uses (held-out split, clock, progress, Stop, NaN)."""
    import time

    from nbopt.training import (Clock, TrainReport, TrainSettings, TrainingStopped, check_divergence,
                                split_holdout)

    s = TrainSettings.of(params, ctx.seed)
    if not ctx.train.has_labels:
        raise CandidateError("The fake qat needs labelled train= data (cross-entropy).")
    fit, held = split_holdout(ctx.train, s.seed)
    w, b = prepared.weights.copy(), prepared.bias.copy()
    rep, clock = TrainReport(epochs=s.epochs, holdout=held.num_examples if held is not None else 0), Clock(s.max_train_seconds)
    for epoch in range(1, s.epochs + 1):
        losses = []
        for i, (inputs, labels) in enumerate(fit.batches(s.batch_size), 1):
            if ctx.should_stop():
                raise TrainingStopped(f"Stopped by the user during qat (epoch {epoch}/{s.epochs}, batch {i}).")
            time.sleep(float(params["batch_delay"]))
            x = next(iter(inputs.values())).reshape(len(labels), -1).astype(np.float32)
            q, scale = _int8(w, True)
            logits = x @ (q * scale) + b  # forward through the quantized weights, gradient straight through
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            loss = float(-np.log(p[np.arange(len(labels)), labels] + 1e-12).mean())
            check_divergence(loss if np.isfinite(logits).all() else float("nan"), epoch, i)
            p[np.arange(len(labels)), labels] -= 1
            w -= s.lr * x.T @ p / len(labels)
            b -= s.lr * p.mean(0)
            losses.append(loss)
            if epoch == 1:
                rep.examples += len(labels)
        rep.epochs_run, rep.best_epoch = epoch, epoch
        rep.losses.append(float(np.mean(losses)))
        ctx.report(phase="qat", epoch=epoch, epochs=s.epochs, loss=rep.losses[-1], seconds=clock.seconds)
        if clock.out:
            rep.out_of_time = True
            break
    rep.seconds = clock.seconds
    q, scale = _int8(w, True)
    art = _save(ctx, "model_qat.npz", rep.note("qat"), weights=q, scale=scale, bias=b)
    art.info.update(rep.info())
    return art


class TrainingFakeBackend(FakeBackend):
    """"fake-train": the fake whose default sweep includes qat (skipped without train=)."""

    name = "fake-train"

    def default_recipes(self, prepared: FakeModel) -> list[Recipe]:
        return [Recipe("int8-dynamic"), Recipe("qat")]


TrainingFakeBackend.handlers.update(FakeBackend.handlers)
WideFakeBackend.handlers.update(FakeBackend.handlers)  # the same recipes (subclasses start with none)
MixedFakeBackend.handlers.update(FakeBackend.handlers)
