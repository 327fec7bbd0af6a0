"""Which recipe fits a training folder: a sample of its images, looked at before anything is built, names one.

Rules, in order: no identity folders (or --self-supervised) → copies; every sampled image single-channel and
two-tone (nearly all pixels near black or white) and at most GLYPH_SIDE px → glyphs; every one single-channel →
faces; else photos. The recipe is then fitted to the folder: channels, an input no larger than the images (glyphs),
and a held-out split only when enough identities remain (whole top folders when identities nest two deep).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import RECIPES, EncoderConfig, TrainConfig, with_overrides
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
class Choice:
    """A recipe chosen (or named) for a folder and fitted to it, before the options given replace fields."""

    name: str
    survey: Survey
    enc: EncoderConfig
    cfg: TrainConfig


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


def fitted(name: str, survey: Survey) -> tuple[EncoderConfig, TrainConfig]:
    """RECIPES[name] fitted to the folder: channels, glyph input no larger than the images, the held-out split.

    "copies" and "identities" are kept as they are: their own fields already say what they do.
    """
    enc, cfg = RECIPES[name]
    if name in ("copies", "identities"):
        return enc, cfg
    channels = 1 if survey.single_channel == 1.0 else 3
    size = min(enc.image_size, survey.side) if enc.backbone == "small" else enc.image_size
    enough = survey.identities >= MIN_VAL_IDENTITIES
    return (dataclasses.replace(enc, channels=channels, image_size=max(8, size)),
            dataclasses.replace(cfg, val_fraction=cfg.val_fraction if enough else 0.0,
                                val_group_depth=1 if enough and survey.groups >= MIN_VAL_GROUPS else 0))


def choose(paths: list[Path], root: Path, recipe: str = "auto", self_supervised: bool = False) -> Choice:
    """The recipe for training on `paths` under `root`: the one its survey picks ("auto") or the one named.

    Raises:
        UsageError: an unknown recipe name, or no readable image in the sample.
    """
    if recipe != "auto" and recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r}; choose auto or one of {', '.join(RECIPES)}")
    survey = survey_folder(paths, root)
    name = recipe_name(survey, self_supervised) if recipe == "auto" else recipe
    return Choice(name, survey, *fitted(name, survey))


def with_options(choice: Choice, options: dict[str, Any]) -> tuple[EncoderConfig, TrainConfig]:
    """The chosen recipe with every option given (not None) in place of its field.

    An --epochs given without --max-minutes also lifts the recipe's time budget: the epochs asked for are run; a
    --dim below the size of a whitening that reads the head, without --whiten, takes the whitening down with it.
    """
    dim, whiten = options.get("dim"), options.get("whiten")
    reads_head = (options.get("whiten_from") or choice.enc.whiten_from) == "head"
    if dim is not None and whiten is None and reads_head and choice.enc.whiten > dim:
        options = options | {"whiten": dim}
    enc, cfg = with_overrides(choice.enc, options), with_overrides(choice.cfg, options)
    if options.get("epochs") is not None and options.get("max_minutes") is None:
        cfg = dataclasses.replace(cfg, max_minutes=None)
    return enc, cfg
