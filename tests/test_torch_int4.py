"""torch int4-weight-only: the .pte stores Linear weights packed 4-bit (XNNPACK qd8-qb4w), runs in
ExecuTorch's runtime, and the row says how many Linear layers are 4-bit and which algorithm chose them."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("executorch")
pytest.importorskip("torchao")

from nbopt import data as nbdata  # noqa: E402
from nbopt.backends import get_backend  # noqa: E402
from nbopt.backends.base import Context  # noqa: E402
from nbopt.errors import CandidateError, NboptError  # noqa: E402
from nbopt.recipes import Recipe  # noqa: E402

IN, HID, OUT = 256, 256, 64  # Linear weights: 256*256 + 256*256 + 256*64 = 147,456


SALIENT = np.arange(0, IN, 16)  # input channels with large activations and small weights (a LayerNorm outlier)


def _mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(IN, HID), torch.nn.GELU(), torch.nn.Linear(HID, HID),
                                torch.nn.GELU(), torch.nn.Linear(HID, OUT)).eval()
    with torch.no_grad():
        model[0].weight[:, SALIENT] *= 0.1  # round-to-nearest gives them the step of their group's larger weights
    return model


N_WEIGHTS = IN * HID + HID * HID + HID * OUT


@pytest.fixture(scope="module")
def mlp_setup(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, IN)).astype(np.float32)
    x[:, SALIENT] *= 20  # what AWQ's per-input-channel scales are for
    calib = nbdata.load(x[:64], role="calib")
    evald = nbdata.load(x[64:], role="eval")
    backend = get_backend("torch")
    prepared = backend.prepare(_mlp(), evald)
    root = tmp_path_factory.mktemp("int4")
    base = backend.baseline(prepared, Context(root / "base", calib))
    return {"backend": backend, "prepared": prepared, "calib": calib, "eval": evald, "root": root, "base": base,
            "base_out": _outputs(backend, base, evald)}


def _outputs(backend, art, evald):
    runner = backend.load(art)  # a fresh load from the file on disk, in the artifact's own runtime
    return np.concatenate([runner(inputs) for inputs, _ in evald.batches(runner.max_batch or 64)])


def _apply(s, params):
    recipe = s["backend"].validate(Recipe("int4-weight-only", params))
    return s["backend"].apply(s["prepared"], recipe, Context(s["root"] / recipe.label, s["calib"]))


def _rel_error(out, ref) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def rows(mlp_setup):
    arts = {alg: _apply(mlp_setup, {"algorithm": alg} if alg != "rtn" else {}) for alg in ("rtn", "hqq", "awq")}
    return {alg: (a, _rel_error(_outputs(mlp_setup["backend"], a, mlp_setup["eval"]), mlp_setup["base_out"]))
            for alg, a in arts.items()}


@pytest.mark.slow
def test_default_is_a_packed_4_bit_pte_that_runs_in_executorch(mlp_setup, rows):
    from nbopt.backends.torch.reports import size_breakdown
    from nbopt.speed import recipe_check

    art, err = rows["rtn"]
    assert art.format == "pte" and art.info["runtime"] == "executorch"
    assert "all ops in the XNNPACK delegate" in art.notes
    biases = (HID + HID + OUT) * 4
    # 4 bits per weight plus one bf16 scale per group of 32: about 0.56 B per weight
    assert 0.5 * N_WEIGHTS < art.size_bytes - biases < 0.6 * N_WEIGHTS + 20_000, art.size_bytes
    assert art.size_bytes < 0.16 * mlp_setup["base"].size_bytes
    b = size_breakdown(art)
    assert b["by_dtype"]["int4"] == N_WEIGHTS // 2
    assert recipe_check("int4-weight-only", b) == ""
    assert err < 0.5, err


@pytest.mark.slow
def test_the_row_says_how_many_linears_are_4_bit_and_which_algorithm(rows):
    for alg, (art, _) in rows.items():
        assert art.info["quantized"] == f"3/3 Linear (int4 {alg})"
        assert f"(int4, group 32, {alg}): 3 Linear layer(s) with 4-bit weights" in art.notes
        assert "Int8DynamicActivationIntxWeightConfig" in art.notes and art.info["algorithm"] == alg
    assert "AWQ scales searched on" in rows["awq"][0].notes


@pytest.mark.slow
def test_awq_uses_the_calibration_data_to_beat_round_to_nearest(rows):
    (rtn, e_rtn), (awq, e_awq) = rows["rtn"], rows["awq"]
    assert awq.format == "pte" and e_awq < 0.5 * e_rtn, (e_awq, e_rtn)
    assert awq.size_bytes < rtn.size_bytes + 4 * IN * 3 + 1024  # an fp32 input scale per Linear input channel, 3 muls
    assert rows["hqq"][0].format == "pte" and rows["hqq"][1] < 0.5


@pytest.mark.slow
def test_group_size_is_honoured_and_a_misfit_layer_stays_fp32(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 96), torch.nn.ReLU(), torch.nn.Linear(96, 10)).eval()
    x = np.random.default_rng(1).standard_normal((8, 128)).astype(np.float32)
    backend = get_backend("torch")
    prepared = backend.prepare(model, nbdata.load(x, role="eval"))
    art = backend.apply(prepared, backend.validate(Recipe("int4-weight-only", {"group_size": 64})),
                        Context(tmp_path, nbdata.load(x, role="calib")))
    assert art.format == "pte" and art.info["quantized"] == "1/2 Linear (int4 rtn, rest fp32)"
    assert "1 Linear layer(s) kept fp32: input size not a multiple of group_size=64" in art.notes


def test_a_group_size_that_divides_no_linear_is_one_sentence(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(48, 10)).eval()
    x = np.zeros((2, 48), np.float32)
    backend = get_backend("torch")
    prepared = backend.prepare(model, nbdata.load(x, role="eval"))
    with pytest.raises(CandidateError, match=r"^int4-weight-only: group_size=32 divides the input size of no "
                                             r"Linear layer \(input sizes 48\); pick a group_size that divides"):
        backend.apply(prepared, backend.validate(Recipe("int4-weight-only")), Context(tmp_path))


def test_awq_without_calibration_data_is_one_sentence(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 10)).eval()
    backend = get_backend("torch")
    prepared = backend.prepare(model, nbdata.load(np.zeros((2, 64), np.float32), role="eval"))
    with pytest.raises(CandidateError, match="algorithm='awq' needs calibration data: pass calib="):
        backend.apply(prepared, backend.validate(Recipe("int4-weight-only", {"algorithm": "awq"})), Context(tmp_path))


def test_algorithm_is_checked_and_gptq_is_not_offered():
    backend = get_backend("torch")
    full = backend.validate(Recipe("int4-weight-only"))
    assert full.params["algorithm"] == "rtn" and full.params["group_size"] == 32
    assert full.params["activations"] == "int8"  # XNNPACK's packed 4-bit kernels take int8 activations
    with pytest.raises(NboptError, match="'algorithm' is 'gptq'; allowed: 'rtn', 'hqq', 'awq'"):
        backend.validate(Recipe("int4-weight-only", {"algorithm": "gptq"}))
