"""The Keras fine-tuning engine: every Keras training recipe on the tflite backend (qat, distill,
resolution's fine-tune) trains through ``fit``.

It is ``model.fit`` with one callback that adds what nbopt's engines share (``nbopt.training``): progress to
the study after every epoch and every few seconds, Stop between batches, the ``max_train_seconds`` budget, a
NaN loss failing the row with its epoch, and a held-out part of the train data (never eval data) choosing the
epoch whose weights are kept. The same code drives Keras 3 and tf-keras (Keras 2, which quantization-aware
training needs): the caller passes the ``keras`` module its model belongs to. Both run on TensorFlow, so
batches come from one ``tf.data`` pipeline and losses are written with TensorFlow ops.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ...training import Clock, TrainReport, TrainSettings, TrainingStopped, check_divergence, split_holdout
from ..base import Context

REPORT_EVERY_S = 2.0

# (inputs: dict name -> array, labels or None) -> the batch's training target (labels, teacher outputs, ...)
Target = Callable[[dict, Any], np.ndarray]


def fit(model, data, loss, settings: TrainSettings, ctx: Context, *, keras=None, what: str = "training",
        target: Target | None = None, transform: Callable[[dict], dict] | None = None) -> TrainReport:
    """Train ``model`` in place on ``data`` (an ``nbopt.data.Data``) with ``loss(y_true, y_pred)``; the weights
    of the epoch with the lowest held-out loss are loaded at the end.

    ``target`` makes each batch's ``y_true`` (default: its labels); ``transform`` rewrites each batch's numpy
    inputs first (resized images); the target is made from the inputs as given (a teacher sees full-size
    images)."""
    if keras is None:
        import keras
    keras.utils.set_random_seed(settings.seed)
    data, holdout = split_holdout(data, settings.seed)
    report = TrainReport(epochs=settings.epochs, examples=data.num_examples or 0,
                         holdout=holdout.num_examples if holdout is not None else 0)
    names = input_order(model, data.input_names)
    pipe = _Pipeline(names, target, transform, settings.batch_size)
    # no XLA: compiling a network takes longer than a short fine-tune (MobileNetV3: ~20 s on 2 cores)
    model.compile(optimizer=keras.optimizers.Adam(settings.lr), loss=loss, **_no_jit(keras))
    watch = _callback(keras, ctx, settings, report, what)
    model.fit(pipe.dataset(data, shuffle_seed=settings.seed), epochs=settings.epochs, verbose=0, shuffle=False,
              validation_data=pipe.dataset(holdout) if holdout is not None else None, callbacks=[watch])
    if watch.best is not None:
        model.set_weights(watch.best)
    report.seconds = watch.clock.seconds
    return report


def input_order(model, data_names: list[str]) -> list[str]:
    """The data's input names in the order the model takes its inputs (by name where they match)."""
    model_names = [getattr(t, "name", "").split(":")[0] for t in getattr(model, "inputs", None) or []]
    if len(data_names) > 1 and set(data_names) <= set(model_names):
        return [n for n in model_names if n in data_names]
    return list(data_names)


def feed(inputs: dict, names: list[str]):
    """A batch as a Keras model takes it: one array, or a list in the model's input order."""
    x = [np.asarray(inputs[n]) for n in names]
    return x[0] if len(x) == 1 else x


class _Pipeline:
    """nbopt ``Data`` -> ``tf.data`` batches of (model inputs, target), reshuffled every epoch."""

    def __init__(self, names: list[str], target: Target | None, transform, batch_size: int):
        self.names, self.target, self.transform, self.batch_size = names, target, transform, batch_size

    def batch(self, inputs: dict, labels) -> tuple:
        y = self.target(inputs, labels) if self.target is not None else labels  # from the inputs as given
        if y is None:
            raise ValueError("training needs labels or a target function")
        if self.transform is not None:
            inputs = self.transform(inputs)
        x = feed(inputs, self.names)
        return (tuple(x) if isinstance(x, list) else x), np.asarray(y)

    def dataset(self, data, shuffle_seed: int | None = None):
        import tensorflow as tf

        epoch = [0]

        def gen():
            d = data
            if shuffle_seed is not None and not data.streaming:  # a new order every epoch, seeded
                from ...data import Data

                d = Data(data.ds.shuffle(seed=shuffle_seed + epoch[0]), data.input_names, data.label_name,
                         data.fingerprint)
                epoch[0] += 1
            for inputs, labels in d.batches(self.batch_size):
                yield self.batch(inputs, labels)

        x, y = self.batch(*next(data.batches(2)))
        spec = tf.nest.map_structure(lambda a: tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)), (x, y))
        ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
        if not data.streaming:  # a known length: Keras counts the steps instead of running out of data
            ds = ds.apply(tf.data.experimental.assert_cardinality(-(-data.num_examples // self.batch_size)))
        return ds.prefetch(2)


def _callback(keras, ctx: Context, settings: TrainSettings, report: TrainReport, what: str):
    """The keras Callback (of the given keras module) that does progress, Stop, the time budget, NaN and
    the choice of the kept epoch."""

    class Watch(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.clock, self.best, self.best_loss = Clock(settings.max_train_seconds), None, float("inf")
            self.epoch, self.batch, self.last = 1, 0, time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.batch = epoch + 1, 0

        def on_train_batch_begin(self, batch, logs=None):
            self.batch = batch + 1
            if ctx.should_stop():
                raise TrainingStopped(f"Stopped by the user during {what} (epoch {self.epoch}/{settings.epochs}, "
                                      f"batch {self.batch}).")

        def on_train_batch_end(self, batch, logs=None):
            loss = float((logs or {}).get("loss", 0.0))
            check_divergence(loss, self.epoch, self.batch)
            if time.perf_counter() - self.last > REPORT_EVERY_S:
                self.last = time.perf_counter()
                ctx.report(phase=what, epoch=self.epoch, epochs=settings.epochs, batch=self.batch, loss=loss,
                           seconds=round(self.clock.seconds, 2))
            if self.clock.out:
                self.model.stop_training = True  # Keras ends the epoch after this batch (held-out loss still runs)
                report.out_of_time = (self.epoch < settings.epochs
                                      or self.batch * settings.batch_size < report.examples)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            loss = float(logs.get("loss", np.nan))
            check_divergence(loss, self.epoch, self.batch)
            report.epochs_run = self.epoch
            report.losses.append(loss)
            held = logs.get("val_loss")
            if held is not None:
                held = float(held)
                check_divergence(held, self.epoch, 0)
                report.holdout_losses.append(held)
                if held < self.best_loss:
                    self.best_loss, report.best_epoch = held, self.epoch
                    self.best = self.model.get_weights()
            else:
                report.best_epoch = self.epoch
            ctx.report(phase=what, epoch=self.epoch, epochs=settings.epochs, loss=loss, holdout_loss=held,
                       seconds=round(self.clock.seconds, 2))

    return Watch()


# -- what to train on ---------------------------------------------------------------------------------
def objective(reference, data, names: list[str]) -> tuple[Any, Target | None, str]:
    """(loss, target, how) for fine-tuning a model that computes what ``reference`` computes: the task loss on
    the train labels when there are any, else distillation from ``reference``'s outputs (the float model, the
    model at full resolution), on the inputs as given."""
    inputs, labels = next(data.batches(8))
    out = np.asarray(reference(feed(inputs, names), training=False))
    probabilities = ends_in_softmax(reference, out)
    if data.has_labels:
        classes = is_class_labels(labels, out.shape)
        if classes or np.asarray(labels).dtype.kind == "f":
            return task_loss(classes, probabilities), None, "on the train labels"

    def teacher(batch: dict) -> np.ndarray:
        y = np.asarray(reference(feed(batch, names), training=False))
        return np.log(np.clip(y, 1e-7, 1.0)) if probabilities else y

    if out.ndim == 2 and out.shape[1] > 1:
        return (distillation_loss(out.shape[1], 1.0, False, student_probabilities=probabilities),
                distill_target(teacher, False), "distilled from the original model's outputs (no train labels)")
    return regression_distillation_loss(), distill_target(teacher, False), \
        "trained to match the original model's outputs (MSE; no train labels)"


# -- losses (TensorFlow ops: the same code under Keras 3 and tf-keras) ----------------------------------
def task_loss(classes: bool, probabilities: bool):
    """Cross-entropy on class labels (on logits, or on probabilities when the model ends in softmax); MSE on
    regression targets."""
    import tensorflow as tf

    def loss(y_true, y_pred):
        if not classes:
            return tf.reduce_mean(tf.square(tf.cast(tf.reshape(y_true, tf.shape(y_pred)), y_pred.dtype) - y_pred))
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        return tf.reduce_mean(_sparse_ce(labels, y_pred, probabilities))
    return loss


def _sparse_ce(labels, y_pred, probabilities: bool):
    import tensorflow as tf

    logits = log_probs(y_pred) if probabilities else y_pred
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def log_probs(probs):
    """Logits of a softmax output, up to a constant per row (which softmax and KL ignore): log p."""
    import tensorflow as tf

    return tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0))


def distillation_loss(classes: int, temperature: float, with_labels: bool, student_probabilities: bool = False):
    """Temperature-scaled KL between teacher and student logits (T^2-scaled, Hinton et al.), plus
    cross-entropy on the labels when there are any. ``y_true`` is the teacher's logits, followed by the
    label as one more column (``distill_target``)."""
    import tensorflow as tf

    t = float(temperature)

    def loss(y_true, y_pred):
        logits = log_probs(y_pred) if student_probabilities else y_pred
        teacher = y_true[:, :classes]
        log_t, log_s = tf.nn.log_softmax(teacher / t), tf.nn.log_softmax(logits / t)
        kd = tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1) * t * t
        if with_labels:
            labels = tf.cast(y_true[:, classes], tf.int32)
            kd = kd + tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        return tf.reduce_mean(kd)
    return loss


def regression_distillation_loss():
    """Outputs that are not class scores: the student's outputs match the teacher's (MSE)."""
    import tensorflow as tf

    def loss(y_true, y_pred):
        return tf.reduce_mean(tf.square(tf.reshape(y_true, tf.shape(y_pred)) - y_pred))
    return loss


def distill_target(teacher_logits: Callable[[dict], np.ndarray], with_labels: bool) -> Target:
    """A ``Target``: the teacher's logits for the batch (and the label as a last column)."""

    def target(inputs: dict, labels) -> np.ndarray:
        t = np.asarray(teacher_logits(inputs), np.float32)
        if with_labels and labels is not None:
            t = np.concatenate([t.reshape(len(t), -1), np.asarray(labels, np.float32).reshape(-1, 1)], axis=1)
        return t
    return target


def ends_in_softmax(model, sample_output: np.ndarray | None = None) -> bool:
    """True when the model outputs probabilities: its last layer is a softmax (a Softmax layer or an
    activation='softmax'), or, failing that, its outputs on a sample are non-negative rows summing to 1."""
    layers = getattr(model, "layers", None) or []
    if layers:
        last = layers[-1]
        act = getattr(last, "activation", None)
        if type(last).__name__ == "Softmax" or getattr(act, "__name__", "") == "softmax":
            return True
    if sample_output is not None and sample_output.ndim == 2 and sample_output.shape[1] > 1:
        s = np.asarray(sample_output, np.float64)
        return bool((s >= 0).all() and np.allclose(s.sum(axis=1), 1.0, atol=1e-3))
    return False


def is_class_labels(labels, out_shape) -> bool:
    return labels is not None and np.asarray(labels).dtype.kind in "iub" and len(out_shape) == 2


def _no_jit(keras) -> dict:
    """``jit_compile=False`` where compile() takes it (Keras 3 and tf-keras both do)."""
    import inspect

    return {"jit_compile": False} if "jit_compile" in inspect.signature(keras.Model.compile).parameters else {}
