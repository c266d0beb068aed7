"""The genai backend: causal LMs built by onnxruntime-genai's model builder (fp32, fp16, int8 / int4 weight
only) and measured with onnxruntime-genai: whole-sequence logits, so perplexity works as with torch."""
import numpy as np
import pytest

og = pytest.importorskip("onnxruntime_genai")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nbopt.backends import default_backends, get_backend  # noqa: E402
from nbopt.backends.base import Context  # noqa: E402
from nbopt.errors import CandidateError, NboptError  # noqa: E402
from nbopt.recipes import Recipe  # noqa: E402

VOCAB = 1000


def llama(folder=None):
    """A tiny Llama, saved with save_pretrained into ``folder`` and loaded back from it when given."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                      num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    if folder is None:
        return model
    model.save_pretrained(folder)
    return transformers.LlamaForCausalLM.from_pretrained(folder).eval()


def gpt2():
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=16)
    return transformers.GPT2LMHeadModel(config).eval()


# -- fast: what the backend takes, its recipes and how they become builder options ---------------------
def test_llama_is_taken_other_models_get_one_sentence_and_genai_is_never_a_default():
    backend = get_backend("genai")
    assert backend.accepts(llama()) and not backend.accepts(gpt2())
    for model in (gpt2(), torch.nn.Linear(4, 2)):
        with pytest.raises(CandidateError, match="families onnxruntime-genai's model builder supports "
                                                 r"\(LlamaForCausalLM, MistralForCausalLM"):
            backend.prepare(model, None)
    assert default_backends(llama()) == ["torch"]  # only when asked: backends=["genai"]


def test_recipes_are_the_shared_vocabulary_and_block_sizes_are_the_builders():
    backend = get_backend("genai")
    full, reason = backend.resolve(Recipe("int8-weight-only"))
    assert reason == "" and full.params["group_size"] == 32
    _, reason = backend.resolve(Recipe("int8-weight-only", {"group_size": None}))
    assert "cannot do group_size=None" in reason  # MatMulNBits has no per-channel form
    full, reason = backend.resolve(Recipe("int4-weight-only", {"group_size": 128, "activations": "int8"}))
    assert reason == "" and full.params["embedding"] == "int4"
    with pytest.raises(NboptError, match="has no recipe 'int8-static'"):
        backend.validate(Recipe("int8-static"))


def test_recipe_parameters_become_the_builders_precision_and_extra_options(tmp_path, monkeypatch):
    from nbopt.backends.genai import backend as module

    calls = []
    monkeypatch.setattr(module, "build", lambda src, out, precision, options: calls.append((precision, options)))
    backend = get_backend("genai")
    prepared = backend.prepare(llama(), None)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(prepared.files)
    ctx = Context(workdir=tmp_path)
    backend.baseline(prepared, ctx)
    for recipe in (Recipe("fp16"), Recipe("int8-weight-only", {"group_size": 64}),
                   Recipe("int4-weight-only", {"activations": "int8", "algorithm": "k_quant", "symmetric": False}),
                   Recipe("int4-weight-only", {"embedding": "float"})):
        backend.apply(prepared, backend.validate(recipe), ctx)
    assert calls == [
        ("fp32", {}), ("fp16", {}),
        ("int8", {"block_size": 64, "accuracy_level": 1, "is_symmetric": True}),
        ("int4", {"block_size": 32, "accuracy_level": 4, "is_symmetric": False, "algo_config": "k_quant",
                  "op_types_to_quantize": "MatMul/Gather"}),
        ("int4", {"block_size": 32, "accuracy_level": 1, "is_symmetric": True}),
    ]


def test_the_builders_own_error_is_the_rows_sentence():
    from nbopt.backends.genai.convert import builder_error

    stderr = "Traceback (most recent call last):\n  File x\nNotImplementedError: The /tmp/hf model is not supported.\n"
    assert builder_error(stderr, 1) == "NotImplementedError: The /tmp/hf model is not supported."
    assert builder_error("killed", -9) == "exit status -9"


def test_the_minimal_tokenizer_covers_the_vocabulary_with_the_configs_bos_and_eos():
    from nbopt.backends.genai.convert import minimal_tokenizer

    tok = minimal_tokenizer(VOCAB, llama().config)
    assert len(tok) == VOCAB and tok.convert_tokens_to_ids("[999]") == 999
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2


def test_runner_refuses_left_padding_and_ids_outside_the_vocabulary():
    from nbopt.backends.genai.runner import GenAIRunner, check_right_padding, token_ids

    check_right_padding(np.array([[1, 1, 0], [1, 1, 1]]))
    with pytest.raises(CandidateError, match="pad the token ids on the right"):
        check_right_padding(np.array([[0, 1, 1]]))
    ids, mask = token_ids({"input_ids": np.array([[3, 4]]), "attention_mask": np.array([[1, 1]])})
    assert ids.dtype == np.int64 and mask.shape == (1, 2)
    runner = GenAIRunner.__new__(GenAIRunner)  # the checks come before any model runs
    runner.n_vocab, runner.context = VOCAB, 64
    with pytest.raises(NboptError, match="outside the model's vocabulary of 1000"):
        runner({"input_ids": np.array([[1, VOCAB]])})
    with pytest.raises(CandidateError, match="more than the model's context of 64"):
        runner({"input_ids": np.ones((1, 65), dtype=np.int64)})


# -- converting: the builder, onnxruntime-genai, a whole study ------------------------------------------
def _torch_perplexity(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), torch.tensor(ids)[:, 1:].reshape(-1))
    return float(torch.exp(loss))


@pytest.mark.slow
def test_study_builds_with_the_model_builder_and_measures_perplexity_in_onnxruntime_genai(tmp_path):
    import nbopt

    folder = tmp_path / "user-model"
    model = llama(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(), unk_token="[0]").save_pretrained(folder)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    ids = np.random.default_rng(0).integers(0, VOCAB, (4, 16))
    study = nbopt.optimize(model, eval={"input_ids": ids}, metric="perplexity", backends=["genai"],
                           recipes=["fp16", "int4-weight-only"], store=tmp_path / "s", progress=False,
                           measure_memory=False)
    rows = study.results.set_index("name")
    assert set(rows["status"]) == {"ok"}, rows["error"].tolist()
    assert rows["format"].eq("genai").all()
    base, fp16, int4 = (rows.loc[f"genai:{n}"] for n in ("baseline", "fp16", "int4-weight-only"))
    # the fp32 build computes what the torch model computes
    assert base["accuracy"] == pytest.approx(_torch_perplexity(model, ids), rel=1e-4)
    assert fp16["accuracy_drop"] < 0.001 and int4["accuracy_drop"] < 0.05
    assert int4["size_bytes"] < 0.25 * base["size_bytes"] and fp16["size_bytes"] < 0.6 * base["size_bytes"]
    from pathlib import Path

    shipped = {p.name: p.stat().st_size for p in Path(int4["artifact_path"]).iterdir()}
    assert int4["size_bytes"] == sum(shipped.values())  # every file of the folder counts
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"} <= set(shipped)
    assert "GatherBlockQuantized 1 (4-bit, block 32), MatMulNBits 11 (4-bit, block 32" in int4["notes"]
    assert "the model's tokenizer from" in int4["notes"]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before  # the user's files untouched
    assert study.size_table("genai:int4-weight-only")["by_dtype"]["int4"] > 0


def _word_tokenizer():
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({f"[{i}]": i for i in range(VOCAB)}, unk_token="[0]"))
