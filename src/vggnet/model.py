"""The VGG network of Table 1, built from the token lists of :mod:`vggnet.configs`.

Reads bottom-up: the feature stack (one loop over a configuration's tokens), the
three heads (the paper's FC classifier, a compact CIFAR head and the paper's dense
test-time form of section 3.2), the network, and the thin public builders.
Module and parameter names follow torchvision (``features.N``, ``classifier.N``) so
its state dicts load unchanged into configurations A, B, D and E.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
import torch.utils.checkpoint
from torch import nn

from .configs import CONFIGS, INITS, LRN_SETTINGS, parse_token, resolve_config, weight_layers
from .errors import VggnetError

HEADS = ("paper", "cifar", "dense")
NormLayer = Callable[[int], nn.Module]


def make_features(tokens: list[str], norm_layer: NormLayer | None = None, in_channels: int = 3,
                  width: float = 1.0) -> tuple[nn.Sequential, dict[str, int]]:
    """Turn a Table 1 column into layers; return them and {"conv1_1": index, "pool1": ...}.

    A conv's name points at its output after BN and ReLU (section 2.1: every hidden
    layer is followed by ReLU), the activation feature extractors use.
    """
    layers: list[nn.Module] = []
    names: dict[str, int] = {}
    block, conv_in_block = 1, 0
    for token in tokens:
        kind, kernel, channels = parse_token(token)
        channels = max(1, round(channels * width))
        if kind == "pool":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            names[f"pool{block}"] = len(layers) - 1
            block, conv_in_block = block + 1, 0
        elif kind == "lrn":
            layers.append(nn.LocalResponseNorm(**LRN_SETTINGS))
        else:
            layers.append(nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2))
            if norm_layer is not None:
                layers.append(norm_layer(channels))
            layers.append(nn.ReLU(inplace=True))
            conv_in_block += 1
            names[f"conv{block}_{conv_in_block}"] = len(layers) - 1
            in_channels = channels
    return nn.Sequential(*layers), names


# The FC head each trained head turns into at test time: (hidden width, side of the map fc6 reads).
DENSE_SHAPES = {"paper": (4096, 7), "cifar": (512, 1)}


def make_head(head: str, in_channels: int, num_classes: int, dropout: float, width: float = 1.0,
              dense_from: str = "paper") -> tuple[nn.Module, nn.Sequential]:
    """(pooling, classifier) for a head; classifier indices 0, 3, 6 are fc6, fc7, fc8.

    "paper": FC-4096, FC-4096, FC-classes over a 7x7 map (section 2.1); adaptive
    average pooling to 7x7 lets inputs of 32 px and more through, as torchvision does.
    "dense": the same layers as convolutions (section 3.2): fc6 a 7x7 conv for the paper
    head (a 1x1 conv for the CIFAR head, trained on 1x1 maps), fc7 and fc8 1x1 convs.
    "cifar": FC-512, FC-512, FC-classes over the 1x1x512 map a 32x32 image leaves after
    pool5, the compact head of the common CIFAR VGGs (e.g. chengyangfu/pytorch-vgg-cifar10).
    """
    if head not in HEADS:
        raise VggnetError(f"unknown head {head!r}; valid heads: {', '.join(HEADS)}")
    full_width, kernel = DENSE_SHAPES[dense_from if head == "dense" else head]
    hidden = max(1, round(full_width * width))
    if head == "dense":
        fc6 = nn.Conv2d(in_channels, hidden, kernel_size=kernel)
        fc7 = nn.Conv2d(hidden, hidden, kernel_size=1)
        fc8 = nn.Conv2d(hidden, num_classes, kernel_size=1)
        pool: nn.Module = nn.Identity()
    elif head == "paper":
        fc6, fc7 = nn.Linear(in_channels * 7 * 7, hidden), nn.Linear(hidden, hidden)
        fc8 = nn.Linear(hidden, num_classes)
        pool = nn.AdaptiveAvgPool2d((7, 7))
    else:  # cifar
        fc6, fc7, fc8 = nn.Linear(in_channels, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, num_classes)
        pool = nn.AdaptiveAvgPool2d((1, 1))
    classifier = nn.Sequential(fc6, nn.ReLU(inplace=True), nn.Dropout(dropout),
                               fc7, nn.ReLU(inplace=True), nn.Dropout(dropout), fc8)
    return pool, classifier


def init_weights(model: nn.Module, scheme: str) -> None:
    """Initialise in place: "paper" N(0, 0.01) and zero biases (3.1), "glorot" (3.1's
    closing note, Glorot & Bengio 2010), "kaiming" (He et al. 2015, torchvision's default:
    convs only, FC layers N(0, 0.01)), "he" (He et al. for the FC layers too, the last layer
    N(0, 0.01): the one that lets VGG-16 without BN start learning at once)."""
    if scheme not in INITS:
        raise VggnetError(f"unknown init {scheme!r}; valid inits: {', '.join(INITS)}")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        if scheme == "paper" or (scheme == "kaiming" and isinstance(m, nn.Linear)) or (scheme == "he" and m is layers[-1]):
            nn.init.normal_(m.weight, 0.0, 0.01)
        elif scheme == "glorot":
            nn.init.xavier_uniform_(m.weight)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        else:  # "he", hidden FC layers: keep the activations' variance through fc6 and fc7
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class VGG(nn.Module):
    """A VGG net: ``features`` (conv stack), ``avgpool``, ``classifier`` (fc6, fc7, fc8)."""

    def __init__(self, config: str = "D", *, norm_layer: NormLayer | None = None,
                 num_classes: int = 1000, head: str = "paper", dropout: float = 0.5,
                 init: str = "kaiming", width: float = 1.0, dense_from: str = "paper") -> None:
        super().__init__()
        if dense_from not in DENSE_SHAPES:
            raise VggnetError(f"dense_from must be one of {', '.join(DENSE_SHAPES)}, got {dense_from!r}")
        if num_classes < 1:
            raise VggnetError(f"num_classes must be at least 1, got {num_classes}")
        self.config, self.head, self.num_classes = config, head, num_classes
        self.batch_norm, self.width, self.dropout = norm_layer is not None, width, dropout
        self.dense_from = dense_from if head == "dense" else head
        self.features, self.feature_names = make_features(CONFIGS[config], norm_layer, width=width)
        channels = [m.out_channels for m in self.features if isinstance(m, nn.Conv2d)][-1]
        self.avgpool, self.classifier = make_head(head, channels, num_classes, dropout, width, dense_from)
        self.feature_info = [  # timm-style: channels and stride at every pool
            {"name": name, "index": idx, "num_chs": self._channels_at(idx), "reduction": 2 ** int(name[4:])}
            for name, idx in self.feature_names.items() if name.startswith("pool")]
        init_weights(self, init)
        self.checkpoint_activations = False   # training: recompute each block's activations in backward

    @property
    def min_input_size(self) -> int:
        """Smallest input side: five 2x2 pools need 32 px; the dense head's 7x7 fc6 needs 224."""
        return 32 * (DENSE_SHAPES[self.dense_from][1] if self.head == "dense" else 1)

    def _channels_at(self, index: int) -> int:
        convs = [m for m in list(self.features)[: index + 1] if isinstance(m, nn.Conv2d)]
        return convs[-1].out_channels

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise VggnetError(f"expected input of shape (N, 3, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_input_size:
            raise VggnetError(f"input {tuple(x.shape[-2:])} is too small for VGG-{self.config} with the "
                              f"{self.head!r} head: each side must be at least {self.min_input_size} px")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 512, H/32, W/32): the conv stack up to pool5. With
        ``checkpoint_activations`` a training pass keeps only the five blocks' inputs and
        recomputes the rest in backward: less memory for one more forward."""
        self._check_input(x)
        if not (self.checkpoint_activations and self.training and torch.is_grad_enabled()):
            return self.features(x)
        bounds = [0] + [idx + 1 for name, idx in self.feature_names.items() if name.startswith("pool")]
        for a, b in zip(bounds, bounds[1:]):
            x = torch.utils.checkpoint.checkpoint(_RecomputedBlock(self.features[a:b]), x, use_reentrant=False)
        return x

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        """Dense head only: the class-score map (N, classes, H/32-6, W/32-6) of section 3.2."""
        if self.head != "dense":
            raise VggnetError(f"score_map needs the 'dense' head, this model has {self.head!r}; see to_dense()")
        return self.classifier(self.forward_features(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """pool5 features -> logits; the dense head averages its score map spatially (3.2)."""
        if self.head == "dense":
            return self.classifier(x).mean(dim=(2, 3))
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, classes) logits; softmax is left to the loss."""
        return self.forward_head(self.forward_features(x))

    def layer_names(self) -> list[str]:
        """Every name :meth:`extract` accepts, in forward order."""
        return list(self.feature_names) + ["fc6", "fc7", "fc8"]

    def named_layers(self) -> dict[str, list[nn.Module]]:
        """{"conv1_1": [conv, bn], ..., "fc6": [linear]}: the parametrised modules of each named layer."""
        layers: dict[str, list[nn.Module]] = {}
        for name, idx in self.feature_names.items():
            if name.startswith("conv"):
                block = [m for m in list(self.features)[max(0, idx - 2):idx] if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
                layers[name] = block if self.batch_norm else block[-1:]
        for name, idx in (("fc6", 0), ("fc7", 3), ("fc8", 6)):
            layers[name] = [self.classifier[idx]]
        return layers

    def extract(self, x: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Named activations ("conv3_3", "pool4", "fc7", ...) in one forward pass that stops
        at the last one asked for, as perceptual and style losses use them."""
        wanted = list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in self.layer_names()]
        if unknown:
            raise VggnetError(f"unknown layer names {unknown}; valid: {', '.join(self.layer_names())}")
        by_index = {idx: name for name, idx in self.feature_names.items()}
        out: dict[str, torch.Tensor] = {}
        self._check_input(x)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if by_index.get(i) in wanted:
                out[by_index[i]] = x
            if len(out) == len(wanted):
                return out
        x = x if self.head == "dense" else torch.flatten(self.avgpool(x), 1)
        for i, layer in enumerate(self.classifier):
            x = layer(x)
            name = {1: "fc6", 4: "fc7", 6: "fc8"}.get(i)
            if name in wanted:
                out[name] = x
        return out


class _RecomputedBlock:
    """A block run twice by activation checkpointing: the second (recomputing) call leaves
    BatchNorm's running statistics alone, so that they match a run without checkpointing."""

    def __init__(self, block: nn.Sequential) -> None:
        self.block, self.calls = block, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            return self.block(x)
        norms = [m for m in self.block if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 0.0
        try:
            return self.block(x)
        finally:
            for m, momentum in zip(norms, saved):
                m.momentum = momentum


def to_dense(model: VGG) -> VGG:
    """The fully convolutional test-time net of section 3.2 from a trained model: fc6
    becomes a 7x7 conv (1x1 for the CIFAR head) and fc7, fc8 1x1 convs, same weights."""
    if model.head == "dense":
        return model
    norm = nn.BatchNorm2d if model.batch_norm else None
    dense = VGG(model.config, norm_layer=norm, num_classes=model.num_classes, head="dense",
                dropout=model.dropout, width=model.width, dense_from=model.head)
    state = model.state_dict()
    for idx in (0, 3, 6):
        key = f"classifier.{idx}.weight"
        state[key] = state[key].reshape(dense.classifier[idx].weight.shape)  # (out, 512*7*7) -> (out, 512, 7, 7)
    dense.load_state_dict(state)
    return dense.to(next(model.parameters()).dtype).train(model.training)


def build_model(config: str = "D", *, batch_norm: bool | None = None, num_classes: int = 1000,
                head: str = "paper", init: str = "kaiming", dropout: float = 0.5, width: float = 1.0,
                dense_from: str = "paper") -> VGG:
    """Any configuration of Table 1 by letter ("A" ... "E", "A-LRN") or common name
    ("vgg16_bn"); ``batch_norm`` adds BatchNorm after every conv (the ``_bn`` variants).
    ``width`` scales every channel count and FC width (1.0 is the paper's; tests use 1/16)."""
    if not 0 < width <= 4:
        raise VggnetError(f"width must be in (0, 4], got {width}")
    letter, bn = resolve_config(config, batch_norm)
    if head not in HEADS:
        raise VggnetError(f"unknown head {head!r}; valid heads: {', '.join(HEADS)}")
    return VGG(letter, norm_layer=nn.BatchNorm2d if bn else None, num_classes=num_classes,
               head=head, dropout=dropout, init=init, width=width, dense_from=dense_from)


def _builder(config: str, batch_norm: bool) -> Callable[..., VGG]:
    def build(*, num_classes: int = 1000, head: str = "paper", init: str = "kaiming", dropout: float = 0.5) -> VGG:
        return build_model(config, batch_norm=batch_norm, num_classes=num_classes, head=head,
                           init=init, dropout=dropout)
    build.__name__ = f"vgg{weight_layers(config)}{'_bn' if batch_norm else ''}"
    build.__doc__ = f"Configuration {config} of Table 1{' with BatchNorm' if batch_norm else ''}; see build_model."
    return build


vgg11, vgg11_bn = _builder("A", False), _builder("A", True)
vgg13, vgg13_bn = _builder("B", False), _builder("B", True)
vgg16, vgg16_bn = _builder("D", False), _builder("D", True)
vgg19, vgg19_bn = _builder("E", False), _builder("E", True)


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters (Table 2 counts weights and biases)."""
    return sum(p.numel() for p in model.parameters())


def fold_batchnorm(model: VGG) -> VGG:
    """A copy for inference with every BatchNorm folded into the conv before it (same
    outputs to float rounding, one op less per layer); indices and layer names unchanged."""
    folded = copy.deepcopy(model).eval()
    layers = list(folded.features)
    for i, m in enumerate(layers):
        if isinstance(m, nn.BatchNorm2d) and i > 0 and isinstance(layers[i - 1], nn.Conv2d):
            folded.features[i - 1] = torch.nn.utils.fusion.fuse_conv_bn_eval(layers[i - 1], m)
            folded.features[i] = nn.Identity()
    return folded
