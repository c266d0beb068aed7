"""The PyTorch fine-tuning engine: every torch training recipe (qat, distill, resolution's fine-tune,
structured pruning's fine-tune) trains through ``fit``.

Seeded; ``epochs`` and a ``max_train_seconds`` budget; a held-out part of the train data (never eval data)
chooses the epoch whose weights are kept; progress (epoch, loss, seconds) goes to the study after every
epoch and every few seconds; Stop is looked for between batches; a NaN loss fails the row naming the epoch.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable

import numpy as np

from ...training import Clock, TrainReport, TrainSettings, TrainingStopped, check_divergence, split_holdout
from ..base import Context
from .runner import first_output, import_torch, to_tensors

LossFn = Callable[[Any, tuple, Any], Any]  # (model, input tensors, label tensor or None) -> scalar loss
REPORT_EVERY_S = 2.0


def fit(model, data, input_names: list[str], loss_fn: LossFn, settings: TrainSettings, ctx: Context, *,
        what: str = "training", train_mode: Callable | None = None, eval_mode: Callable | None = None,
        transform: Callable[[dict], dict] | None = None) -> TrainReport:
    """Train ``model`` in place on ``data``; the weights of the best held-out epoch are loaded at the end.

    ``train_mode`` / ``eval_mode`` switch the model (a PT2E graph module needs torchao's helpers instead of
    ``.train()``); ``transform`` rewrites each batch's numpy inputs first (resized images)."""
    torch = import_torch()
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    train_mode = train_mode or (lambda m: m.train())
    eval_mode = eval_mode or (lambda m: m.eval())
    fit_data, holdout = split_holdout(data, settings.seed)
    report = TrainReport(epochs=settings.epochs, holdout=holdout.num_examples if holdout is not None else 0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=settings.lr)
    clock, best, best_loss, last_report = Clock(settings.max_train_seconds), None, float("inf"), 0.0

    def batches(d):
        for inputs, labels in d.batches(settings.batch_size):
            inputs = transform(inputs) if transform is not None else inputs
            x = to_tensors({k: inputs[k] for k in input_names})
            y = torch.from_numpy(np.asarray(labels)) if labels is not None else None
            yield x, y

    try:
        for epoch in range(1, settings.epochs + 1):
            train_mode(model)
            total, count = 0.0, 0
            for b, (x, y) in enumerate(batches(shuffled(fit_data, settings.seed + epoch)), 1):
                if ctx.should_stop():
                    raise TrainingStopped(f"Stopped by the user during {what} (epoch {epoch}/{settings.epochs}, "
                                          f"batch {b}).")
                loss = loss_fn(model, x, y)
                value = float(loss.detach())
                check_divergence(value, epoch, b)
                opt.zero_grad()
                loss.backward()
                opt.step()
                n = len(x[0])
                total, count = total + value * n, count + n
                if epoch == 1:
                    report.examples += n
                if time.perf_counter() - last_report > REPORT_EVERY_S:
                    last_report = time.perf_counter()
                    ctx.report(phase=what, epoch=epoch, epochs=settings.epochs, batch=b, loss=total / count,
                               seconds=round(clock.seconds, 2))
                if clock.out:
                    break
            report.epochs_run = epoch
            report.losses.append(total / max(count, 1))
            if holdout is not None:
                eval_mode(model)
                held = _mean_loss(model, loss_fn, batches(holdout))
                check_divergence(held, epoch, 0)
                report.holdout_losses.append(held)
                if held < best_loss:
                    best_loss, report.best_epoch = held, epoch
                    best = copy.deepcopy(model.state_dict())
            else:
                report.best_epoch = epoch
            ctx.report(phase=what, epoch=epoch, epochs=settings.epochs, loss=report.losses[-1],
                       holdout_loss=report.holdout_losses[-1] if report.holdout_losses else None,
                       seconds=round(clock.seconds, 2))
            if clock.out:
                report.out_of_time = epoch < settings.epochs or count < (report.examples or 1)
                break
    finally:
        eval_mode(model)
    if best is not None:
        model.load_state_dict(best)
    report.seconds = clock.seconds
    return report


def shuffled(data, seed: int):
    """The data in a new seeded order (each epoch its own): a fixed order, or a dataset sorted by class such
    as an image folder, trains worse. A stream is read as it comes."""
    from ...data import Data

    if data.streaming:
        return data
    return Data(data.ds.shuffle(seed=seed), data.input_names, data.label_name, data.fingerprint)


def _mean_loss(model, loss_fn: LossFn, batches) -> float:
    torch = import_torch()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            n = len(x[0])
            total, count = total + float(loss_fn(model, x, y)) * n, count + n
    return total / max(count, 1)


# -- losses ------------------------------------------------------------------------------------------
def is_class_labels(labels, out) -> bool:
    torch = import_torch()
    return labels is not None and not labels.dtype.is_floating_point and labels.dtype != torch.bool and out.dim() == 2


def task_loss(out, labels):
    """Cross-entropy for class labels on logits, MSE for regression targets."""
    torch = import_torch()
    if is_class_labels(labels, out):
        return torch.nn.functional.cross_entropy(out, labels.long())
    return torch.nn.functional.mse_loss(out.float(), labels.float().reshape(out.shape))


def supervised(model, x, y):
    """The plain task loss: needs labels (the caller checks ``data.has_labels`` first)."""
    return task_loss(first_output(model(*x)), y)


def distillation_loss(student_out, teacher_out, labels, temperature: float, embedding: bool = False):
    """Temperature-scaled KL on logits (plus cross-entropy when class labels exist), or cosine + MSE for
    embedding models (outputs that are not class scores)."""
    torch = import_torch()
    F = torch.nn.functional
    s, t = student_out.float(), teacher_out.float().detach()
    if embedding:
        s2, t2 = s.reshape(len(s), -1), t.reshape(len(t), -1)
        return (1 - F.cosine_similarity(s2, t2, dim=1)).mean() + F.mse_loss(s2, t2)
    s2, t2 = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    kd = F.kl_div(F.log_softmax(s2 / temperature, -1), F.log_softmax(t2 / temperature, -1),
                  reduction="batchmean", log_target=True) * temperature ** 2
    if labels is not None and is_class_labels(labels, s):
        kd = kd + F.cross_entropy(s, labels.long())
    return kd


def teacher_forward(teacher) -> Callable:
    """The teacher's outputs for a batch (no gradients)."""
    torch = import_torch()
    teacher.eval()

    def run(x):
        with torch.no_grad():
            return first_output(teacher(*x))
    return run
