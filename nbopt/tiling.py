"""Running a model over an image larger than its input, tile by tile (numpy only).

A phone model takes a fixed input size (an ExecuTorch ``.pte`` has static shapes); a photo is larger.
``run_tiled`` cuts the image into overlapping tiles of the model's input size, runs each, and either
stitches the per-pixel outputs back into one map (a dense-prediction model: segmentation, denoising,
super-resolution at scale 1), averaging where tiles overlap, or returns one output per tile (a
classifier), in the order ``tile_boxes`` gives. Tiles cover the whole image: the last row and column of
tiles are moved back to end on the image's edge, so nothing is padded.

Example, with a candidate of a study (``Candidate.runner`` loads its artifact in its own runtime)::

    import nbopt
    from nbopt.tiling import run_tiled, tile_boxes

    study = nbopt.optimize(seg_net, calib=..., eval=...)            # a fully convolutional net, 64x64 inputs
    runner = study.best(max_accuracy_drop=0.01).runner()
    mask = run_tiled(runner, photo, tile=(64, 64), overlap=16)      # photo (3, 480, 640) -> (K, 480, 640)
    scores = run_tiled(classifier_runner, photo, tile=(64, 64))     # (n_tiles, classes), one row per tile
    boxes = tile_boxes(480, 640, tile=(64, 64), overlap=0)          # (top, left) of each of those tiles

Any callable works as the model: an nbopt Runner (``backend.load(artifact)``, fed ``{"input": tiles}``), a
``Candidate`` (its runner is loaded), or a plain function of a numpy batch returning a numpy array.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .errors import NboptError
from .resize import LAYOUTS


def tile_boxes(height: int, width: int, tile: tuple[int, int], overlap: int | tuple[int, int] = 0
               ) -> list[tuple[int, int]]:
    """(top, left) of every tile, row by row: steps of ``tile - overlap``, the last row / column of tiles
    ending on the image's edge."""
    (th, tw), (oh, ow) = _pair(tile, "tile"), _pair(overlap, "overlap")
    if th > height or tw > width:
        raise NboptError(f"The image ({height}x{width}) is smaller than the tile ({th}x{tw}): resize it, or run "
                         "the model on it whole.")
    if not (0 <= oh < th and 0 <= ow < tw):
        raise NboptError(f"The overlap ({oh}x{ow}) must be at least 0 and smaller than the tile ({th}x{tw}).")
    return [(top, left) for top in _starts(height, th, th - oh) for left in _starts(width, tw, tw - ow)]


def run_tiled(model: Any, image: np.ndarray, tile: tuple[int, int], overlap: int | tuple[int, int] = 0,
              layout: str = "NCHW", batch_size: int = 1) -> np.ndarray:
    """Run ``model`` over ``image`` tile by tile.

    ``image``: one image (C, H, W) / (H, W, C) or a batch (N, C, H, W) / (N, H, W, C), as ``layout`` says.
    ``tile``: the model's input (height, width); ``overlap``: pixels neighbouring tiles share (one int or
    (rows, cols)). ``batch_size``: tiles per call (a batch-1 program is fed one at a time anyway).

    Returns, when each tile's output is a map of the tile's own height and width in ``layout`` (a dense
    model): the stitched map over the whole image, overlaps averaged, with the model's output channels;
    otherwise the per-tile outputs stacked, (N, n_tiles, ...) (no N for a single image), in the order of
    ``tile_boxes``.
    """
    if layout not in LAYOUTS:
        raise NboptError(f"Image layout is {layout!r}; allowed: {', '.join(map(repr, LAYOUTS))}.")
    x = np.asarray(image)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise NboptError(f"run_tiled takes one image (3-D) or a batch of images (4-D) in {layout}; got shape "
                         f"{np.shape(image)}.")
    if layout == "NHWC":
        x = np.moveaxis(x, 3, 1)  # work in NCHW, give back in the caller's layout
    n, _, height, width = x.shape
    boxes = tile_boxes(height, width, tile, overlap)
    th, tw = _pair(tile, "tile")
    call = _caller(model, layout)
    outs = []
    for b in range(n):
        crops = np.stack([x[b, :, t:t + th, l:l + tw] for t, l in boxes])
        outs.append(np.concatenate([call(crops[i:i + batch_size]) for i in range(0, len(crops), batch_size)]))
    per_tile = np.stack(outs)  # (N, n_tiles, ...) with dense maps in NCHW
    dense = per_tile.ndim == 5 and per_tile.shape[3:] == (th, tw)
    if not dense:
        if layout == "NHWC" and per_tile.ndim == 5:  # a 4-D output that is no map of the tile: as the model gave it
            per_tile = np.moveaxis(per_tile, 2, 4)
        return per_tile[0] if single else per_tile
    stitched = _stitch(per_tile, boxes, height, width)
    if layout == "NHWC":
        stitched = np.moveaxis(stitched, 1, 3)
    return stitched[0] if single else stitched


def _stitch(per_tile: np.ndarray, boxes: list[tuple[int, int]], height: int, width: int) -> np.ndarray:
    """(N, n_tiles, C, th, tw) tile maps -> (N, C, height, width), the mean of the tiles covering each pixel."""
    n, _, c, th, tw = per_tile.shape
    total = np.zeros((n, c, height, width), dtype=np.float64)
    count = np.zeros((height, width), dtype=np.float64)
    for k, (t, l) in enumerate(boxes):
        total[:, :, t:t + th, l:l + tw] += per_tile[:, k]
        count[t:t + th, l:l + tw] += 1
    return (total / count).astype(per_tile.dtype if np.issubdtype(per_tile.dtype, np.floating) else np.float32)


def _caller(model: Any, layout: str) -> Callable[[np.ndarray], np.ndarray]:
    """NCHW tiles -> the model's outputs (dense maps moved to NCHW)."""
    if hasattr(model, "runner") and hasattr(model, "row"):  # a Candidate
        model = model.runner()
    runner = hasattr(model, "max_batch") and hasattr(model, "threads")  # an nbopt Runner takes named inputs
    limit = getattr(model, "max_batch", None) if runner else None

    def call(tiles: np.ndarray) -> np.ndarray:
        tiles = np.ascontiguousarray(np.moveaxis(tiles, 1, 3) if layout == "NHWC" else tiles)
        pieces = [tiles] if not limit else [tiles[i:i + limit] for i in range(0, len(tiles), limit)]
        out = np.concatenate([np.asarray(model({"input": p}) if runner else model(p)) for p in pieces])
        return np.moveaxis(out, 3, 1) if layout == "NHWC" and out.ndim == 4 else out
    return call


def _starts(size: int, length: int, step: int) -> list[int]:
    starts = list(range(0, size - length + 1, step))
    if starts[-1] != size - length:
        starts.append(size - length)
    return starts


def _pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair):
        raise NboptError(f"The {what} must be an int or a pair of ints (rows, columns); got {value!r}.")
    return int(pair[0]), int(pair[1])
