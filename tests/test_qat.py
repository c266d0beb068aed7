"""qat on the torch and onnx backends (slow tier): quantization-aware training against post-training int8
on a model built so that post-training quantization hurts.

The model: a digits MLP whose one hidden channel is scaled up 400x (its outgoing weights scaled down to
match, so fp32 outputs are unchanged). Per-tensor int8 activations then spend their 256 levels on that one
channel and the others lose their resolution; QAT fine-tunes the weights with the quantization in the
loop and wins accuracy back at the same size.
"""
import pytest

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")

from nbopt.demo import outlier_mlp  # noqa: E402

QAT = {"epochs": 2, "lr": 3e-3, "max_train_seconds": 30}


@pytest.fixture(scope="module")
def outlier(digits):
    return outlier_mlp(digits)[0]


@pytest.fixture(scope="module")
def rows(outlier, digits, tmp_path_factory):
    import nbopt
    from nbopt.evaluator import LatencySettings

    xtr, ytr, xval, yval = digits
    study = nbopt.optimize(outlier, calib=(xtr[:256], ytr[:256]), eval=(xval, yval), train=(xtr, ytr),
                           recipes=["int8-static", {"qat": QAT}, {"int4-weight-only": {"activations": "int8"}},
                                    {"qat": {**QAT, "bits": 4}}],
                           backends=["torch", "onnx"], store=tmp_path_factory.mktemp("qat"), executor="inline",
                           measure_memory=False, progress=False,
                           latency=LatencySettings(warmup=1, min_runs=3, min_seconds=0.0))
    df = study.results
    return {(r.backend, r.recipe, r.params.get("bits", 8) if r.recipe == "qat" else None): r
            for r in df.itertuples()}


def test_torch_qat_beats_post_training_int8_at_the_same_size(rows):
    base, ptq, qat = rows["torch", "baseline", None], rows["torch", "int8-static", None], rows["torch", "qat", 8]
    assert qat.status == "ok", qat.error
    assert qat.format == "pte"
    assert base.accuracy - ptq.accuracy > 0.1  # the premise: post-training int8 hurts this model
    assert qat.accuracy >= ptq.accuracy
    assert abs(qat.size_bytes - ptq.size_bytes) <= 0.05 * ptq.size_bytes
    assert qat.train_seconds > 0 and 1 <= qat.train_epochs <= QAT["epochs"]
    assert "PT2E prepare_qat_pt2e" in qat.notes and "XNNPACKQuantizer" in qat.notes
    assert "kept epoch" in qat.notes and "calibrated on 256 calibration examples" in qat.notes
    assert qat.quantized == "2/2 Linear (int8)"


def test_torch_qat_4_bit_gives_the_int4_program_and_beats_it(rows):
    ptq, qat = rows["torch", "int4-weight-only", None], rows["torch", "qat", 4]
    assert qat.status == "ok", qat.error
    assert qat.format == "pte" and qat.size_bytes == ptq.size_bytes  # the same qd8-qb4w program
    assert qat.accuracy >= ptq.accuracy
    assert "QATConfig" in qat.notes and qat.quantized == "2/2 Linear (int4)"


def test_onnx_qat_is_a_qdq_model_from_the_qat_weights(rows):
    import onnx

    ptq, qat = rows["onnx", "int8-static", None], rows["onnx", "qat", 8]
    assert qat.status == "ok", qat.error
    assert qat.format == "onnx"
    ops = [n.op_type for n in onnx.load(qat.artifact_path).graph.node]
    assert ops.count("QuantizeLinear") >= 2 and "DequantizeLinear" in ops
    assert qat.size_bytes <= 1.05 * ptq.size_bytes
    assert qat.accuracy >= ptq.accuracy
    assert qat.train_seconds > 0 and "prepare_qat_pt2e" in qat.notes and "2/2 Gemm (int8 weights)" in qat.notes
    onnx4 = rows["onnx", "qat", 4]
    assert onnx4.status == "skipped" and "bits=4" in onnx4.error


def test_qat_on_an_onnx_file_fails_with_the_sentence(rows, digits, tmp_path):
    import nbopt

    xtr, ytr, xval, yval = digits
    path = rows["onnx", "baseline", None].artifact_path  # an .onnx file: no torch module behind it
    study = nbopt.optimize(path, calib=(xtr[:64], ytr[:64]), eval=(xval[:64], yval[:64]), train=(xtr, ytr),
                           recipes=[{"qat": {"epochs": 1}}], backends=["onnx"], store=tmp_path, executor="inline",
                           measure_memory=False, progress=False)
    row = study.results.set_index("recipe").loc["qat"]
    assert row["status"] == "failed"
    assert row["error"] == ("qat on the onnx backend needs the torch model the graph came from (pass the "
                            "nn.Module, not an .onnx file).")


def test_qat_without_labels_distills_from_the_untouched_fp32_model(outlier, digits, tmp_path):
    from nbopt.backends.base import Context
    from nbopt.backends.torch.qat import qat_finetune
    from nbopt.backends.torch.quant import pt2e_static
    from nbopt.data import load

    xtr, ytr, xval, yval = digits
    before = {k: v.clone() for k, v in outlier.state_dict().items()}
    ctx = Context(tmp_path, calib=load(xtr[:256], "calib"), train=load(xtr, "train"))
    example = (torch.from_numpy(xtr[:1]),)
    run = qat_finetune(outlier, example, ["input"], {**QAT, "bits": 8}, ctx)
    assert "distillation from the fp32 model's outputs" in "; ".join(run.notes)
    # the teacher (and what other recipes start from) is not trained along with the student
    assert all(torch.equal(before[k], v) for k, v in outlier.state_dict().items())
    ptq, _ = pt2e_static(outlier, example, ctx.calib, ["input"], True, "minmax")

    def accuracy(module):
        with torch.no_grad():
            return float((module(torch.from_numpy(xval)).argmax(1).numpy() == yval).mean())

    assert accuracy(run.module) >= accuracy(ptq)
