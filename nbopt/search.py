"""``search="auto"``: accuracy-aware tuning to a budget, the way Intel Neural Compressor, NNCF's
``quantize_with_accuracy_control`` and AIMET's AMP tune.

Given ``max_accuracy_drop``, each backend climbs its own ladder, from the most compressing int8 candidates
towards the safest ones, and stops at the first rung where a candidate fits the budget:

1. per-tensor int8 (one scale per weight tensor: the smallest, simplest scheme)
2. per-channel weight scales
3. the other calibration methods (histogram, entropy, percentile) where the backend has them
4. the most sensitive layers kept in float, one group at a time (1, 2, 4, 8, 16 layers, from the per-layer
   sensitivity on calibration data)
5. int8/fp16 mixes: the most sensitive layers in fp16 instead of fp32, up to all of them (ONNX)
6. fp16 (half the size, close to float accuracy)
7. quantization-aware training, when ``train=`` is given

Every trial is an ordinary row (stored, reused, on the plot). ``study.search_log`` says, per backend, which
step ran, why, and what each trial gave. This module only plans and explains; the study runs the trials.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import NboptError
from .recipes import Recipe

SEARCHES = ("auto", "grid")
KEEP_GROUPS = (1, 2, 4, 8, 16)
CALIBRATIONS = ("histogram", "entropy", "percentile")


def check_search(search: Any) -> str:
    if search not in SEARCHES:
        raise NboptError(f"Unknown search {search!r}; known searches: {', '.join(map(repr, SEARCHES))} (auto climbs "
                         "an accuracy ladder until a candidate fits max_accuracy_drop; grid runs every recipe).")
    return search


@dataclass
class Rung:
    step: str  # what this rung tries, shown in the log and the panel
    why: str  # why it is tried after the previous one
    recipes: list[Recipe] = field(default_factory=list)
    keep: int = 0  # layers kept in float (the keep rungs), to skip groups larger than the model


def ladder(resolve: Callable[[Recipe], tuple[Recipe, str]], has_sensitivity: bool, has_train: bool) -> list[Rung]:
    """The rungs a backend can climb: ``resolve`` is the backend's (recipe -> (full recipe, skip reason)), with
    the study's data checks folded in; recipes it cannot run are left out, and so are repeats."""
    seen: set[tuple[str, str]] = set()

    def rung(step: str, why: str, *recipes: Recipe, keep: int = 0) -> Rung | None:
        full = []
        for r in recipes:
            res, reason = resolve(r)
            if reason or (res.name, res.params_json()) in seen:
                continue
            seen.add((res.name, res.params_json()))
            full.append(res)
        return Rung(step, why, full, keep) if full else None

    rungs = [
        rung("per-tensor int8", "start from the most compressing int8 candidates (one scale per weight tensor)",
             Recipe("int8-dynamic", {"per_channel": False}), Recipe("int8-static", {"per_channel": False})),
        rung("per-channel", "per-tensor int8 broke the budget: one weight scale per output channel is as small "
             "and usually more accurate",
             Recipe("int8-dynamic", {"per_channel": True}), Recipe("int8-static", {"per_channel": True})),
        rung("calibration", "per-channel int8 broke the budget: other ways of choosing activation ranges clip "
             "outliers differently",
             *(Recipe("int8-static", {"per_channel": True, "calibration": c}) for c in CALIBRATIONS)),
    ]
    if has_sensitivity:
        for k in KEEP_GROUPS:
            # the first keep rung also runs the recipe's own search (keep_float auto): where keeping costs no
            # bytes (ONNX's 8-bit blocks) it keeps every MatMul, smaller than keeping one in fp32
            searched = [Recipe("mixed-precision", {"per_channel": True})] if k == KEEP_GROUPS[0] else []
            rungs.append(rung(f"keep {k} layer{'s' if k > 1 else ''} in float",
                              "fully int8 broke the budget: the most sensitive layers (per-layer sensitivity on "
                              f"calibration data) stay in float, {k} at a time",
                              Recipe("mixed-precision", {"keep_float": k, "per_channel": True}), *searched, keep=k))
        # only the ONNX backend runs kept layers in fp16 (the others keep fp32: the rung is left out there)
        rungs.append(rung("int8/fp16 mix", "keeping layers in fp32 broke the budget: the most sensitive layers in "
                          "fp16 instead, up to all of them (half their fp32 bytes each)",
                          Recipe("mixed-precision", {"keep_as": "fp16", "max_size_growth": 1.0,
                                                     "per_channel": True})))
    rungs.append(rung("fp16", "no int8 mix fits: fp16 halves the size with close to float accuracy",
                      Recipe("fp16")))
    if has_train:
        rungs.append(rung("qat", "no post-training candidate fits: quantization-aware training on train= data",
                          Recipe("qat")))
    return [r for r in rungs if r is not None]


def fits(row: dict, budget: float) -> bool:
    drop = row.get("accuracy_drop")
    return row.get("status") == "ok" and drop is not None and drop <= budget


def log_entry(backend: str, index: int, rung: Rung, row: dict, budget: float) -> dict:
    """One line of ``study.search_log``: a trial, the step it belongs to and why that step ran."""
    drop = row.get("accuracy_drop")
    if row.get("status") != "ok":
        result = f"{row.get('status')}: {row.get('error') or ''}".strip(": ")
    elif drop is None:
        result = "no metric value"
    else:
        result = f"drop {drop:.4g} {'<=' if drop <= budget else '>'} {budget:g}"
    return {"backend": backend, "step": index + 1, "rung": rung.step, "candidate": row.get("name"),
            "status": row.get("status"), "accuracy_drop": drop, "size_ratio": row.get("size_ratio"),
            "fits": fits(row, budget), "why": rung.why, "result": result}


def closest_sentence(rows: list[dict], budget: float, metric: str) -> str:
    """The one sentence for a budget nothing met: the closest candidates, and what to try."""
    tried = sorted((r for r in rows if r.get("status") == "ok" and r.get("accuracy_drop") is not None
                    and r.get("recipe") != "baseline"), key=lambda r: r["accuracy_drop"])
    near = ", ".join(f"{r['name']} (drop {r['accuracy_drop']:.4g}, {r['size_ratio']:.0%} of the size)"
                     for r in tried[:3]) or "none measured"
    return (f"No candidate met max_accuracy_drop={budget:g} ({metric}); the closest: {near}. Every trial is in "
            "study.results: raise the budget, or pass train= so that the search can try qat.")
