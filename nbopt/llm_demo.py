"""A small language model made here, offline, so that perplexity means something: the example notebook
``llm_on_a_phone.ipynb`` and ``benchmarks/bench_llm.py`` share it.

* ``docstring_corpus()``: paragraphs of the docstrings of a fixed list of standard-library modules (the
  text ships with Python, so nothing is downloaded; the same Python gives the same text), split into a
  training and a held-out evaluation part by paragraph.
* ``train_tokenizer()``: a byte-level BPE trained on the training paragraphs with the ``tokenizers``
  library, wrapped in ``transformers.PreTrainedTokenizerFast`` (padding on the right, ``<|endoftext|>``
  between paragraphs).
* ``tiny_llama()``: a ``LlamaForCausalLM`` from a ``LlamaConfig`` (random weights).
* ``train_lm()``: AdamW on 64-token windows of the training stream for a bounded number of seconds.
* ``lm_demo()``: all of it, returning the model, the tokenizer and token-id windows for calibration
  (training text) and evaluation (held-out text).

torch, transformers and tokenizers are imported inside the functions (``import nbopt`` stays light).
"""
from __future__ import annotations

import importlib
import inspect
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EOS = "<|endoftext|>"
# pure-Python standard-library modules present in every CPython 3.10+ build; sorted members, so the
# corpus is the same on every run of the same Python
MODULES = tuple("""
abc argparse ast asyncio.events asyncio.futures asyncio.locks asyncio.queues asyncio.streams asyncio.tasks base64
bisect calendar codecs collections collections.abc concurrent.futures._base configparser contextlib copy csv
dataclasses datetime decimal difflib dis email.message email.utils enum filecmp fnmatch fractions ftplib functools
getopt gettext glob gzip hashlib heapq hmac html html.parser http.client http.cookiejar http.server imaplib inspect
io ipaddress itertools json json.decoder json.encoder locale logging logging.handlers lzma mailbox mimetypes
multiprocessing.pool multiprocessing.process netrc numbers operator optparse os pathlib pdb pickle pkgutil platform
plistlib poplib pprint pydoc queue quopri random re reprlib sched secrets selectors shelve shlex shutil smtplib
socket socketserver sqlite3 ssl statistics string struct subprocess symtable tarfile tempfile textwrap threading
timeit tokenize trace traceback types typing unittest.case unittest.mock urllib.parse urllib.request uuid warnings
wave weakref xml.dom.minidom xml.etree.ElementTree zipfile zipimport
""".split())
MIN_WORDS = 6  # shorter paragraphs are mostly signatures and "See also" lines


# -- corpus --------------------------------------------------------------------------------------------
def _docstrings(module) -> list[str]:
    """The module's docstring, then each public class / function defined in it and each class's methods."""
    docs = [inspect.getdoc(module)]
    for name in sorted(vars(module)):
        obj = vars(module)[name]
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            docs.append(inspect.getdoc(obj))
        if inspect.isclass(obj):
            docs += [inspect.getdoc(m) for k, m in sorted(vars(obj).items())
                     if not k.startswith("_") and inspect.isfunction(m)]
    return [d for d in docs if d]


@dataclass
class Corpus:
    train: list[str]
    eval: list[str]
    modules: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        chars = lambda ps: sum(map(len, ps))  # noqa: E731
        return (f"Corpus({len(self.train)} training paragraphs, {chars(self.train) / 1e3:.0f} kB; {len(self.eval)} "
                f"held-out paragraphs, {chars(self.eval) / 1e3:.0f} kB; docstrings of {len(self.modules)} modules)")


def docstring_corpus(eval_fraction: float = 0.1) -> Corpus:
    """Paragraphs (whitespace collapsed, duplicates dropped) of the standard library's docstrings. A
    paragraph goes to the held-out part by a hash of its text (zlib.crc32: the same on every run), so the
    split does not depend on the order the modules are read in."""
    seen: set[str] = set()
    train, held, modules = [], [], []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a build without it (e.g. no _ssl, no _sqlite3): the corpus is a little smaller
            continue
        modules.append(name)
        for doc in _docstrings(module):
            for para in re.split(r"\n\s*\n", doc):
                para = " ".join(para.split())
                if len(para.split()) < MIN_WORDS or para in seen:
                    continue
                seen.add(para)
                (held if zlib.crc32(para.encode()) % 1000 < eval_fraction * 1000 else train).append(para)
    return Corpus(train, held, modules)


# -- tokenizer -----------------------------------------------------------------------------------------
def train_tokenizer(texts: list[str], vocab_size: int = 2048):
    """A byte-level BPE (GPT-2's pre-tokenization) trained on ``texts``, as a PreTrainedTokenizerFast:
    every byte is in its alphabet, so any text tokenizes; ``<|endoftext|>`` is token 0 (eos, bos and pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, padding_side="right", model_max_length=1024)


def token_stream(tokenizer, paragraphs: list[str]) -> np.ndarray:
    """Every paragraph's ids, each followed by ``<|endoftext|>``, as one int64 array."""
    ids = tokenizer(list(paragraphs), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return np.fromiter((t for row in ids for t in (*row, eos)), dtype=np.int64)


def windows(stream: np.ndarray, length: int, n: int | None = None) -> np.ndarray:
    """Consecutive, non-overlapping windows of ``length`` ids, (n, length): no padding, every position scored."""
    count = len(stream) // length if n is None else min(n, len(stream) // length)
    return stream[: count * length].reshape(count, length).copy()


# -- model ---------------------------------------------------------------------------------------------
def tiny_llama(vocab_size: int = 2048, hidden: int = 128, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 384, max_positions: int = 64, seed: int = 0):
    """A Llama-architecture causal LM from a config (random weights, fp32, eval mode). Every Linear input
    size is a multiple of 32, so 4-bit groups of 32 cover all of them."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def train_lm(model, stream: np.ndarray, seconds: float = 60.0, length: int = 64, batch: int = 16,
             lr: float = 3e-3, seed: int = 0, max_steps: int | None = None, log_every: float = 15.0,
             verbose: bool = True) -> dict:
    """AdamW on random ``length``-token windows of ``stream`` for ``seconds`` (wall clock) or ``max_steps``;
    the learning rate warms up over the first 5 % of the time and decays to a tenth along a cosine. The
    model is left in eval mode. Returns {"steps", "seconds", "loss"} (the last 20 steps' mean loss).
    How many steps fit in the time depends on the machine: a faster CPU trains a slightly better model."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(stream)
    starts_max = len(stream) - length - 1
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    model.train()
    t0 = last_log = time.perf_counter()
    step, losses = 0, []
    while True:
        elapsed = time.perf_counter() - t0
        frac = elapsed / seconds if max_steps is None else step / max_steps
        if frac >= 1.0:
            break
        warm = min(1.0, frac / 0.05)
        for g in opt.param_groups:
            g["lr"] = float(lr * warm * (0.1 + 0.45 * (1 + np.cos(np.pi * frac))))
        starts = torch.from_numpy(rng.integers(0, starts_max, batch))
        x = torch.stack([data[s:s + length] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if verbose and time.perf_counter() - last_log >= log_every:
            last_log = time.perf_counter()
            print(f"  {last_log - t0:5.0f} s  step {step:5d}  training loss {np.mean(losses[-20:]):.3f}", flush=True)
    model.eval()
    return {"steps": step, "seconds": time.perf_counter() - t0, "loss": float(np.mean(losses[-20:]))}


def perplexity(model, ids: np.ndarray, batch: int = 16) -> float:
    """Eager-torch perplexity on (n, length) windows: exp(mean next-token cross-entropy), every position."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            x = torch.from_numpy(ids[i:i + batch])
            logits = model(input_ids=x).logits[:, :-1].double()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                    reduction="sum")
            total, count = total + float(nll), count + x[:, 1:].numel()
    return float(np.exp(total / count))


@dataclass
class LMDemo:
    model: Any
    tokenizer: Any
    calib: dict  # {"input_ids": (n, length)} windows of the training text
    eval: dict  # {"input_ids": (n, length)} windows of the held-out text
    corpus: Corpus
    training: dict

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return (f"LMDemo({type(self.model).__name__}, {params / 1e6:.2f} M parameters, vocabulary "
                f"{len(self.tokenizer)}; trained {self.training['steps']} steps in {self.training['seconds']:.0f} s, "
                f"loss {self.training['loss']:.2f}; calib {self.calib['input_ids'].shape}, "
                f"eval {self.eval['input_ids'].shape})")

    def save(self, folder) -> Any:
        """Write the model and its tokenizer to ``folder`` (as ``save_pretrained`` does for a model from the
        Hub) and return the model loaded back from it: a model that knows its folder carries its tokenizer
        into the files that hold one (the GGUF vocabulary, so llama.cpp can tokenize text)."""
        from transformers import LlamaForCausalLM
        from transformers.utils import logging as hf_logging

        folder = Path(folder).resolve()  # the model remembers this path: absolute, whatever the working folder
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
            return LlamaForCausalLM.from_pretrained(folder).eval()
        finally:
            if bars:
                hf_logging.enable_progress_bar()


def lm_demo(seconds: float = 60.0, length: int = 64, n_calib: int = 32, n_eval: int = 64, vocab_size: int = 2048,
            batch: int = 16, seed: int = 0, verbose: bool = True, **model_kw) -> LMDemo:
    """Corpus, tokenizer, model, training: the small language model of the example notebook.
    ``eval``: the first ``n_eval`` windows of the held-out paragraphs (never trained on); ``calib``: windows
    of the training text."""
    corpus = docstring_corpus()
    tokenizer = train_tokenizer(corpus.train, vocab_size)
    train_ids, eval_ids = token_stream(tokenizer, corpus.train), token_stream(tokenizer, corpus.eval)
    model = tiny_llama(vocab_size=len(tokenizer), max_positions=length, seed=seed, **model_kw)
    training = train_lm(model, train_ids, seconds=seconds, length=length, batch=batch, seed=seed, verbose=verbose)
    rng = np.random.default_rng(seed + 1)
    calib = windows(train_ids, length)[np.sort(rng.choice(len(train_ids) // length, n_calib, replace=False))]
    return LMDemo(model, tokenizer, {"input_ids": calib}, {"input_ids": windows(eval_ids, length, n_eval)},
                  corpus, training)
