"""Configuration: frozen dataclasses, one per concern, saved inside checkpoints and manifests."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .errors import UsageError

T = TypeVar("T")

EFFICIENTNETS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BACKBONES = ("small", "resnet18", "resnet34", "resnet50", *EFFICIENTNETS)
LOSSES = ("contrastive", "triplet", "ntxent")
POOLINGS = ("avg", "gem")
HEADS = ("mlp", "linear", "none")
WHITEN_FROM = ("head", "pool")  # what the learned whitening reads: the head's vectors, or the trunk's pooled features
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luminance weights: a colour image's grey, for augmentation and test views
FRAMINGS = ("centre", "trimmed")  # how a picture becomes the square input (transforms.square_view)
MIN_TEST_SCALE, MAX_TEST_SCALE = 0.25, 4.0  # test-time resize factors: a quarter of the input side to four times it

# ImageNet statistics for torchvision backbones; a neutral grey for the small net and for EfficientNet-Lite,
# whose ImageNet weights (trained in TensorFlow) expect [-1, 1] inputs, as timm's tf_efficientnet_lite config says.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples become lists) so a config can live in JSON and in a checkpoint."""
    return dataclasses.asdict(cfg)


def _tuples(value: Any) -> Any:
    """Lists back to (nested) tuples, as the frozen dataclasses declare them."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _renamed(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Keys an older file used, under today's names (a class lists them in LEGACY_KEYS: old → new)."""
    legacy: dict[str, str] = getattr(cls, "LEGACY_KEYS", {})
    return {k: v for k, v in data.items() if k not in legacy} | {new: data[old] for old, new in legacy.items()
                                                                    if old in data}


def _check_type(name: str, value: Any, default: Any) -> None:
    """Refuse a stored value of another type than its field's (a damaged file), so no config is half valid."""
    want = (int, float) if isinstance(default, float) else type(default)
    if default is not None and (not isinstance(value, want) or isinstance(value, bool) != isinstance(default, bool)):
        raise UsageError(f"{name} is a {type(value).__name__}, not a {type(default).__name__}")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config, ignoring unknown keys and renaming legacy ones so older checkpoints stay loadable.

    Raises:
        UsageError: a value of the wrong type or out of range.
    """
    defaults = cls()  # type: ignore[call-arg]
    data = _renamed(cls, data)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value, default = data[f.name], getattr(defaults, f.name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):  # an old label where a config now lives: keep the default
                continue
            value = from_dict(type(default), value)
        kwargs[f.name] = _tuples(value)
        _check_type(f.name, kwargs[f.name], default)
    return cls(**kwargs)


@dataclass(frozen=True)
class Preprocess:
    """The exact eval preprocessing an encoder expects; stored with its weights."""

    image_size: int = 224
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    framing: str = "centre"


@dataclass(frozen=True)
class EncoderConfig:
    """What network to build: backbone, embedding size and input format."""

    backbone: str = "resnet18"
    dim: int = 128
    image_size: int = 224
    channels: int = 3
    pretrained: bool = False
    standardize: bool = False  # each image to zero mean, unit std per channel first: blind to brightness and contrast
    pooling: str = "avg"  # gem: generalised mean (Radenović et al.), SSCD's pooling for copy detection
    gem_p: float = 3.0  # GeM's starting exponent (learned): 1 is average pooling, large p tends to max pooling
    head: str = "mlp"  # mlp: Linear-BN-ReLU-Linear; linear: one projection, as SSCD; none: the pooled features
    # as they are (dim must be theirs)
    whiten: int = 0  # a learned whitening to this many dimensions (siamsearch.training.whitening); 0: none
    # pool: the whitening reads the trunk's pooled features, not the head's vectors; the head then serves SGD's loss
    # only, as SimCLR's projection head does (Chen et al. 2020: the features before it transfer better)
    whiten_from: str = "head"
    # test-time augmentation: out of training, the pooled features are the mean over the image and its four copies
    # moved this many pixels diagonally (0: off); five trunk passes per image
    test_shifts: int = 0
    # test-time augmentation: out of training, the pooled features are also averaged over the image resized by each
    # of these factors (one more trunk pass each); 1.41 shows the trunk a copy cropped to half the area at the scale
    # the original's matching part has (scripts/bench_neardup.py)
    test_scales: tuple[float, ...] = ()
    # test-time augmentation: out of training, the image (and its shifted copies) is also seen in grey, its luminance
    # in each channel: one more trunk pass at the input size; a grey copy then shares that part of what is averaged
    test_grey: bool = False
    # centre: the picture's centred square; trimmed: a plain border (letterbox bars, a mount, a canvas) cut off
    # first, so a framed or letterboxed copy shows what its original shows (transforms.trim_plain_border)
    framing: str = "centre"

    def __post_init__(self) -> None:
        if self.framing not in FRAMINGS:
            raise UsageError(f"framing must be one of {', '.join(FRAMINGS)}")
        if self.backbone not in BACKBONES:
            raise UsageError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.pooling not in POOLINGS or self.head not in HEADS:
            raise UsageError(f"pooling must be one of {', '.join(POOLINGS)} and head one of {', '.join(HEADS)}")
        if self.gem_p < 1:
            raise UsageError("gem_p must be >= 1")
        if self.channels not in (1, 3):
            raise UsageError("channels must be 1 (grayscale) or 3 (RGB)")
        if self.dim < 2 or self.image_size < 8 or not 0 <= self.test_shifts < self.image_size // 4:
            raise UsageError("dim must be >= 2, image_size >= 8, and test_shifts 0 to a quarter of image_size")
        if not all(MIN_TEST_SCALE <= scale <= MAX_TEST_SCALE for scale in self.test_scales):
            raise UsageError(f"test_scales must lie between {MIN_TEST_SCALE} and {MAX_TEST_SCALE}")
        if self.whiten_from not in WHITEN_FROM:
            raise UsageError(f"whiten_from must be one of {', '.join(WHITEN_FROM)}")
        if self.whiten and (self.whiten < 2 or self.whiten_from == "head" and self.whiten > self.dim):
            raise UsageError(f"whiten must be 0 (off) or 2 to dim ({self.dim}): whitening keeps the strongest axes")

    @property
    def embedding_dim(self) -> int:
        """The size of the vectors the encoder gives: the whitening's when there is one, else the head's."""
        return self.whiten or self.dim

    def preprocess(self) -> Preprocess:
        """Eval preprocessing for this encoder (ImageNet stats for torchvision backbones)."""
        if self.backbone == "small" or self.backbone in EFFICIENTNETS:
            mean, std = (0.5,) * self.channels, (0.5,) * self.channels
        elif self.channels == 1:
            mean, std = (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
        else:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        return Preprocess(self.image_size, self.channels, mean, std, self.framing)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentations, applied per sample on the batch; see AUGMENT_PRESETS for per-domain choices."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (0.8, 1.25)
    flip: bool = True
    rotate: float = 10.0
    shear: float = 0.0
    translate: float = 0.0
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    pad_p: float = 0.0  # shrunk into a plain border (scale 0.5-0.9), as a copy pasted onto a canvas
    text_p: float = 0.0  # a caption drawn over the image (PIL's default font)
    shapes_p: float = 0.0  # one to three filled shapes drawn over the image
    page_p: float = 0.0  # shrunk into a page of bars and lines of text, as a screenshot of a photo shown on a site
    jpeg_p: float = 0.0  # recompressed at a JPEG quality drawn from jpeg_quality
    jpeg_quality: tuple[int, int] = (20, 90)
    gamma: float = 1.0  # pixel values raised to a power between 1/gamma and gamma (log-uniform): harsh exposure
    shade: float = 0.0  # darkened by up to this share towards one random side: light from one side


# Named so that none is also a recipe's name (training.recipes): a recipe picks one, `--set augment=NAME` another.
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    # Handwriting and symbols: no flips (a mirrored character is another character), gentle affine.
    "characters": AugmentConfig(crop_scale=(0.85, 1.0), crop_ratio=(0.9, 1.1), flip=False, rotate=10.0,
                                shear=10.0, translate=0.05, brightness=0.0, contrast=0.0, saturation=0.0),
    # Faces and objects of one identity: mild crops, flips, lighting changes.
    "portraits": AugmentConfig(crop_scale=(0.7, 1.0), flip=True, rotate=10.0, translate=0.05,
                               brightness=0.3, contrast=0.3, saturation=0.2, blur_p=0.1),
    # Faces under any light: "portraits" plus gamma 1/3-3 and one-sided shading, so lighting is not identity.
    "lighting": AugmentConfig(crop_scale=(0.7, 1.0), flip=True, rotate=10.0, translate=0.05, brightness=0.3,
                              contrast=0.3, saturation=0.2, blur_p=0.1, gamma=3.0, shade=0.8),
    # Views of one photo (self-supervised, SimCLR's kind): strong crops, colour, grayscale and blur.
    "photo-edits": AugmentConfig(crop_scale=(0.3, 1.0), crop_ratio=(0.75, 1.33), flip=True, rotate=10.0,
                                 brightness=0.4, contrast=0.4, saturation=0.4, grayscale_p=0.2, blur_p=0.3),
    # Copies of one photo (resized, cropped, recompressed, relit): milder crops than "photo-edits" and no flips (a
    # mirrored photo is not a copy); brightness reaches 0.5 so a 1.4x brighter copy sits inside the range.
    "near-duplicates": AugmentConfig(crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25), flip=False, rotate=6.0,
                                     brightness=0.5, contrast=0.3, saturation=0.4, grayscale_p=0.25, blur_p=0.3),
    # Copy detection (SSCD, Pizzi et al. 2022; DISC2021): crops down to a small area, flips, padding, overlaid text
    # and shapes, JPEG, blur, colour and grayscale, small rotations: edits a copy of a photo goes through.
    "copy-edits": AugmentConfig(crop_scale=(0.15, 1.0), crop_ratio=(0.6, 1.67), flip=True, rotate=8.0,
                                brightness=0.5, contrast=0.4, saturation=0.5, grayscale_p=0.25, blur_p=0.3,
                                pad_p=0.15, text_p=0.3, shapes_p=0.2, jpeg_p=0.4),
    "none": AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, rotate=0.0,
                          brightness=0.0, contrast=0.0, saturation=0.0),
}


@dataclass(frozen=True)
class TrainConfig:
    """How to train: data split, sampling, loss, optimisation and budget; the recipe a model file keeps."""

    LEGACY_KEYS: ClassVar[dict[str, str]] = {"margin": "hinge", "augment_cfg": "augment"}  # files before the renames

    loss: str = "contrastive"
    hinge: float | None = None  # contrastive and triplet; None: the loss's default (losses.DEFAULT_HINGES)
    temperature: float = 0.1  # ntxent only
    koleo: float = 0.0  # weight of the KoLeo entropy regulariser: spreads embeddings so one threshold fits all
    epochs: int = 20
    max_minutes: float | None = None
    ids_per_batch: int = 32  # P
    images_per_id: int = 4  # K
    lr: float = 1e-3
    finetune_lr: float = 1e-4
    backbone_lr: float | None = None  # the trunk's learning rate from the start; None: lr (pretrained: lower it)
    weight_decay: float = 1e-4
    freeze_backbone: bool = False
    unfreeze: tuple[tuple[int, tuple[str, ...]], ...] = ()
    accumulate: int = 1
    self_supervised: bool = False
    augment: AugmentConfig = field(default_factory=lambda: AUGMENT_PRESETS["portraits"])
    rotations: int = 1  # 2 or 4: each training identity also turned by 180° (or every 90°), each turn a new identity
    val_fraction: float = 0.2
    val_group_depth: int = 0  # 0: split identities; 1: split by first folder (e.g. whole alphabets)
    ways: int = 20
    episodes: int = 2000  # validation one-shot episodes: with fewer, the best epoch is the luckiest (docs/recipes.md)
    seed: int = 0
    whiten_views: int = 2  # augmented views of each image beside its plain one that the learned whitening sees

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UsageError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.images_per_id < 2 or self.ids_per_batch < 2:
            raise UsageError("a batch needs at least 2 identities with at least 2 images each")
        if self.accumulate < 1 or self.epochs < 0 or self.whiten_views < 1:
            raise UsageError("accumulate and whiten_views must be >= 1, epochs >= 0 (0: no SGD, the learned whitening "
                             "alone)")
        if self.temperature <= 0:
            raise UsageError("temperature must be > 0")
        if self.koleo < 0:
            raise UsageError("koleo must be >= 0")
        if self.rotations not in (1, 2, 4):
            raise UsageError("rotations must be 1, 2 or 4 (turns of 180° or 90° as new identities)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError("val_fraction must be in [0, 1)")


def with_overrides(cfg: T, values: dict[str, Any]) -> T:
    """`cfg` with each field a value is given for (not None) replaced: flags override a recipe field by field."""
    given = {f.name: values[f.name] for f in dataclasses.fields(cfg)  # type: ignore[arg-type]
             if values.get(f.name) is not None}
    return dataclasses.replace(cfg, **given)  # type: ignore[type-var]


@dataclass(frozen=True)
class Runtime:
    """How to run on this machine, never saved in a model file: a resumed run may change any of it."""

    device: str = "auto"  # auto: CUDA when present, else CPU
    workers: int | None = None  # decode workers; None: the consumer's default (embedding: cores - 1 on a GPU, one
    # per core on a CPU at the lowest priority; training: cores - 1 on a GPU, 0 on a CPU, whose cores run the model)
    amp: bool | None = None  # mixed precision; None: on CUDA only
    batch_size: int = 64  # images per embedding batch: the one default of every command and use case that embeds
    cache_gb: float = 4.0  # training decodes its images into memory up to this size
    decode: str = "auto"  # embedding's JPEG decoding: auto (on the device when it is a GPU), pil or device
    compile: bool = False  # torch.compile the encoder for embedding: pays on a GPU for large collections


def parse_scales(spec: str) -> tuple[float, ...]:
    """Turn '1.41,2' into (1.41, 2.0); '' (off) into ()."""
    try:
        return tuple(float(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--test-scales expects factors separated by commas, e.g. 1.41,2, got {spec!r}") from None


def parse_unfreeze(spec: list[str]) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """Turn ['3:layer3,layer4', '5:layer2'] into ((3, ('layer3', 'layer4')), (5, ('layer2',)))."""
    out = []
    for item in spec:
        epoch, sep, names = item.partition(":")
        if not sep or not epoch.strip().isdigit() or not names.strip():
            raise UsageError(f"--unfreeze expects EPOCH:NAME[,NAME...], got {item!r}")
        out.append((int(epoch), tuple(n.strip() for n in names.split(",") if n.strip())))
    return tuple(sorted(out))
