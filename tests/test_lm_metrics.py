"""Language-model metrics: perplexity (lower is better, relative drop), next-token agreement with the
baseline, per-position agreement / cosine on sequence outputs, text with tokenizer=, and the one-sentence
errors for text without a tokenizer, ids outside the vocabulary and a model without a language-model head."""
import numpy as np
import pytest

import nbopt
from nbopt.errors import NboptError
from nbopt.evaluator import LatencySettings, score
from nbopt.metrics import IGNORE_INDEX, get_metric
from nbopt.mixed import CalibScore

VOCAB = 1000
FAST = dict(measure_memory=False, progress=False, executor="inline",
            latency=LatencySettings(warmup=1, min_runs=2, min_seconds=0.0))
WORDS = ("the cat sat on a mat while dogs ran far away from small red houses near green hills "
         "and birds sang loud songs every morning").split()


def tiny_gpt2(head: bool = True):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    return (GPT2LMHeadModel if head else GPT2Model)(config).eval()


def tiny_tokenizer():
    """A word-level tokenizer built here (offline) with no padding token, like GPT-2's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)]


def torch_perplexity(model, ids: np.ndarray, mask: np.ndarray) -> float:
    """Hugging Face's own loss (mean next-token cross-entropy, -100 not scored) on the same ids."""
    import torch

    labels = np.where(mask == 1, ids, IGNORE_INDEX)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    labels=torch.from_numpy(labels))
    return float(torch.exp(out.loss))


# ------------------------------------------------------------------------------------------ the maths
def test_perplexity_is_exp_mean_next_token_nll_and_skips_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    ids = rng.integers(0, 7, size=(3, 5))
    labels = ids.copy()
    labels[0, 3:] = IGNORE_INDEX  # padding: never a target
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = [-logp[i, t, labels[i, t + 1]] for i in range(3) for t in range(4) if labels[i, t + 1] != IGNORE_INDEX]
    assert get_metric("perplexity")(logits, labels) == pytest.approx(np.exp(np.mean(nll)), rel=1e-6)
    with pytest.raises(ValueError, match="language-model head"):
        get_metric("perplexity")(rng.normal(size=(3, 7)), ids[:, 0])  # a classifier's (N, C) outputs


def test_perplexity_is_lower_is_better_with_a_relative_drop_on_the_front():
    from nbopt.pareto import resolve

    ppl = get_metric("perplexity")
    assert not ppl.greater_is_better
    assert ppl.drop(33.0, 30.0) == pytest.approx(0.1)  # 10 % higher perplexity
    assert ppl.drop(27.0, 30.0) == pytest.approx(-0.1)  # better than the baseline
    assert resolve(("size", "accuracy"), ppl.greater_is_better)[1] == ("accuracy", "min")


def test_agreement_and_cosine_compare_sequences_per_position():
    base = np.zeros((2, 4, 3))
    base[..., 0] = 1.0  # every position predicts class 0
    cand = base.copy()
    cand[0, 0] = [0.0, 2.0, 0.0]  # one of 8 positions changes its prediction
    assert get_metric("agreement")(cand, base) == pytest.approx(7 / 8)  # flattened argmax says 1/2
    assert get_metric("cosine")(cand, base) == pytest.approx(7 / 8)  # the changed position is orthogonal


def test_next_token_skips_positions_whose_next_token_is_padding():
    base = np.zeros((1, 4, 5))
    base[..., 2] = 1.0
    cand = base.copy()
    cand[0, 2:, 4] = 5.0  # positions 2 and 3 disagree with the baseline
    labels = np.array([[7, 8, 9, IGNORE_INDEX]])  # position t predicts label t+1: only 0 and 1 are scored
    assert score(get_metric("next-token"), cand, labels, base) == 1.0
    assert score(get_metric("next-token"), cand, None, base) == 0.5  # unmasked: every position
    labels[0, 3] = 3  # now position 2 is scored too
    assert score(get_metric("next-token"), cand, labels, base) == pytest.approx(2 / 3)


def test_calib_score_counts_tokens_and_scores_perplexity():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 6, 20))
    labels = rng.integers(0, 20, size=(4, 6))
    labels[:, 4:] = IGNORE_INDEX
    nt = CalibScore(ref, labels, "next-token")
    assert nt.noise == pytest.approx(1 / 12)  # 3 scored positions x 4 examples, not 1/4 examples
    assert nt.by.startswith("the study's metric (next-token)")
    ppl = CalibScore(ref, labels, "perplexity")
    assert ppl.noise == 0.0
    worse = ref + rng.normal(scale=3.0, size=ref.shape)
    assert ppl.loss(ref) < ppl.loss(worse)  # the relative perplexity drop, lower is better
    assert ppl.value(ref) == pytest.approx(get_metric("perplexity")(ref, labels))


# ------------------------------------------------------------------------------ data and bad input
def test_text_and_tokenizer_give_padded_ids_and_next_token_labels(tmp_path):
    from nbopt.data import for_metric, load, text_encoder

    model, tok = tiny_gpt2(), tiny_tokenizer()
    calib, ev = texts(6, 0), ["the cat sat", "a dog ran far away from small red houses"]
    enc = text_encoder(tok, model, {"eval": ev, "calib": calib})
    data = for_metric(load(ev, "eval", tokenizer=enc), model, get_metric("perplexity"), "eval")
    inputs, labels = next(data.batches(2))
    assert set(inputs) == {"input_ids", "attention_mask"} and inputs["input_ids"].dtype == np.int64
    assert inputs["input_ids"].shape[1] == enc.length == max(len(tok(t)["input_ids"]) for t in calib + ev)
    assert inputs["attention_mask"][0].tolist()[:4] == [1, 1, 1, 0]  # padded on the right
    assert labels[0, :4].tolist() == [*tok("the cat sat")["input_ids"], IGNORE_INDEX]
    assert load(calib, "calib", tokenizer=enc).example(1)["input_ids"].shape == inputs["input_ids"][:1].shape


def test_text_without_a_tokenizer_is_one_sentence(tmp_path):
    with pytest.raises(NboptError, match=r"^The eval data is text: pass tokenizer="):
        nbopt.Study(tiny_gpt2(), eval=texts(4, 0), metric="perplexity", backends=["onnx"], store=tmp_path, **FAST)


def test_token_ids_outside_the_vocabulary_are_one_sentence(tmp_path):
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(4, 8))
    ids[2, 3] = VOCAB + 7
    mask = np.ones_like(ids)
    with pytest.raises(NboptError, match=f"token id {VOCAB + 7} in 'input_ids'.*vocabulary has {VOCAB} tokens"):
        nbopt.Study(tiny_gpt2(), eval={"input_ids": ids, "attention_mask": mask}, metric="next-token",
                    backends=["onnx"], store=tmp_path, **FAST)
    with pytest.raises(NboptError, match=f"^The calib data has token id -1, but"):  # ids alone: one input
        nbopt.Study(tiny_gpt2(), calib=ids * 0 - 1, eval=ids % VOCAB, metric="agreement", backends=["onnx"],
                    store=tmp_path, **FAST)


def test_perplexity_without_a_language_model_head_is_one_sentence(tmp_path):
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(4, 8))
    with pytest.raises(NboptError, match="needs a model with a language-model head.*GPT2Model"):
        nbopt.Study(tiny_gpt2(head=False), eval={"input_ids": ids}, metric="perplexity", backends=["onnx"],
                    store=tmp_path, **FAST)


# ------------------------------------------------------------------------------------ real backends
@pytest.mark.slow
def test_gpt2_perplexity_on_text_with_onnx(tmp_path):
    """The baseline's perplexity is Hugging Face's own loss on the same tokens; int8's drop is relative."""
    model, tok = tiny_gpt2(), tiny_tokenizer()
    ev = texts(12, 2)
    study = nbopt.optimize(model, calib=texts(16, 1), eval=ev, tokenizer=tok, metric="perplexity",
                           backends=["onnx"], recipes=["int8-dynamic"], store=tmp_path / "s", **FAST)
    rows = {r["recipe"]: r for r in study.results.to_dict("records")}
    assert all(r["status"] == "ok" for r in rows.values()), [r["error"] for r in rows.values()]
    data = study.eval_data.example(len(ev))
    assert rows["baseline"]["accuracy"] == pytest.approx(
        torch_perplexity(model, data["input_ids"], data["attention_mask"]), rel=1e-4)
    cand = rows["int8-dynamic"]
    assert cand["accuracy_drop"] == pytest.approx(cand["accuracy"] / rows["baseline"]["accuracy"] - 1, abs=1e-9)


@pytest.mark.slow
def test_gpt2_next_token_on_token_ids_with_executorch(tmp_path):
    """Token-id arrays with an attention mask on the torch backend: the .pte's logits give the same
    perplexity as Hugging Face's loss, and the baseline agrees with itself at every scored position."""
    model = tiny_gpt2()
    rng = np.random.default_rng(3)
    ids, mask = rng.integers(0, VOCAB, size=(6, 10)), np.ones((6, 10), dtype=np.int64)
    mask[::2, 7:] = 0  # padded examples
    study = nbopt.optimize(model, eval={"input_ids": ids, "attention_mask": mask}, metric="next-token",
                           backends=["torch"], recipes=[], store=tmp_path / "s", **FAST)
    base = study.results.to_dict("records")[0]
    assert base["status"] == "ok" and base["accuracy"] == 1.0, base["error"]
    logits = np.load(study.candidates[0].row["outputs_path"])  # what the .pte computed, as stored
    assert logits.shape == (6, 10, VOCAB)
    assert get_metric("perplexity")(logits, study.eval_data.labels()) == pytest.approx(
        torch_perplexity(model, ids, mask), rel=1e-4)
