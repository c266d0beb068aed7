"""Torch backend: per-layer quantization sensitivity and the ``mixed-precision`` recipe (PT2E, XNNPACKQuantizer).

Everything shares one ``Session`` per prepared model and calibration set: the model is exported ONCE, and
(static mode) the calibration data runs ONCE through a graph where every tensor has an activation observer
(the "bank"). Each variant (one layer quantized alone, or everything but the k most sensitive layers) is
then ``prepare_pt2e`` with its own ``XNNPACKQuantizer`` on a copy of that export, its observers filled from
the bank (weight observers run on the weight itself) instead of re-calibrating, and ``convert_pt2e``.
Observers only watch float tensors, so a filled observer holds exactly what calibrating that variant would
have given; an observer PT2E shares between several tensors (a pool's input and output, a cat's inputs)
takes the widest of them (an approximation; a variant whose observers cannot be matched at all is
calibrated normally). Variants are scored by running the converted PT2E module (eager torch, simulated
int8) on calibration data; only the chosen one is calibrated for real, as int8-static is, and lowered to
an ExecuTorch ``.pte``.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np

from ...errors import CandidateError, NboptError, SkipCandidate, one_line
from ...mixed import CalibScore, choose, fidelity, keep_float_steps
from ...quiet import quiet
from .quant import calibrate, export_for_pt2e, module_quantizer, quantizable_modules, xnnpack_config
from .reports import pt2e_counts
from .runner import first_output, import_torch, to_tensors

SENS_EXAMPLES = 64  # calibration examples each layer's sensitivity is measured on
SCORE_EXAMPLES = 256  # calibration examples each mixed-precision trial is scored on (eager simulated int8 is slow)
CALIB_EXAMPLES = 1024  # as int8-static: observers see up to this many calibration examples
COLUMNS = ["node", "op_type", "params", "rel_error", "cosine", "max_abs_diff", "rank", "error"]


def cache_of(prepared) -> dict:
    """The in-memory cache on a prepared model (sessions, sensitivity tables)."""
    return prepared.__dict__.setdefault("_cache", {})


def session(prepared, calib) -> "Session":
    key = ("session", getattr(calib, "fingerprint", id(calib)))
    cache = cache_of(prepared)
    if key not in cache:
        cache[key] = Session(prepared, calib)
    return cache[key]


class Session:
    """One export, the calibration inputs, the float reference outputs and the observer bank."""

    def __init__(self, prepared, calib):
        torch = import_torch()
        if calib is None:
            raise NboptError("Sensitivity analysis and mixed-precision need calibration data: pass calib=....")
        self.prepared, self.calib = prepared, calib
        with torch.no_grad(), quiet():
            self.program, self.batch = export_for_pt2e(prepared.module, prepared.args)
            self.graph = self.program.module()
        self.feeds, self.labels = _head(calib, prepared.input_names, SCORE_EXAMPLES)
        self.ref = self.run(prepared.module, static_batch=False)
        self._bank: dict | None = None
        self.calibrated_on = 0
        # how each variant got its observers: from the bank (exactly / a shared one approximated) or calibrated
        self.stats = {"filled": 0, "approximated": 0, "calibrated": 0}

    # -- running ---------------------------------------------------------------------------------------
    def run(self, module, n: int | None = None, static_batch: bool = True) -> np.ndarray:
        """``module``'s first output on the first ``n`` calibration examples (all held ones by default)."""
        torch = import_torch()
        n = n or len(next(iter(self.feeds.values())))
        step = 1 if (static_batch and self.batch is not None) else 64
        outs = []
        with torch.no_grad(), quiet():
            for i in range(0, n, step):
                args = to_tensors({k: v[i:min(i + step, n)] for k, v in self.feeds.items()})
                outs.append(first_output(module(*args)).detach().float().numpy())
        return np.concatenate(outs)

    # -- variants --------------------------------------------------------------------------------------
    def quantize(self, quantizer, dynamic: bool, exact: bool = False):
        """The converted PT2E module of ``quantizer`` applied to a copy of the one export: observers filled
        from the bank, or (``exact``, or when they cannot be) calibrated on the calibration data."""
        torch = import_torch()
        with quiet():
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        with torch.no_grad(), quiet():
            observed = prepare_pt2e(copy.deepcopy(self.graph), quantizer)
        how = None if exact else self._fill(observed, dynamic)
        if how is None:
            self.calibrated_on = calibrate(observed, self.calib, self.prepared.input_names, self.batch,
                                           CALIB_EXAMPLES)
            how = "calibrated"
        self.stats[how] += 1
        with torch.no_grad(), quiet():
            return convert_pt2e(observed)

    def _fill(self, observed, dynamic: bool) -> str | None:
        """Fill every observer of a prepared module without running it: weights observe themselves,
        activations load the bank's state for the same tensor. An observer PT2E shares between tensors
        (SharedQuantizationSpec: a pool's input and output, a cat's inputs) takes the widest of them, which
        holds the others' ranges. Returns "filled" (exact), "approximated" (a shared observer), or None
        when an observer cannot be matched."""
        groups: dict[int, list] = {}
        for node in observed.graph.nodes:
            if node.op == "call_module":
                obs = observed.get_submodule(node.target)
                if hasattr(obs, "calculate_qparams"):
                    groups.setdefault(id(obs), [obs]).append(node.args[0])
        shared = False
        for obs, *sources in groups.values():
            if getattr(sources[0], "op", None) == "get_attr":
                for src in sources:
                    obs(_attr(observed, src.target))
                continue
            if type(obs).__name__ == "PlaceholderObserver":  # dynamic activations: nothing to calibrate
                continue
            if dynamic:
                return None
            banked = [self.bank(obs).get(getattr(src, "name", None)) for src in sources]
            if any(b is None or type(b) is not type(obs) for b in banked):
                return None
            widest = max(banked, key=lambda b: float(b.max_val) - float(b.min_val))
            obs.load_state_dict(widest.state_dict())
            shared = shared or len(sources) > 1
        return "approximated" if shared else "filled"

    def bank(self, like) -> dict:
        """{node name: observer} over every float tensor of the (prepare-transformed) graph, calibrated once
        on the calibration data with the same observer kind as ``like``."""
        if self._bank is None:
            self._bank = self._calibrate_bank(like)
        return self._bank

    def _calibrate_bank(self, like) -> dict:
        torch = import_torch()
        with quiet():
            from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
        with torch.no_grad(), quiet():  # an empty quantizer: the same graph rewrites (conv-bn folding), no observers
            base = prepare_pt2e(copy.deepcopy(self.graph), module_quantizer(None, only=[]))
        observers = {n.name: copy.deepcopy(like)  # ``like`` is a fresh observer: nothing recorded yet
                     for n in base.graph.nodes
                     if n.op in ("placeholder", "call_function") and _is_float(n.meta.get("val"))}

        class Observing(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                if n.name in observers:
                    observers[n.name](out)
                return out

        interp = Observing(base)
        self.calibrated_on = calibrate(lambda *a: interp.run(*a), self.calib, self.prepared.input_names,
                                       self.batch, CALIB_EXAMPLES)
        return observers


def _attr(module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module


def _is_float(val) -> bool:
    return getattr(val, "is_floating_point", None) is not None and val.is_floating_point()


def _head(calib, names: list[str], n: int):
    """The first ``n`` calibration inputs (dict of arrays) and their labels (None without labels)."""
    inputs, labels, seen = [], [], 0
    for batch, lab in calib.batches(64):
        inputs.append({k: batch[k] for k in names})
        labels.append(lab)
        seen += len(next(iter(batch.values())))
        if seen >= n:
            break
    if not inputs:
        raise CandidateError("The calibration data yielded no examples.")
    feeds = {k: np.concatenate([b[k] for b in inputs])[:n] for k in names}
    labs = None if any(lab is None for lab in labels) else np.concatenate(labels)[:n]
    return feeds, labs


# -- sensitivity -------------------------------------------------------------------------------------------


def sensitivity(prepared, calib, mode: str):
    """Per-layer table (see ``TorchBackend.sensitivity``), cached in memory and on disk."""
    key = ("sens", mode, getattr(calib, "fingerprint", id(calib)))
    cache = cache_of(prepared)
    if key not in cache:
        df = _load(prepared, key)
        cache[key] = df if df is not None else _measure(prepared, calib, mode)
        _save(prepared, key, cache[key])
    return cache[key].copy()


def cached(prepared, calib, mode: str) -> bool:
    key = ("sens", mode, getattr(calib, "fingerprint", id(calib)))
    return key in cache_of(prepared) or _disk(prepared, key) is not None and _disk(prepared, key).exists()


def _measure(prepared, calib, mode: str):
    import pandas as pd

    sess = session(prepared, calib)
    dynamic = mode == "dynamic"
    config = xnnpack_config(True, "histogram", dynamic=dynamic)
    n = min(SENS_EXAMPLES, len(sess.ref))
    rows = []
    for name, module in quantizable_modules(prepared.module):
        row = {"node": name, "op_type": type(module).__name__, "params": int(module.weight.numel()),
               "rel_error": np.nan, "cosine": np.nan, "max_abs_diff": np.nan, "error": None}
        try:
            converted = sess.quantize(module_quantizer(config, only=[name]), dynamic)
            if not pt2e_counts(converted):
                row["error"] = f"XNNPACKQuantizer ({mode}) does not quantize this layer"
            else:
                row.update(fidelity(sess.ref[:n], sess.run(converted, n)))
        except Exception as exc:  # noqa: BLE001 - a layer that cannot be quantized alone is reported, not fatal
            row["error"] = one_line(exc, 200, with_type=True)
        rows.append(row)
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"])
    df = df.sort_values("rel_error", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    df.insert(len(df.columns) - 1, "rank", np.arange(1, len(df) + 1))
    return df


def _disk(prepared, key) -> Path | None:
    folder = getattr(prepared, "dir", None)
    if folder is None or key[2] is None or isinstance(key[2], int):
        return None
    return Path(folder) / f"torch_sensitivity_{key[1]}_{key[2]}.json"


def _load(prepared, key):
    import pandas as pd

    path = _disk(prepared, key)
    if path is None or not path.exists():
        return None
    try:
        return pd.DataFrame(json.loads(path.read_text()), columns=COLUMNS)
    except Exception:  # noqa: BLE001 - a damaged cache file is measured again
        return None


def _save(prepared, key, df) -> None:
    path = _disk(prepared, key)
    if path is None or path.exists():
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:  # written whole, then renamed: a worker reading it at the same time never sees half a file
        tmp.write_text(df.astype(object).where(df.notna(), None).to_json(orient="records"))
        os.replace(tmp, path)
    except OSError:  # a read-only or removed folder: the in-memory cache still works
        tmp.unlink(missing_ok=True)


# -- mixed-precision ---------------------------------------------------------------------------------------


def mixed_precision(prepared, params: dict, ctx, sens) -> tuple:
    """Search per_channel and how many of the most sensitive layers stay float; returns (converted module
    of the chosen trial, notes, info)."""
    keep = params["keep_float"]
    if keep != "auto" and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise NboptError(f"Recipe 'mixed-precision' parameter 'keep_float' is {keep!r}; give 'auto' or a "
                         "whole number of layers (0 or more).")
    mode = params["mode"]
    dynamic = mode == "dynamic"
    sess = session(prepared, ctx.calib)
    ranked = sens.dropna(subset=["rel_error"]).reset_index(drop=True)
    names, counts = list(ranked["node"]), [int(p) for p in ranked["params"]]
    score = CalibScore(sess.ref, sess.labels, ctx.metric)
    total = sum(int(p.numel()) for p in prepared.module.parameters())
    trials: list[dict] = []

    def trial(pc: bool, k: int) -> dict:
        converted = sess.quantize(module_quantizer(xnnpack_config(pc, "histogram", dynamic), skip=names[:k]), dynamic)
        quantized = sum(counts[k:])  # estimated size: int8 weights for quantized layers, fp32 for the rest
        out = sess.run(converted)
        row = {"per_channel": pc, "k": k, "loss": float(score.loss(out)), "size": 4 * (total - quantized) + quantized,
               "rel_error": fidelity(sess.ref, out)["rel_error"]}
        trials.append(row)
        return row

    pcs = (True, False) if params["per_channel"] == "auto" else (bool(params["per_channel"]),)
    if dynamic:  # XNNPACK's dynamic int8 kernels (qd8) take per-channel weights only: per-tensor does not lower
        if pcs == (False,):
            raise SkipCandidate("XNNPACK runs dynamic int8 with per-channel weights only: mode='dynamic' "
                                "needs per_channel=True or 'auto' on the torch backend.")
        pcs = (True,)
    full = [trial(pc, 0) for pc in pcs]
    pc = min(full, key=lambda t: t["loss"])["per_channel"]
    if keep == "auto":
        budget = params["max_size_growth"] * next(t["size"] for t in full if t["per_channel"] == pc) / 3.0
        for k in keep_float_steps(counts, budget):
            trial(pc, k)
        chosen = choose([t for t in trials if t["per_channel"] == pc], noise=score.noise)
    else:
        k = min(keep, len(names))
        chosen = next((t for t in full if t["per_channel"] == pc and t["k"] == k), None) or trial(pc, k)
    # the chosen one calibrated for real (as int8-static is): exactly what PT2E gives for that quantizer
    # (dynamic: nothing to calibrate, the filled observers are exact)
    module = sess.quantize(module_quantizer(xnnpack_config(pc, "histogram", dynamic), skip=names[:chosen["k"]]),
                           dynamic, exact=not dynamic)
    kept = names[:chosen["k"]]
    base = next(t for t in full if t["per_channel"] == pc)
    kept_txt = (f"kept {len(kept)} most sensitive layer(s) in float ({', '.join(kept[:4])}"
                f"{', ...' if len(kept) > 4 else ''})" if kept else "kept no layer in float")
    acts = "int8 activations quantized at run time" if dynamic else \
        f"int8 activations (histogram observers, {sess.calibrated_on} calibration examples)"
    vs = f" vs {base['loss']:.4g} with every layer int8" if chosen is not base else ""
    notes = [f"mixed precision ({mode}, {'searched' if keep == 'auto' else 'fixed'}), PT2E XNNPACKQuantizer, "
             f"{acts}: chose per_channel={pc}, {kept_txt}; scored by {score.by} (loss {chosen['loss']:.4g}{vs}) "
             f"over {len(trials)} trials, each run as the converted PT2E module (simulated int8 in eager torch, "
             f"observers from one calibration pass), only the chosen one calibrated for real and lowered; "
             f"layers ranked by sensitivity (each layer alone quantized, "
             f"{min(SENS_EXAMPLES, len(sess.ref))} calibration examples)"]
    info = {"kept_float": len(kept), "quantizer": "XNNPACKQuantizer", "calib_loss": chosen["loss"],
            "calib_rel_error": chosen["rel_error"],
            "per_channel": pc, "trials": len(trials)}
    return module, notes, info
