"""The ``resolution`` recipe: area resizing (nbopt.resize), tiling (nbopt.tiling), and the torch / onnx
handlers. The numpy parts are fast tier; the real-backend tests are marked slow one by one."""
import json

import numpy as np
import pytest

from nbopt import resize, tiling
from nbopt.errors import NboptError, SkipCandidate
from nbopt.quiet import quiet

FAST = dict(measure_memory=False, progress=False)


# -- area resizing --------------------------------------------------------------------------------------
def test_area_resize_is_exact_block_means_on_integer_factors():
    blocks = np.kron(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), np.ones((2, 2), np.float32))
    x = np.stack([blocks, 10 * blocks])[None]  # (1, 2, 4, 4)
    out = resize.resize_images(x, (2, 2), "NCHW")
    np.testing.assert_array_equal(out, [[[[1, 2], [3, 4]], [[10, 20], [30, 40]]]])
    assert out.dtype == np.float32
    ramp = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_allclose(resize.resize_images(ramp, (2, 2)), [[[[2.5, 4.5], [10.5, 12.5]]]])
    # NHWC is the same resize over the other axes
    rng = np.random.default_rng(0)
    imgs = rng.random((3, 2, 12, 12), dtype=np.float32)
    nhwc = resize.resize_images(imgs.transpose(0, 2, 3, 1), (4, 6), "NHWC")
    np.testing.assert_allclose(nhwc.transpose(0, 3, 1, 2), resize.resize_images(imgs, (4, 6), "NCHW"), atol=1e-6)


def test_area_resize_weights_fractional_pixels_and_keeps_the_mean():
    # 3 -> 2 pixels: each output pixel covers 1.5 input pixels
    row = np.array([3.0, 6.0, 9.0], np.float32).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(resize.resize_images(row, (1, 2)), [[[[(3 * 1 + 6 * 0.5) / 1.5,
                                                                          (6 * 0.5 + 9 * 1) / 1.5]]]])
    rng = np.random.default_rng(1)
    x = rng.random((4, 3, 28, 28), dtype=np.float32)
    for size in [(21, 21), (19, 23), (5, 27)]:
        y = resize.resize_images(x, size, "NCHW")
        assert y.shape == (4, 3, *size)
        np.testing.assert_allclose(y.mean(axis=(2, 3)), x.mean(axis=(2, 3)), atol=1e-5)
        assert y.min() >= x.min() - 1e-6 and y.max() <= x.max() + 1e-6  # an average, never an overshoot


def test_scaled_size_and_bad_arguments():
    assert resize.scaled_size((28, 28), 0.75) == (21, 21)
    assert resize.scaled_size((28, 20), 0.5) == (14, 10)
    assert resize.scaled_size((3, 3), 0.05) == (1, 1)
    with pytest.raises(NboptError, match="4-D"):
        resize.resize_images(np.zeros((2, 64), np.float32), (4, 4))
    with pytest.raises(NboptError, match="layout is 'NHCW'"):
        resize.resize_images(np.zeros((1, 1, 4, 4), np.float32), (2, 2), "NHCW")


def test_plan_skips_what_it_cannot_resize():
    with pytest.raises(SkipCandidate, match=r"resolution needs image inputs \(4-D float.*input \(N,64\) float32"):
        resize.plan({"input": np.zeros((1, 64), np.float32)}, 0.5, "NCHW")
    with pytest.raises(SkipCandidate, match="leaves 8x8 images at the same size"):
        resize.plan({"input": np.zeros((1, 1, 8, 8), np.float32)}, 0.95, "NCHW")
    p = resize.plan({"input": np.zeros((1, 3, 28, 28), np.float32)}, 0.5, "NCHW")
    assert (p.before, p.after, p.layout) == ((28, 28), (14, 14), "NCHW")
    assert p.what == "resolution scale=0.5 (28x28 -> 14x14)"
    # a channels-last graph (converted from TensorFlow) is resized over its own spatial axes
    q = resize.plan({"x": np.zeros((1, 32, 24, 3), np.float32)}, 0.5, "NCHW")
    assert (q.layout, q.before, q.after) == ("NHWC", (32, 24), (16, 12))


def test_resize_data_keeps_labels_names_and_other_inputs():
    from nbopt import data as nbdata

    rng = np.random.default_rng(2)
    x = rng.random((40, 1, 8, 8), dtype=np.float32)
    meta = rng.random((40, 3), dtype=np.float32)
    y = np.arange(40) % 10
    d = nbdata.load(({"img": x, "meta": meta}, y))
    r = resize.resize_data(d, (4, 4), "NCHW")
    assert r.input_names == d.input_names and r.label_name == d.label_name and r.fingerprint != d.fingerprint
    np.testing.assert_array_equal(r.labels(), y)
    inputs, labels = next(r.batches(40))
    np.testing.assert_allclose(inputs["img"], resize.resize_images(x, (4, 4)))
    np.testing.assert_array_equal(inputs["meta"], meta)
    np.testing.assert_array_equal(labels, y)
    # what the worker measures an artifact on: resized only when the artifact says so, once per process
    info = resize.Plan(0.5, "NCHW", (8, 8), (4, 4)).info({"img": inputs["img"][:1]})
    assert info["input_shape"] == "(N,1,4,4)" and "resize 8x8 -> 4x4, area interpolation" in info["preprocessing"]
    assert resize.eval_for({}, d) is d
    assert resize.eval_for(info, d) is resize.eval_for(info, d)
    assert resize.eval_for(info, d).example(1)["img"].shape == (1, 1, 4, 4)
    with pytest.raises(NboptError, match="no image input"):
        resize.resize_data(nbdata.load((meta, y)), (2, 2))


def test_scale_outside_its_range_is_one_clear_sentence():
    from nbopt.backends.torch import TorchBackend
    from nbopt.recipes import Recipe

    for bad in (1.0, 1.5, 0):
        with pytest.raises(NboptError, match=rf"parameter 'scale' is {bad}; it must lie between 0.05 and 0.95"):
            TorchBackend().validate(Recipe("resolution", {"scale": bad}))


# -- tiling ---------------------------------------------------------------------------------------------
def _conv3(x):
    """A fixed 3x3 box filter (zero padding) plus a channel mix: a tiny dense model, NCHW in and out."""
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, w = x.shape[2:]
    box = sum(pad[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    return np.stack([box.sum(1), np.tanh(box[:, 0] - box[:, -1])], axis=1)


def test_tiles_cover_the_image_and_overlap():
    boxes = tiling.tile_boxes(40, 30, (16, 16), overlap=4)
    assert boxes[0] == (0, 0) and boxes[-1] == (24, 14)  # the last tiles end on the image's edge
    cover = np.zeros((40, 30), int)
    for t, l in boxes:
        cover[t:t + 16, l:l + 16] += 1
    assert cover.min() >= 1
    with pytest.raises(NboptError, match="smaller than the tile"):
        tiling.tile_boxes(8, 30, (16, 16))
    with pytest.raises(NboptError, match="overlap"):
        tiling.tile_boxes(40, 30, (16, 16), overlap=16)


def test_tiled_pointwise_model_equals_running_it_whole():
    rng = np.random.default_rng(3)
    img = rng.random((2, 3, 45, 37), dtype=np.float32)
    mix = rng.standard_normal((4, 3)).astype(np.float32)

    def pointwise(x):
        return np.tanh(np.einsum("oc,nchw->nohw", mix, x))

    out = tiling.run_tiled(pointwise, img, tile=(16, 16), overlap=5, batch_size=3)
    np.testing.assert_allclose(out, pointwise(img), atol=1e-6)

    def pointwise_nhwc(x):  # the model is fed in the layout the caller names
        return pointwise(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)

    one = tiling.run_tiled(pointwise_nhwc, img[0].transpose(1, 2, 0), tile=(16, 16), overlap=(3, 7), layout="NHWC")
    np.testing.assert_allclose(one, pointwise(img)[0].transpose(1, 2, 0), atol=1e-6)


def test_tiled_convolution_is_exact_away_from_tile_seams():
    rng = np.random.default_rng(4)
    img = rng.random((1, 2, 40, 50), dtype=np.float32)
    whole = _conv3(img)
    boxes = tiling.tile_boxes(40, 50, (16, 16), overlap=6)
    tiled = tiling.run_tiled(_conv3, img, tile=(16, 16), overlap=6)
    assert tiled.shape == whole.shape
    # a pixel is exact when every tile covering it sees its 3x3 neighbourhood (or the image's own border)
    bad = np.zeros((40, 50), bool)
    for t, l in boxes:
        inner = np.ones((16, 16), bool)
        if t > 0:
            inner[0] = False
        if t + 16 < 40:
            inner[-1] = False
        if l > 0:
            inner[:, 0] = False
        if l + 16 < 50:
            inner[:, -1] = False
        bad[t:t + 16, l:l + 16] |= ~inner
    assert (~bad).mean() > 0.6
    np.testing.assert_allclose(tiled[..., ~bad], whole[..., ~bad], atol=1e-6)
    assert np.abs(tiled - whole).max() > 1e-3  # the seams really differ: the mask above is not vacuous


def test_tiled_classifier_gives_one_output_per_tile():
    rng = np.random.default_rng(5)
    img = rng.random((3, 32, 48), dtype=np.float32)

    def means(x):  # a "classifier": one score per channel and tile
        return x.mean(axis=(2, 3))

    out = tiling.run_tiled(means, img, tile=(16, 16))
    boxes = tiling.tile_boxes(32, 48, (16, 16))
    assert out.shape == (len(boxes), 3) == (6, 3)
    for k, (t, l) in enumerate(boxes):
        np.testing.assert_allclose(out[k], img[:, t:t + 16, l:l + 16].mean(axis=(1, 2)), rtol=1e-6)


# -- the torch and onnx handlers (real backends) ---------------------------------------------------------
def _latency():
    from nbopt.evaluator import LatencySettings

    return LatencySettings(warmup=1, min_runs=3, min_seconds=0.0)


@pytest.fixture(scope="module")
def digits16(digits):
    """Digits upsampled to 16x16: (xtr, ytr, xval, yval), val cut to 200 examples."""
    xtr, ytr, xval, yval = digits

    def up(x):
        return np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)
    return up(xtr), ytr, up(xval[:200]), yval[:200]


@pytest.fixture(scope="module")
def gap_cnn(digits16):
    """A small CNN with global average pooling (takes any input size), trained for a few seconds."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10))
    xtr, ytr = torch.from_numpy(digits16[0]), torch.from_numpy(digits16[1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(10):
        for idx in torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    return model.eval()


@pytest.mark.slow
def test_resolution_on_torch_and_onnx_exports_the_smaller_input(gap_cnn, digits16, tmp_path):
    import nbopt

    xtr, ytr, xval, yval = digits16
    s = nbopt.optimize(gap_cnn, eval=(xval, yval), train=(xtr[:600], ytr[:600]), backends=["torch", "onnx"],
                       recipes=[{"resolution": {"scale": 0.5, "epochs": [0, 2], "lr": 1e-3}}],
                       store=tmp_path / "store", latency=_latency(), **FAST)
    df = s.results.set_index("name")
    for backend in ("torch", "onnx"):
        base = df.loc[f"{backend}:baseline"]
        for epochs in (0, 2):
            row = df.loc[f"{backend}:resolution(epochs={epochs}, lr=0.001, scale=0.5)"]
            assert row["status"] == "ok", row["error"]
            assert row["input_shape"] == "(N,1,8,8)" and row["preprocessing"].startswith("resize 16x16 -> 8x8, area")
            assert row["latency_ms"] > 0 and 0 < row["accuracy"] < base["accuracy"]  # measured on 8x8 images
        tuned = df.loc[f"{backend}:resolution(epochs=2, lr=0.001, scale=0.5)"]
        as_is = df.loc[f"{backend}:resolution(epochs=0, lr=0.001, scale=0.5)"]
        assert tuned["train_epochs"] == 2 and "fine-tuned at 8x8 on the train labels" in tuned["notes"]
        assert "not fine-tuned (epochs=0)" in as_is["notes"]
        assert tuned["accuracy"] > as_is["accuracy"] + 0.1  # fine-tuning at the new size wins back accuracy
    # the artifact takes the 8x8 input, and not the 16x16 one: latency was timed at the new size
    cand = next(c for c in s.candidates if c.name == "torch:resolution(epochs=2, lr=0.001, scale=0.5)")
    runner = cand.runner()
    small = resize.resize_images(xval[:1], (8, 8))
    assert runner({"input": small}).shape == (1, 10)
    with pytest.raises(Exception), quiet():  # ExecuTorch refuses it (and says so on fd 2)
        runner({"input": xval[:1]})
    card = json.loads(cand.export(tmp_path / "small.pte").with_suffix(".json").read_text())
    assert card["preprocessing"].startswith("resize 16x16 -> 8x8, area interpolation")
    assert card["input_shape"] == "(N,1,8,8)"


@pytest.mark.slow
def test_resolution_skips_a_model_sized_for_its_input(tiny_digits_cnn, digits, tmp_path):
    import nbopt

    _, _, xval, yval = digits
    s = nbopt.optimize(tiny_digits_cnn, eval=(xval[:100], yval[:100]), backends=["torch", "onnx"],
                       recipes=[{"resolution": {"scale": 0.5}}], store=tmp_path / "store", latency=_latency(), **FAST)
    for backend in ("torch", "onnx"):
        row = s.results.set_index("name").loc[f"{backend}:resolution(scale=0.5)"]
        assert row["status"] == "skipped"
        assert row["error"].startswith("resolution scale=0.5 (8x8 -> 4x4): the model cannot take the smaller "
                                       "input: RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(NboptError, match="'scale' is 1.5; it must lie between 0.05 and 0.95"):
        nbopt.Study(tiny_digits_cnn, eval=(xval[:100], yval[:100]), backends=["onnx"], store=tmp_path / "store",
                    recipes=[{"resolution": {"scale": [0.5, 1.5]}}], **FAST)


@pytest.mark.slow
def test_resolution_distills_without_labels_and_onnx_files(gap_cnn, digits16, tmp_path):
    import torch

    import nbopt

    xtr, _, xval, yval = digits16
    s = nbopt.optimize(gap_cnn, eval=(xval, yval), train=xtr[:300], backends=["onnx"],
                       recipes=[{"resolution": {"scale": 0.75, "epochs": 1}}], store=tmp_path / "store",
                       latency=_latency(), **FAST)
    row = s.results.set_index("recipe").loc["resolution"]
    assert row["status"] == "ok", row["error"]
    assert "distilled at 12x12 from the model at full resolution" in row["notes"] and row["train_epochs"] == 1
    assert row["input_shape"] == "(N,1,12,12)"
    # an .onnx file: dynamic height and width run as they are; a fixed size is a skipped row
    for dynamic in (True, False):
        path = tmp_path / f"gap_{dynamic}.onnx"
        axes = {"x": {0: "n", 2: "h", 3: "w"} if dynamic else {0: "n"}}
        torch.onnx.export(gap_cnn, (torch.from_numpy(xval[:1]),), str(path), input_names=["x"], dynamic_axes=axes,
                          dynamo=False)
        s = nbopt.optimize(path, calib=xtr[:50], eval=(xval, yval), backends=["onnx"],
                           recipes=[{"resolution": {"scale": 0.5}}], store=tmp_path / "store", latency=_latency(),
                           **FAST)
        row = s.results.set_index("recipe").loc["resolution"]
        if dynamic:
            assert row["status"] == "ok" and row["input_shape"] == "(N,1,8,8)", row["error"]
            assert "the fp32 graph as given (dynamic height and width)" in row["notes"]
        else:
            assert row["status"] == "skipped"
            assert "the ONNX graph has a fixed 16x16 input (x (?,1,16,16))" in row["error"]


@pytest.mark.slow
def test_tiling_runs_a_candidate_over_a_large_image(tmp_path):
    torch = pytest.importorskip("torch")
    import nbopt

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1)).eval()
    rng = np.random.default_rng(6)
    tiles = rng.random((8, 2, 16, 16), dtype=np.float32)
    s = nbopt.optimize(net, eval=tiles, metric="cosine", backends=["torch"], recipes=[], store=tmp_path / "store",
                       latency=_latency(), **FAST)
    runner = s.candidates[0].runner()  # the baseline .pte: a static 16x16 batch-1 program
    big = rng.random((2, 50, 41), dtype=np.float32)
    out = tiling.run_tiled(runner, big, tile=(16, 16), overlap=4)
    with torch.no_grad():
        whole = net(torch.from_numpy(big[None]))[0].numpy()
    assert out.shape == (3, 50, 41)
    np.testing.assert_allclose(out, whole, atol=1e-4)
