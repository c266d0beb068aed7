"""The gguf backend: Llama / GPT-2 causal LMs written as llama.cpp GGUF files (F32, F16, Q8_0, Q4_0), read
back with gguf.GGUFReader: tensor names, types, shapes, layouts and keys as llama.cpp expects them."""
import importlib.util

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nbopt.backends import default_backends, get_backend  # noqa: E402
from nbopt.backends.base import Context  # noqa: E402
from nbopt.errors import CandidateError, NboptError  # noqa: E402
from nbopt.recipes import Recipe  # noqa: E402

VOCAB = 320
_HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None  # optional: it builds llama.cpp from source


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=32)
    return transformers.GPT2LMHeadModel(config).eval()


def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=96,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                      max_position_embeddings=64, rope_theta=10000.0)
    return transformers.LlamaForCausalLM(config).eval()


def build(model, recipe, tmp_path):
    backend = get_backend("gguf")
    prepared = backend.prepare(model, None)
    ctx = Context(workdir=tmp_path)
    if recipe == "baseline":
        return backend.baseline(prepared, ctx)
    return backend.apply(prepared, backend.validate(Recipe(recipe)), ctx)


def tensors(path):
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def field(path, key):
    return gguf.GGUFReader(str(path)).get_field(key).contents()


# -- fast: what the backend takes and which recipes it has --------------------------------------------
def test_only_llama_and_gpt2_are_taken_and_gguf_is_never_a_default():
    backend = get_backend("gguf")
    assert backend.accepts(gpt2()) and backend.accepts(llama())
    net = torch.nn.Linear(4, 2)
    assert not backend.accepts(net)
    with pytest.raises(CandidateError, match="LlamaForCausalLM and GPT2LMHeadModel models"):
        backend.prepare(net, None)
    assert default_backends(gpt2()) == ["torch"]  # only when asked: backends=["gguf"]


def test_recipes_are_the_shared_vocabulary_with_group_size_fixed_at_32():
    backend = get_backend("gguf")
    full, reason = backend.resolve(Recipe("int8-weight-only"))
    assert reason == "" and full.params["group_size"] == 32 and full.label == "int8-weight-only"
    _, reason = backend.resolve(Recipe("int4-weight-only", {"group_size": 64}))
    assert "cannot do group_size=64" in reason and "32" in reason
    _, reason = backend.resolve(Recipe("int4-weight-only", {"activations": "int8"}))
    assert "cannot do activations='int8'" in reason
    with pytest.raises(NboptError, match="has no recipe 'int8-static'"):
        backend.validate(Recipe("int8-static"))


# -- converting: the files read back ----------------------------------------------------------------
@pytest.mark.slow
def test_gpt2_q4_0_file_has_llama_cpp_names_transposed_conv1d_and_0_56_bytes_per_weight(tmp_path):
    model = gpt2()
    art = build(model, "int4-weight-only", tmp_path / "q4")
    found = tensors(art.path)
    assert "output.weight" not in found  # tied lm_head: llama.cpp reuses token_embd
    assert {"token_embd.weight", "position_embd.weight", "output_norm.weight", "blk.1.attn_qkv.weight",
            "blk.1.ffn_up.weight", "blk.1.ffn_down.weight", "blk.0.attn_output.bias"} <= set(found)
    qkv = found["blk.0.attn_qkv.weight"]
    assert qkv.tensor_type.name == "Q4_0" and list(qkv.shape) == [64, 192]  # ggml order: (in, out)
    assert found["position_embd.weight"].tensor_type.name == "F32"  # as convert_hf_to_gguf keeps it
    assert found["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    matrices = [t for t in found.values() if t.tensor_type.name == "Q4_0"]
    assert len(matrices) == 9  # token embedding + 4 per block
    rate = sum(int(t.n_bytes) for t in matrices) / sum(int(t.n_elements) for t in matrices)
    assert rate == pytest.approx(0.5625)
    # Conv1D (in, out) stored as (out, in), within Q4_0's rounding of the original weights
    weight = model.transformer.h[0].attn.c_attn.weight.detach().numpy().T
    back = gguf.quants.dequantize(qkv.data, gguf.GGMLQuantizationType.Q4_0).reshape(weight.shape)
    assert np.abs(back - weight).max() <= np.abs(weight).max() / 7
    assert field(art.path, "general.architecture") == "gpt2"
    assert field(art.path, "gpt2.block_count") == 2 and field(art.path, "gpt2.context_length") == 32
    assert field(art.path, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    assert len(gguf.GGUFReader(str(art.path)).get_field("tokenizer.ggml.tokens").data) == VOCAB
    assert art.format == "gguf"
    if not _HAS_LLAMA_CPP:
        assert "accuracy needs llama-cpp-python" in art.info["unmeasured"]
    assert "Q4_0 9/28 (0.5625 B/weight)" in art.info["quantized"] and "group_size 32" in art.notes
    base = build(model, "baseline", tmp_path / "f32")
    assert art.size_bytes < 0.25 * base.size_bytes


@pytest.mark.slow
def test_q8_0_and_f16_are_what_the_file_stores(tmp_path):
    model = llama()
    q8 = tensors(build(model, "int8-weight-only", tmp_path / "q8").path)
    f16 = build(model, "fp16", tmp_path / "f16")
    assert q8["blk.0.ffn_gate.weight"].tensor_type.name == "Q8_0" and q8["output.weight"].tensor_type.name == "Q8_0"
    assert q8["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert list(q8["blk.0.attn_k.weight"].shape) == [64, 32]  # 2 kv heads of 16
    assert tensors(f16.path)["blk.1.ffn_down.weight"].tensor_type.name == "F16"
    assert field(f16.path, "llama.attention.head_count_kv") == 2
    assert field(f16.path, "llama.rope.freq_base") == pytest.approx(10000.0)
    breakdown = get_backend("gguf").size_breakdown(f16)
    assert breakdown["by_dtype"]["fp16"] > 10 * breakdown["by_dtype"]["fp32"]
    assert sum(breakdown["segments"].values()) == f16.size_bytes


def _hf_rope(x, pos, base=10000.0):
    """Hugging Face's rotate-half RoPE on (heads, d)."""
    d = x.shape[-1]
    angles = pos * base ** (-np.arange(0, d, 2) / d)
    cos, sin = np.tile(np.cos(angles), 2), np.tile(np.sin(angles), 2)
    return x * cos + np.concatenate([-x[:, d // 2:], x[:, : d // 2]], -1) * sin


def _ggml_rope(x, pos, base=10000.0):
    """llama.cpp's LLAMA RoPE: adjacent pairs (x0, x1), (x2, x3), ... rotated."""
    d = x.shape[-1]
    angles = pos * base ** (-np.arange(0, d, 2) / d)
    a, b = x[:, 0::2], x[:, 1::2]
    out = np.empty_like(x)
    out[:, 0::2], out[:, 1::2] = a * np.cos(angles) - b * np.sin(angles), a * np.sin(angles) + b * np.cos(angles)
    return out


@pytest.mark.slow
def test_llama_q_k_rows_are_laid_out_for_llama_cpp_rope(tmp_path):
    """Attention scores from the file's q / k weights with llama.cpp's RoPE equal Hugging Face's with the
    original weights and its RoPE (the rows were permuted; unpermuted they would not)."""
    model = llama()
    found = tensors(build(model, "baseline", tmp_path).path)
    attn = model.model.layers[0].self_attn
    x = np.random.default_rng(0).standard_normal(64)
    q_hf = (attn.q_proj.weight.detach().numpy() @ x).reshape(4, 16)
    k_hf = (attn.k_proj.weight.detach().numpy() @ x).reshape(2, 16)
    q_file = (np.asarray(found["blk.0.attn_q.weight"].data) @ x).reshape(4, 16)
    k_file = (np.asarray(found["blk.0.attn_k.weight"].data) @ x).reshape(2, 16)
    kv = [0, 0, 1, 1]  # grouped-query attention: 2 query heads per kv head
    hf = [_hf_rope(q_hf, 5)[h] @ _hf_rope(k_hf, 2)[kv[h]] for h in range(4)]
    ours = [_ggml_rope(q_file, 5)[h] @ _ggml_rope(k_file, 2)[kv[h]] for h in range(4)]
    unpermuted = [_ggml_rope(q_hf, 5)[h] @ _ggml_rope(k_hf, 2)[kv[h]] for h in range(4)]
    np.testing.assert_allclose(ours, hf, rtol=1e-4, atol=1e-5)
    assert not np.allclose(unpermuted, hf, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_given_tokenizer_becomes_the_files_bpe_vocabulary(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the cat sat on the mat"] * 20, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    from nbopt.backends.gguf.convert import source, write

    src = source(gpt2(), fast)
    write(src, tmp_path / "tok.gguf", "Q8_0")
    path = tmp_path / "tok.gguf"
    assert field(path, "tokenizer.ggml.model") == "gpt2" and field(path, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(path, "tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB and tokens[0] == "<|endoftext|>" and tokens[-1] == f"[PAD{VOCAB - 1}]"
    assert len(field(path, "tokenizer.ggml.merges")) > 0
    assert field(path, "tokenizer.ggml.eos_token_id") == 0


@pytest.mark.slow
def test_study_rows_have_real_sizes_and_say_accuracy_needs_llama_cpp(tmp_path):
    import importlib.util

    import nbopt

    if importlib.util.find_spec("llama_cpp"):
        pytest.skip("llama-cpp-python is installed: rows are measured")
    ids = np.random.default_rng(0).integers(0, VOCAB, (4, 16))
    study = nbopt.optimize(gpt2(), eval={"input_ids": ids}, metric="agreement", backends=["gguf"],
                           recipes=["int8-weight-only", "int4-weight-only"], store=tmp_path / "s",
                           progress=False, measure_memory=False)
    rows = study.results.set_index("name")
    assert set(rows["status"]) == {"ok"} and len(rows) == 3
    assert rows["format"].eq("gguf").all() and rows["accuracy"].isna().all()
    assert rows["notes"].str.contains("accuracy needs llama-cpp-python").all()
    assert rows.loc["gguf:int4-weight-only", "size_bytes"] < rows.loc["gguf:int8-weight-only", "size_bytes"]


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_LLAMA_CPP, reason="pip install 'nbopt[llama]' (builds llama.cpp from source)")
@pytest.mark.parametrize("make", [gpt2, llama])
def test_llama_cpp_runs_the_files_as_the_model_computes(tmp_path, make):
    """The real check of the conversion: llama.cpp's perplexity of the F32 file equals torch's (ONNX here),
    and Q4_0 stays close."""
    import nbopt

    ids = np.random.default_rng(0).integers(0, VOCAB, (8, 24))
    study = nbopt.optimize(make(), eval={"input_ids": ids}, metric="perplexity", backends=["gguf", "onnx"],
                           recipes=["int4-weight-only"], store=tmp_path / "s", progress=False,
                           measure_memory=False, executor="inline")
    rows = study.results.set_index("name")
    assert set(rows["status"]) == {"ok"}, rows["error"].tolist()
    assert rows.loc["gguf:baseline", "accuracy"] == pytest.approx(rows.loc["onnx:baseline", "accuracy"], rel=1e-4)
    assert rows.loc["gguf:int4-weight-only", "accuracy_drop"] < 0.01


class _FakeLlama:
    """Stands in for llama_cpp.Llama (not installed in CI: it builds from source): each position's logits
    are a one-hot of the token fed there."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def n_vocab(self):
        return VOCAB

    def reset(self):
        self.scores = None

    def eval(self, tokens):
        self.scores = np.eye(VOCAB, dtype=np.float32)[tokens]


def test_runner_feeds_token_ids_to_llama_cpp_and_returns_every_positions_logits(tmp_path, monkeypatch):
    import importlib.machinery
    import sys
    import types

    from nbopt.backends.gguf.runner import LlamaCppRunner, NeedsLlamaCpp

    if not _HAS_LLAMA_CPP:
        with pytest.raises(NeedsLlamaCpp, match="accuracy needs llama-cpp-python: pip install 'nbopt\\[llama\\]'"):
            LlamaCppRunner(tmp_path / "x.gguf", 64)
    fake = types.ModuleType("llama_cpp")
    fake.__spec__ = importlib.machinery.ModuleSpec("llama_cpp", None)
    fake.Llama = _FakeLlama
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    runner = LlamaCppRunner(tmp_path / "x.gguf", 64, threads=1)
    assert runner.llm.kwargs["logits_all"] and runner.llm.kwargs["n_ctx"] == 64
    ids = np.array([[5, 6, 7, 0], [9, 8, 0, 0]])
    out = runner({"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)})
    assert out.shape == (2, 4, VOCAB) and out.dtype == np.float32
    assert (out.argmax(-1) == ids).all()
    with pytest.raises(CandidateError, match="pad the token ids on the right"):
        runner({"input_ids": ids, "attention_mask": np.array([[0, 1, 1, 1], [1, 1, 1, 1]])})
    with pytest.raises(NboptError, match="outside the model's vocabulary"):
        runner({"input_ids": np.array([[1, VOCAB]])})
