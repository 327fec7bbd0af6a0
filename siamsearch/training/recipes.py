"""The named recipes `train` starts from, and which one fits a training folder.

A Recipe is a name, the encoder and training configs, what it is for, and whether it fits a folder. Which one a
folder gets: a sample of its images, looked at before anything is built. Rules, in order: no identity folders
(or --self-supervised) → copies; every sampled image single-channel and two-tone (nearly all pixels near black or
white) and at most GLYPH_SIDE px → glyphs; every one single-channel → faces; else photos. The recipe is then
fitted to the folder: channels, an input no larger than the images (glyphs), and a held-out split only when
enough identities remain (whole top folders when identities nest two deep). Why each recipe is what it is, with
the runs that chose it: docs/recipes.md#why-each-recipe-is-what-it-is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import AUGMENT_PRESETS, EncoderConfig, TrainConfig, with_overrides
from ..core.errors import UsageError
from ..core.images import ORIGINAL_SIZE, BadImageError, identity_of, load_image

SAMPLE = 200  # images decoded (as thumbnails) to choose: a second or two, whatever the folder's size
GLYPH_SIDE = 160  # line drawings larger than this are drawings, not glyphs: the pretrained trunk sees them better
MIN_VAL_IDENTITIES = 20  # below this many identities with 2+ images, nothing is held out: validation would be noise
MIN_VAL_GROUPS = 5  # top folders needed to hold out whole ones (alphabets) rather than identities


@dataclass(frozen=True)
class Survey:
    """What a sample of a folder's images looks like, and how its identities are laid out."""

    sampled: int  # images decoded
    single_channel: float  # share of them with no colour
    two_tone: float  # share of them whose pixels are nearly all near black or white: line drawings
    side: int  # median shorter side of the stored images, in pixels
    identities: int  # identity folders with 2+ images (every image, not just the sample)
    groups: int  # distinct top folders of those identities when they nest two deep (alphabet/character), else 0

    def describe(self) -> str:
        """One line for the terminal: the facts the choice rests on."""
        nested = f" in {self.groups} top folders" if self.groups else ""
        return (f"{self.sampled} sampled images: {self.single_channel:.0%} single-channel, {self.two_tone:.0%} "
                f"two-tone, median side {self.side} px; {self.identities} identities with 2+ images{nested}")


@dataclass(frozen=True)
class Recipe:
    """A named starting point for `train`: the encoder and how it trains, what it is for, how it fits a folder.

    Every field of `encoder` and `train` can be replaced by an option of the same name (with_options).
    """

    name: str
    encoder: EncoderConfig
    train: TrainConfig
    summary: str  # what it is for, and how: the last column of `train --recipe list`
    fits_folder: bool = True  # fitted() adapts channels, input size and the held-out split; False: kept as declared

    @property
    def budget(self) -> str:
        """How long it trains: its time budget, else its epochs, else "minutes" (the learned whitening alone: seconds to
        minutes, as many as the folder's images and their views)."""
        cfg = self.train
        return f"{cfg.max_minutes:g} min" if cfg.max_minutes else f"{cfg.epochs} epochs" if cfg.epochs else "minutes"

    def fitted(self, survey: Survey) -> Recipe:
        """This recipe fitted to a surveyed folder: channels, a small net's input no larger than the images, and
        the held-out split (none below MIN_VAL_IDENTITIES; whole top folders from MIN_VAL_GROUPS of them).

        A recipe that does not fit folders (copies, identities) is kept as it is: its fields already say what it does.
        """
        if not self.fits_folder:
            return self
        enc, cfg = self.encoder, self.train
        size = min(enc.image_size, survey.side) if enc.backbone == "small" else enc.image_size
        enough = survey.identities >= MIN_VAL_IDENTITIES
        return dataclasses.replace(
            self, encoder=dataclasses.replace(enc, channels=1 if survey.single_channel == 1.0 else 3,
                                              image_size=max(8, size)),
            train=dataclasses.replace(cfg, val_fraction=cfg.val_fraction if enough else 0.0,
                                      val_group_depth=1 if enough and survey.groups >= MIN_VAL_GROUPS else 0))

    def with_options(self, options: dict[str, Any]) -> Recipe:
        """This recipe with every option given (not None) in place of its field of the same name.

        An `epochs` given without `max_minutes` also lifts the time budget: the epochs asked for are run; a `dim`
        below the size of a whitening that reads the head, without `whiten`, takes the whitening down with it.
        """
        dim, whiten = options.get("dim"), options.get("whiten")
        reads_head = (options.get("whiten_from") or self.encoder.whiten_from) == "head"
        if dim is not None and whiten is None and reads_head and self.encoder.whiten > dim:
            options = options | {"whiten": dim}
        cfg = with_overrides(self.train, options)
        if options.get("epochs") is not None and options.get("max_minutes") is None:
            cfg = dataclasses.replace(cfg, max_minutes=None)
        return dataclasses.replace(self, encoder=with_overrides(self.encoder, options), train=cfg)


# The built-in near-duplicate model (core.builtin) is the copies recipe fitted on the background photos
# (scripts/build_builtin.py); `train --self-supervised` fits it to the user's folder. The frozen ImageNet trunk at
# 128 px, also at 1.41 times that (a half-area crop meets its original's matching part at its own scale) and in grey
# (a grey copy shares that part of its vector), GeM-pooled, whitened from 1,280 to 256 on the centred square of the
# picture inside any plain border; the whitening sees each picture plainly and in six views under the copy edits
# with more padding, text, grey and pages. Why: docs/recipes.md#the-built-in-near-duplicate-model.
COPIES_ENCODER = EncoderConfig(backbone="efficientnet_lite0", pretrained=True, image_size=128, pooling="gem",
                               head="none", dim=1280, whiten=256, whiten_from="pool", test_scales=(1.41,),
                               test_grey=True, framing="trimmed")
COPY_VIEWS = dataclasses.replace(AUGMENT_PRESETS["copy-edits"], pad_p=0.3, text_p=0.5, grayscale_p=0.4, page_p=0.3)
_BUDGET = dict(epochs=1000, max_minutes=15.0)  # the SGD identity recipes stop on time; --epochs alone lifts it
# What `train` builds where no option replaces a field; why: docs/recipes.md#why-each-recipe-is-what-it-is
RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    Recipe("glyphs",
           EncoderConfig(backbone="small", image_size=40, channels=1, whiten=64, whiten_from="pool", test_shifts=1),
           TrainConfig(loss="ntxent", augment=AUGMENT_PRESETS["characters"], **_BUDGET),
           "grey two-tone drawings (characters): small net from scratch, small input, NT-Xent, its pooled features "
           "whitened"),
    Recipe("faces",
           EncoderConfig(backbone="efficientnet_lite0", pretrained=True, image_size=192, pooling="gem", head="none",
                         dim=1280, whiten=128),
           TrainConfig(augment=AUGMENT_PRESETS["lighting"], epochs=0, freeze_backbone=True),
           "grey photos (faces): frozen pretrained trunk, whitening fitted under lighting changes"),
    Recipe("photos",
           EncoderConfig(backbone="efficientnet_lite0", pretrained=True, image_size=128, dim=256, head="linear"),
           TrainConfig(loss="ntxent", freeze_backbone=True, lr=3e-3, augment=AUGMENT_PRESETS["portraits"], **_BUDGET),
           "colour photos (people, products): frozen pretrained trunk, linear head, NT-Xent"),
    Recipe("identities", EncoderConfig(backbone="small", image_size=64), TrainConfig(),
           "the former default: small net from scratch, 64 px", fits_folder=False),
    Recipe("copies", COPIES_ENCODER,
           TrainConfig(epochs=0, freeze_backbone=True, self_supervised=True, augment=COPY_VIEWS, val_fraction=0.0,
                       whiten_views=6),
           "no identity folders, or --self-supervised: the built-in model, its whitening fitted to the folder",
           fits_folder=False),
)}


@dataclass(frozen=True)
class Choice:
    """The recipe chosen (or named) for a folder, fitted to it, and the survey the choice rests on.

    The options given then replace its fields: `Choice(choice.recipe.with_options(options), choice.survey)`.
    """

    recipe: Recipe
    survey: Survey

    @property
    def name(self) -> str:
        """The recipe's name, as `train` prints it."""
        return self.recipe.name


def _looks(path: Path) -> tuple[bool, bool, int] | None:
    """(single-channel, two-tone, shorter side) of one image from a thumbnail; None when it cannot be read."""
    try:
        img = load_image(path, channels=3, draft_size=64)
    except BadImageError:
        return None
    side = min(img.info.get(ORIGINAL_SIZE, img.size))
    img.thumbnail((64, 64))
    rgb = np.asarray(img, dtype=np.int16)
    grey = np.percentile(rgb.max(axis=2) - rgb.min(axis=2), 99) <= 12  # JPEG's chroma noise stays below this
    lum = rgb.mean(axis=2)
    extreme = ((lum < 48) | (lum > 207)).mean()
    return bool(grey), bool(grey and extreme >= 0.9 and lum.std() > 10), int(side)


def survey_folder(paths: list[Path], root: Path, sample: int = SAMPLE, seed: int = 0) -> Survey:
    """Look at a seeded sample of `paths` (images under `root`) and count their identities.

    Raises:
        UsageError: no images, or none of the sampled ones can be read.
    """
    if not paths:
        raise UsageError(f"no images found under {root}")
    rng = np.random.default_rng(seed)
    picked = [paths[i] for i in sorted(rng.choice(len(paths), size=min(sample, len(paths)), replace=False))]
    looks = [x for x in map(_looks, picked) if x is not None]
    if not looks:
        raise UsageError(f"none of {len(picked)} sampled images under {root} could be read")
    grey, tone, sides = (np.array(v) for v in zip(*looks))
    names, counts = np.unique([i for p in paths if (i := identity_of(p, root)) is not None], return_counts=True)
    paired = [n for n, c in zip(names.tolist(), counts.tolist()) if c >= 2]
    nested = bool(paired) and all(n.count("/") == 1 for n in paired)
    return Survey(len(looks), float(grey.mean()), float(tone.mean()), int(np.median(sides)), len(paired),
                  len({n.split("/")[0] for n in paired}) if nested else 0)


def recipe_name(survey: Survey, self_supervised: bool = False) -> str:
    """The recipe the module docstring's rules pick for a folder so surveyed."""
    if self_supervised or not survey.identities:
        return "copies"
    if survey.two_tone == 1.0 and survey.side <= GLYPH_SIDE:
        return "glyphs"
    return "faces" if survey.single_channel == 1.0 else "photos"


def choose(paths: list[Path], root: Path, recipe: str = "auto", self_supervised: bool = False) -> Choice:
    """The recipe for training on `paths` under `root`: the one its survey picks ("auto") or the one named,
    fitted to the folder.

    Raises:
        UsageError: an unknown recipe name, or no readable image in the sample.
    """
    if recipe != "auto" and recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r}; choose auto or one of {', '.join(RECIPES)}")
    survey = survey_folder(paths, root)
    name = recipe_name(survey, self_supervised) if recipe == "auto" else recipe
    return Choice(RECIPES[name].fitted(survey), survey)
