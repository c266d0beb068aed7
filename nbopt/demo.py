"""Built-in demo: scikit-learn's digits (shipped inside the package, no download) and a small CNN.

``python -m nbopt demo`` trains the CNN for a few seconds, runs the default sweep and writes a report.
"""
from __future__ import annotations

import numpy as np


def digits_arrays(seed: int = 0, val_fraction: float = 0.3):
    """(Xtr, ytr, Xval, yval): float32 images (N, 1, 8, 8) in [0, 1] and int64 labels, stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    xtr, xval, ytr, yval = train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)
    return xtr, ytr, xval, yval


def _digits_cnn_class():
    import torch.nn as nn

    class DigitsCNN(nn.Module):
        """conv-conv-linear-linear: small enough to train in seconds, big enough to quantize and prune."""

        def __init__(self, width: int = 32, hidden: int = 128):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, width * 2, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2),
            )
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Linear(width * 2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10),
            )

        def forward(self, x):
            return self.classifier(self.features(x))

    return DigitsCNN


def __getattr__(name: str):
    # DigitsCNN is built on first use so that importing nbopt.demo does not import torch.
    if name == "DigitsCNN":
        return _digits_cnn_class()
    raise AttributeError(name)


def train_digits_cnn(epochs: int = 8, seed: int = 0, width: int = 32, hidden: int = 128, data=None):
    """Train a DigitsCNN on the digits training split; returns the model in eval mode."""
    import torch

    torch.manual_seed(seed)
    xtr, ytr, _, _ = data if data is not None else digits_arrays(seed)
    model = _digits_cnn_class()(width, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def outlier_mlp(data=None, scale: float = 400.0, seed: int = 0):
    """(model, k): a digits MLP (Flatten-Linear-ReLU-Linear) whose hidden channel ``k`` is scaled up ``scale``
    times and scaled back down in the next layer. ReLU(s*z) = s*ReLU(z), so the fp32 function is unchanged,
    but that one channel's activations dwarf the others: the case where post-training int8 hurts (one
    activation scale for the whole tensor) and quantization-aware training helps."""
    import torch

    xtr, ytr, _, _ = data if data is not None else digits_arrays(seed)
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(30):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        k = int(torch.relu(m[1](m[0](x))).mean(0).argmax())
        m[1].weight[k] *= scale
        m[1].bias[k] *= scale
        m[3].weight[:, k] /= scale
    return m.eval(), k


def token_batch(n: int, seed: int = 0, vocab: int = 200, length: int = 16, min_length: int = 6) -> dict:
    """Random padded token ids with their attention mask: the two named inputs of a text encoder."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (n, length))
    lens = rng.integers(min_length, length + 1, n)
    mask = (np.arange(length)[None] < lens[:, None]).astype(np.int64)
    return {"input_ids": (ids * mask).astype(np.int64), "attention_mask": mask}


def tiny_bert_encoder(vocab: int = 200, hidden: int = 64, layers: int = 2, heads: int = 4, max_length: int = 32,
                      num_labels: int = 4, seed: int = 0):
    """A small BERT classifier (built from a transformers config, random weights) taking
    ``(input_ids, attention_mask)`` and returning logits: the multi-input example for ONNX export."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=4 * hidden,
                                  max_position_embeddings=max_length, num_labels=num_labels)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = transformers.BertForSequenceClassification(cfg)

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits

    return Encoder().eval()
