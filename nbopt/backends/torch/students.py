"""The students nbopt's ``distill`` recipe builds for a torch teacher (besides the structured-pruned copy):

``mobilenet(example, output, width)``: a MobileNetV3-Small-style image classifier (Howard et al., 2019,
table 2): inverted residual blocks (1x1 expand, depthwise kxk, squeeze-excite, 1x1 project), hard-swish,
a width multiplier, global average pooling and a two-layer classifier. It is sized from the teacher's input
and output: the input's channels feed the stem; the paper's five stride-2 layers assume 224x224 images, so
a smaller image keeps only the last ones, as many as leave the last feature map at least 2x2 (8x8 digits:
2, 32x32: 4, 224x224: all 5), dropping the early ones as CIFAR adaptations do; the paper's 1024-wide
classifier head was made for 1000 classes, so a model with fewer classes gets a narrower one.

``shallow(model, width)``: a transformer encoder (a Hugging Face model with ``config.num_hidden_layers``, or
``torch.nn.TransformerEncoder``) with only ``round(L * width)`` of its L layers, every k-th one (the top
layer always kept), initialised from the teacher's weights (the embeddings and heads too).

torch is imported when a student is built, never when this module is imported.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import SkipCandidate
from .runner import import_torch

# MobileNetV3-Small's bottlenecks (paper, table 2): kernel, expanded channels, out channels, SE, hard-swish, stride
SMALL = ((3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
         (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
         (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
         (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1))
STEM, LAST = 16, 576  # the stem's and the last 1x1 convolution's channels
HEAD = (128, 1024)  # classifier hidden width: the number of classes, clipped to this range (1024 at 1000 classes)
MIN_FEATURE_MAP = 2  # the last feature map is at least this many pixels on its shorter side


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of 8 (fast kernels), never more than 10 % below ``v`` (the paper's rule)."""
    n = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return n + divisor if n < 0.9 * v else n


@dataclass(frozen=True)
class Plan:
    """What the MobileNet student is built from: input channels, image size, classes, width, strides."""

    channels: int
    size: tuple[int, int]
    classes: int
    width: float

    @property
    def downsamplings(self) -> int:
        """How many of the network's six stride-2 layers (stem + five) keep the last map >= 2x2; at most 5."""
        side = min(self.size)
        return int(np.clip(np.floor(np.log2(max(side, 1) / MIN_FEATURE_MAP)), 0, 5))

    def strides(self) -> list[int]:
        """Strides of the stem and each bottleneck: the paper's, with the earliest stride-2s set to 1."""
        paper = [2] + [b[5] for b in SMALL]
        twos = [i for i, s in enumerate(paper) if s == 2]
        keep = set(twos[len(twos) - self.downsamplings:]) if self.downsamplings else set()
        return [2 if i in keep else 1 for i in range(len(paper))]

    @property
    def head(self) -> int:
        return make_divisible(self.width * int(np.clip(self.classes, *HEAD)))

    def describe(self, params: int) -> str:
        return f"MobileNetV3-style, width {self.width:g}, {params:,} parameters"


def image_classifier(example: dict[str, np.ndarray], output) -> Plan | str:
    """The ``Plan`` for a teacher that takes one (N,C,H,W) float image and returns (N, classes) scores; else
    the sentence saying what it takes instead."""
    arrays = list(example.values())
    shown = ", ".join(f"{k} {_shape(v)}" for k, v in example.items())
    out_shape = "(" + ",".join(["N", *map(str, tuple(output.shape)[1:])]) + ")"
    if len(arrays) != 1 or arrays[0].ndim != 4 or not np.issubdtype(arrays[0].dtype, np.floating):
        return f"this model takes {shown}"
    if output.dim() != 2 or not output.is_floating_point() or output.shape[1] < 2:
        return f"this model takes {shown} and returns {out_shape}"
    _, c, h, w = arrays[0].shape
    return Plan(int(c), (int(h), int(w)), int(output.shape[1]), 1.0)


def _shape(a: np.ndarray) -> str:
    return "(" + ",".join(["N", *map(str, a.shape[1:])]) + ")" + ("" if a.dtype == np.float32 else f" {a.dtype}")


def mobilenet(example: dict[str, np.ndarray], output, width: float, seed: int = 0):
    """(student module, its Plan) for an image classifier, or SkipCandidate saying why the model is not one."""
    plan = image_classifier(example, output)
    if isinstance(plan, str):
        raise SkipCandidate(f"student='mobilenet' is for image classifiers (N,C,H,W) -> (N,classes); {plan}.")
    plan = Plan(plan.channels, plan.size, plan.classes, float(width))
    torch = import_torch()
    torch.manual_seed(seed)
    return _classes()["MobileNetV3Student"](plan), plan


@functools.lru_cache(maxsize=None)
def _classes() -> dict[str, Any]:
    """The student's modules, defined on first use so that importing this file does not import torch."""
    torch = import_torch()
    nn = torch.nn

    def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act=None) -> nn.Sequential:
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, *([act()] if act is not None else []))

    class HardSigmoid(nn.Module):
        """The paper's h-sigmoid, ReLU6(x + 3) / 6, written out: nn.Hardsigmoid's decomposition leaves scalar
        copies outside ExecuTorch's XNNPACK delegate, this form lowers entirely into it."""

        def forward(self, x):
            return torch.nn.functional.relu6(x + 3.0) * (1.0 / 6.0)

    class SqueezeExcite(nn.Module):
        """Channel attention: global pool -> 1x1 squeeze (ReLU) -> 1x1 excite (hard-sigmoid) -> scale."""

        def __init__(self, channels: int):
            super().__init__()
            squeeze = make_divisible(channels // 4)
            self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)
            self.relu, self.gate = nn.ReLU(), HardSigmoid()

        def forward(self, x):
            s = x.mean((2, 3), keepdim=True)
            return x * self.gate(self.fc2(self.relu(self.fc1(s))))

    class InvertedResidual(nn.Module):
        """1x1 expand -> depthwise kxk -> (SE) -> 1x1 project, with a skip when the shapes allow."""

        def __init__(self, cin: int, k: int, expanded: int, cout: int, se: bool, hswish: bool, stride: int):
            super().__init__()
            act = nn.Hardswish if hswish else nn.ReLU
            layers = [conv_bn(cin, expanded, 1, act=act)] if expanded != cin else []
            layers.append(conv_bn(expanded, expanded, k, stride, groups=expanded, act=act))
            if se:
                layers.append(SqueezeExcite(expanded))
            layers.append(conv_bn(expanded, cout, 1))
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.block(x)
            return x + y if self.residual else y

    class MobileNetV3Student(nn.Module):
        def __init__(self, plan: Plan):
            super().__init__()
            w, strides = plan.width, plan.strides()
            c = make_divisible(STEM * w)
            layers = [conv_bn(plan.channels, c, 3, strides[0], act=nn.Hardswish)]
            for (k, exp, out, se, hs, _), stride in zip(SMALL, strides[1:]):
                out = make_divisible(out * w)
                layers.append(InvertedResidual(c, k, make_divisible(exp * w), out, se, hs, stride))
                c = out
            last = make_divisible(LAST * w)
            layers.append(conv_bn(c, last, 1, act=nn.Hardswish))
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(last, plan.head), nn.Hardswish(),
                                            nn.Dropout(0.2), nn.Linear(plan.head, plan.classes))
            self._init()

        def _init(self):
            """torchvision's MobileNetV3 initialisation for convolutions and batch norms; the classifier keeps
            torch's default (the paper's N(0, 0.01) suits a 1000-way ImageNet head and learns slowly in the few
            epochs a distillation runs: 0.75 vs 0.94 digits accuracy after 3 epochs at width 0.25)."""
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            return self.classifier(self.pool(self.features(x)))

    return {"MobileNetV3Student": MobileNetV3Student}


# -- shallow: fewer transformer layers -------------------------------------------------------------------
@dataclass
class Layers:
    """Where a model keeps its stack of transformer layers."""

    owner: Any  # the module holding the list (BertEncoder, nn.TransformerEncoder)
    attr: str  # its attribute name ("layer", "layers")
    config: Any  # the HF config with num_hidden_layers, or None (nn.TransformerEncoder)
    model: str  # the class name of the model the stack belongs to (BertForSequenceClassification, ...)

    @property
    def stack(self):
        return getattr(self.owner, self.attr)


def find_layers(model) -> Layers | None:
    """The encoder layer list: a ModuleList of ``config.num_hidden_layers`` same-type blocks inside a Hugging
    Face model (``encoder.layer``, ``layers``, ``h``, ...), or an ``nn.TransformerEncoder``'s ``layers``."""
    torch = import_torch()
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.TransformerEncoder):
            return Layers(module, "layers", None, type(module).__name__)
        config = getattr(module, "config", None)
        n = getattr(config, "num_hidden_layers", None)
        if not isinstance(n, int) or n < 1:
            continue
        for _, owner in module.named_modules():
            for attr, child in owner.named_children():
                if isinstance(child, torch.nn.ModuleList) and len(child) == n and len({type(c) for c in child}) == 1:
                    return Layers(owner, attr, config, type(module).__name__)
    return None


def kept_layers(total: int, width: float) -> list[int]:
    """Indices of the ``max(1, round(total * width))`` layers kept: every k-th, ending with the top layer
    (its output is what the heads read), e.g. 6 layers at width 0.5 -> [1, 3, 5]."""
    n = int(min(total, max(1, round(total * width))))
    step = total / n
    return sorted({int(round((i + 1) * step)) - 1 for i in range(n)})


def shallow(model, width: float):
    """(a copy of ``model`` with fewer encoder layers, kept indices, the teacher's layer count, the class name
    of the transformer); SkipCandidate for a model without a transformer layer stack."""
    torch = import_torch()
    if find_layers(model) is None:
        raise SkipCandidate("student='shallow' is for transformer encoders (a Hugging Face model with "
                            "config.num_hidden_layers and a layer list such as encoder.layer, or an "
                            "nn.TransformerEncoder); this model has no such layer stack.")
    student = copy.deepcopy(model)
    where = find_layers(student)
    total = len(where.stack)
    keep = kept_layers(total, width)
    layers = [where.stack[i] for i in keep]
    for new, layer in enumerate(layers):
        for m in layer.modules():  # transformers' attention modules index their cache by layer_idx
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new
    setattr(where.owner, where.attr, torch.nn.ModuleList(layers))
    if where.config is not None:
        where.config.num_hidden_layers = len(keep)
        types = getattr(where.config, "layer_types", None)
        if isinstance(types, list) and len(types) == total:  # per-layer attention kinds (newer HF models)
            where.config.layer_types = [types[i] for i in keep]
    else:
        where.owner.num_layers = len(keep)
    return student, keep, total, where.model
