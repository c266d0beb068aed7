"""Resizing image inputs with area interpolation, framework-free (numpy): the ``resolution`` recipe's
preprocessing, the same on every backend.

Area interpolation averages the source pixels each target pixel covers, weighted by the covered fraction
(OpenCV's ``INTER_AREA``, TensorFlow's ``method="area"``): exact block means for integer factors, and the
image mean is kept for any factor. It is separable, so one resize is two small matrix products.

How a backend's ``resolution`` handler uses it (handlers never see the eval data)::

    from nbopt import resize

    plan = resize.plan(example, params["scale"], "NCHW")  # NHWC for Keras; SkipCandidate without images
    small = plan(example)                                  # the batched example at the new size, for export
    fit(..., transform=plan)                               # train batches resized on the fly
    info.update(plan.info(small))                          # columns + the private marker below

``plan.info`` sets the row's ``preprocessing`` and ``input_shape`` columns and two private keys,
``input_size`` and ``input_layout`` (not columns); the worker (``nbopt.jobs._measure``) then measures the
artifact on ``eval_for(artifact.info, eval_data)``, the study's eval data resized the same way, so accuracy
and latency are those of the smaller input. Whole ``Data`` (train, calibration) resize with ``resize_data``.
The result equals ``tf.image.resize(..., method="area")`` to float rounding; Pillow's ``BOX`` filter agrees
only on integer factors (it samples pixel centres).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import NboptError, SkipCandidate

LAYOUTS = ("NCHW", "NHWC")
INPUT_SIZE, INPUT_LAYOUT = "input_size", "input_layout"  # private Artifact.info keys (not row columns)
_resized: dict[tuple, Any] = {}  # this process's resized eval data, by (fingerprint, size, layout)


# -- arrays ------------------------------------------------------------------------------------------
def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix: row i averages the source pixels that target pixel i covers, each weighted by
    the fraction of it inside the target pixel's footprint [i * n_in / n_out, (i + 1) * n_in / n_out)."""
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in, dtype=np.float64)[None, :]
    covered = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return covered / covered.sum(axis=1, keepdims=True)


def resize_images(x: np.ndarray, size: tuple[int, int], layout: str = "NCHW") -> np.ndarray:
    """A batch of images (N, C, H, W) or (N, H, W, C) resized to ``size`` = (height, width) by area
    interpolation; the dtype is kept (computed in float32, float64 stays float64)."""
    _check_layout(layout)
    x = np.asarray(x)
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise NboptError(f"Area resizing takes a batch of float images (4-D, {layout}); got a {x.ndim}-D "
                         f"{x.dtype} array of shape {x.shape}.")
    h, w = spatial(x.shape, layout)
    out_h, out_w = (int(s) for s in size)
    if out_h < 1 or out_w < 1:
        raise NboptError(f"Cannot resize images to {out_h}x{out_w}: both sides must be at least 1 pixel.")
    if (out_h, out_w) == (h, w):
        return x
    work = np.float64 if x.dtype == np.float64 else np.float32
    wh, ww = area_weights(h, out_h).astype(work), area_weights(w, out_w).astype(work)
    if layout == "NHWC":
        x = np.moveaxis(x, 3, 1)
    y = wh @ x.astype(work, copy=False) @ ww.T  # (N, C, out_h, out_w)
    if layout == "NHWC":
        y = np.moveaxis(y, 1, 3)
    return np.ascontiguousarray(y, dtype=x.dtype)


def spatial(shape: tuple, layout: str) -> tuple[int, int]:
    """(height, width) of a batched image shape in ``layout`` (None for a dynamic dimension of a graph)."""
    hw = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    return tuple(None if d is None else int(d) for d in hw)  # type: ignore[return-value]


def scaled_size(hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """Each side times ``scale``, rounded half up, at least 1 pixel: 28x28 at 0.75 -> 21x21."""
    return tuple(max(1, int(math.floor(s * float(scale) + 0.5))) for s in hw)  # type: ignore[return-value]


def is_image(a: np.ndarray) -> bool:
    """A batch of images: 4-D float (N, C, H, W) or (N, H, W, C)."""
    return np.ndim(a) == 4 and np.issubdtype(np.asarray(a).dtype, np.floating)


def guess_layout(shape: tuple, default: str) -> str:
    """``default`` unless the shape clearly says otherwise: a framework's convention (NCHW for torch and
    ONNX, NHWC for Keras) gives way only when its channel axis is wide and the other one looks like
    1-4 colour channels (an ONNX graph converted from TensorFlow takes NHWC)."""
    _check_layout(default)
    c_first, c_last = shape[1], shape[3]
    if default == "NCHW" and c_first is not None and c_first > 4 and c_last is not None and c_last <= 4:
        return "NHWC"
    if default == "NHWC" and c_last is not None and c_last > 4 and c_first is not None and c_first <= 4:
        return "NCHW"
    return default


def image_geometry(example: dict[str, np.ndarray], default_layout: str) -> tuple[list[str], str, tuple[int, int]]:
    """(the image inputs' names, their layout, their (height, width)) for a batched example. A model without
    image inputs, or whose image inputs differ in size, is a skipped ``resolution`` row (SkipCandidate)."""
    names = [k for k, v in example.items() if is_image(v)]
    if not names:
        shown = ", ".join(f"{k} {shape_text({k: v})} {np.asarray(v).dtype}" for k, v in example.items())
        raise SkipCandidate(f"resolution needs image inputs (4-D float: N,C,H,W or N,H,W,C); the model takes "
                            f"{shown}.")
    layout = guess_layout(example[names[0]].shape, default_layout)
    sizes = {spatial(example[k].shape, layout) for k in names}
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
        raise SkipCandidate(f"resolution resizes images of one size, and the model's image inputs differ ({shown}).")
    return names, layout, sizes.pop()


def resize_inputs(inputs: dict[str, np.ndarray], size: tuple[int, int], layout: str) -> dict[str, np.ndarray]:
    """A batch of named inputs with every image input resized (other inputs as they are)."""
    return {k: resize_images(v, size, layout) if is_image(v) else v for k, v in inputs.items()}


def shape_text(inputs: dict[str, np.ndarray]) -> str:
    """'(N,1,14,14)', or 'a (N,3,32,32), b (N,4)' for several inputs: the batch axis as N."""
    def one(a):
        return "(" + ",".join(["N", *map(str, np.shape(a)[1:])]) + ")"

    if len(inputs) == 1:
        return one(next(iter(inputs.values())))
    return ", ".join(f"{k} {one(v)}" for k, v in inputs.items())


@dataclass(frozen=True)
class Plan:
    """One ``resolution`` resize: images of ``before`` = (h, w) become ``after`` in ``layout``. Calling it
    resizes a batch of named inputs (so it is a training engine's ``transform=``)."""

    scale: float
    layout: str
    before: tuple[int, int]
    after: tuple[int, int]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return resize_inputs(inputs, self.after, self.layout)

    @property
    def what(self) -> str:
        """'resolution scale=0.5 (28x28 -> 14x14)': how a row's sentences begin."""
        (h, w), (h2, w2) = self.before, self.after
        return f"resolution scale={self.scale:g} ({h}x{w} -> {h2}x{w2})"

    def info(self, resized_example: dict[str, np.ndarray]) -> dict[str, Any]:
        """The ``Artifact.info`` entries of the resized artifact: the ``preprocessing`` and ``input_shape``
        columns, and the private ``input_size`` / ``input_layout`` keys that make the worker measure it on
        the eval data resized the same way (``eval_for``)."""
        (h, w), (h2, w2) = self.before, self.after
        return {"preprocessing": f"resize {h}x{w} -> {h2}x{w2}, area interpolation ({self.layout}: each output "
                                 "pixel averages the input pixels it covers)",
                "input_shape": shape_text(resized_example),
                INPUT_SIZE: (h2, w2), INPUT_LAYOUT: self.layout}


def plan(example: dict[str, np.ndarray], scale: float, default_layout: str) -> Plan:
    """The resize ``scale`` asks for on this batched example; SkipCandidate when the model has no image
    input or the images are too small to shrink at that scale."""
    _, layout, before = image_geometry(example, default_layout)
    after = scaled_size(before, scale)
    if after == before:
        raise SkipCandidate(f"resolution scale={scale:g} leaves {before[0]}x{before[1]} images at the same size "
                            "(rounded to whole pixels): choose a smaller scale.")
    return Plan(float(scale), layout, before, after)


# -- data ---------------------------------------------------------------------------------------------
def resize_data(data, size: tuple[int, int], layout: str = "NCHW"):
    """The ``nbopt.data.Data`` with every image input (4-D float batches) resized to ``size`` by area
    interpolation; labels, input names and other inputs kept. Written once to an Arrow file in a scratch
    folder (streamed data is resized lazily, batch by batch)."""
    from .data import Data, _hash_text, _quiet_datasets
    from .store import scratch_dir

    _check_layout(layout)
    size = tuple(int(s) for s in size)
    first = data.example(1)
    names = [k for k in data.input_names if is_image(first[k])]
    if not names:
        raise NboptError(f"The data has no image input to resize (4-D float batches); its inputs: "
                         f"{shape_text(first)}.")
    features = _resized_features(data.ds.features, first, names, size, layout)

    def fn(batch):
        return {k: resize_images(np.asarray(batch[k]), size, layout) for k in names}

    with _quiet_datasets():
        if data.streaming:
            ds = data.ds.map(fn, batched=True, batch_size=256, features=features)
        else:
            ds = data.ds.map(fn, batched=True, batch_size=256, features=features, load_from_cache_file=False,
                             cache_file_name=str(scratch_dir("data") / "resized.arrow"))
    if hasattr(ds, "with_format"):
        ds = ds.with_format("numpy")
    return Data(ds, list(data.input_names), data.label_name,
                _hash_text(data.fingerprint, "resize", *size, layout))


def _resized_features(features, first: dict, names: list[str], size: tuple[int, int], layout: str):
    """The dataset's features with each resized input's per-example shape changed (None: let datasets infer)."""
    import datasets

    if features is None:
        return None
    out = datasets.Features(dict(features))
    for k in names:
        shape = resize_images(first[k], size, layout).shape[1:]
        out[k] = datasets.Array3D(shape=tuple(shape), dtype=str(first[k].dtype))
    return out


def eval_for(info: dict, data):
    """The eval data an artifact takes: ``data`` resized when the artifact's info says so (``Plan.info``),
    else ``data`` itself. Cached per process: several candidates share one resized copy."""
    size = info.get(INPUT_SIZE)
    if size is None or data is None:
        return data
    layout = info.get(INPUT_LAYOUT, "NCHW")
    key = (data.fingerprint, tuple(size), layout)
    if key not in _resized:
        _resized[key] = resize_data(data, size, layout)
    return _resized[key]


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise NboptError(f"Image layout is {layout!r}; allowed: {', '.join(map(repr, LAYOUTS))}.")
