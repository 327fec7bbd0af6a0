"""The recipe train chooses from a sample of the folder, fitted to it, and every flag still replacing one field."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from rich.console import Console
from conftest import run_cli
from test_train import _recipe_of

from siamsearch.cli import terminal
from siamsearch.core.config import AUGMENT_PRESETS
from siamsearch.core.errors import UsageError
from siamsearch.core.images import scan_images
from siamsearch.training import settings
from siamsearch.training.recipes import MIN_VAL_IDENTITIES, RECIPES, Survey, choose, recipe_name


def glyph(rng: np.random.Generator) -> Image.Image:
    """A 105 px 1-bit drawing: a few black strokes on white, as Omniglot's."""
    img = Image.new("1", (105, 105), 1)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        draw.line([tuple(int(v) for v in rng.integers(10, 95, 2)) for _ in range(3)], fill=0, width=3)
    return img


def face(rng: np.random.Generator) -> Image.Image:
    """A 92x112 grey photograph-like picture: a lit oval on a soft gradient, with noise."""
    yy, xx = np.mgrid[0:112, 0:92]
    oval = ((xx - 46) / 30.0) ** 2 + ((yy - 56) / 40.0) ** 2 < 1
    img = 60 + 0.8 * xx + 90 * oval + rng.normal(0, 12, (112, 92))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L")


def photo(rng: np.random.Generator) -> Image.Image:
    """A 160x120 colour picture: a tinted gradient with noise, saved as JPEG."""
    yy, xx = np.mgrid[0:120, 0:160] / 160
    img = (0.3 + 0.5 * xx)[..., None] * rng.uniform(0.2, 1.0, 3) * 255 + rng.normal(0, 8, (120, 160, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def folder(root: Path, draw, groups: int = 0, ids: int = 6, per_id: int = 3, ext: str = "png") -> Path:
    """ids identity folders (inside `groups` top folders when given) of per_id drawn images."""
    rng = np.random.default_rng(0)
    for i in range(ids):
        where = root / (f"alphabet{i % groups}" if groups else "") / f"id{i:02d}"
        where.mkdir(parents=True)
        for j in range(per_id):
            draw(rng).save(where / f"{j}.{ext}")
    return root


def chosen(root: Path, recipe: str = "auto"):
    return choose(scan_images(root).images, root, recipe)


def test_glyphs_faces_and_photos_each_get_their_recipe(tmp_path):
    glyphs = chosen(folder(tmp_path / "glyphs", glyph, groups=3))
    assert glyphs.name == "glyphs" and glyphs.survey.two_tone == 1.0 and glyphs.survey.side == 105
    enc, cfg = glyphs.recipe.encoder, glyphs.recipe.train
    assert enc.channels == 1 and enc.backbone == "small" and cfg.augment == AUGMENT_PRESETS["characters"]
    faces = chosen(folder(tmp_path / "faces", face, ext="pgm"))
    enc, cfg = faces.recipe.encoder, faces.recipe.train
    assert faces.name == "faces" and enc.channels == 1 and enc.pretrained
    assert cfg.augment == AUGMENT_PRESETS["lighting"] and cfg.freeze_backbone
    assert enc.whiten and cfg.epochs == 0  # the learned whitening alone
    photos = chosen(folder(tmp_path / "photos", photo, ext="jpg"))
    assert photos.name == "photos" and photos.recipe.encoder.channels == 3 and photos.recipe.encoder.pretrained
    assert photos.survey.single_channel == 0.0 and photos.survey.side == 120


def test_a_flat_folder_is_for_copies_and_a_named_recipe_is_taken_as_named(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for j in range(4):
        photo(rng).save(flat / f"{j}.jpg")
    assert chosen(flat).recipe == RECIPES["copies"]  # kept as declared: its fields say what it does
    glyphs = folder(tmp_path / "glyphs", glyph)
    assert chosen(glyphs, "photos").name == "photos" and chosen(glyphs, "photos").recipe.encoder.channels == 1
    with pytest.raises(UsageError, match="unknown recipe 'fonts'"):
        chosen(glyphs, "fonts")


def test_the_held_out_split_fits_the_identities_there_are():
    survey = Survey(200, 1.0, 1.0, 105, identities=MIN_VAL_IDENTITIES, groups=30)
    assert recipe_name(survey) == "glyphs"
    glyphs = RECIPES["glyphs"]
    cfg = glyphs.fitted(survey).train
    assert (cfg.val_fraction, cfg.val_group_depth) == (0.2, 1)  # whole alphabets
    assert glyphs.fitted(dataclasses.replace(survey, groups=0)).train.val_group_depth == 0
    assert glyphs.fitted(dataclasses.replace(survey, identities=MIN_VAL_IDENTITIES - 1)).train.val_fraction == 0.0
    assert glyphs.fitted(dataclasses.replace(survey, side=20)).encoder.image_size == 20  # never larger than the images
    assert recipe_name(dataclasses.replace(survey, side=400)) == "faces"  # large drawings: the pretrained trunk


FLAGS = {  # flag and value → the field it sets and the value expected there
    ("--backbone", "resnet18"): ("backbone", "resnet18"), ("--image-size", "48"): ("image_size", 48),
    ("--channels", "3"): ("channels", 3), ("--dim", "256"): ("dim", 256), ("--pretrained",): ("pretrained", True),
    ("--standardize",): ("standardize", True), ("--pooling", "gem"): ("pooling", "gem"),
    ("--gem-p", "4"): ("gem_p", 4.0), ("--head", "linear"): ("head", "linear"), ("--whiten", "32"): ("whiten", 32),
    ("--whiten-from", "head"): ("whiten_from", "head"), ("--test-shifts", "2"): ("test_shifts", 2),
    ("--test-scales", "1.41,2"): ("test_scales", (1.41, 2.0)),
    ("--loss", "triplet"): ("loss", "triplet"), ("--hinge", "0.5"): ("hinge", 0.5),
    ("--temperature", "0.2"): ("temperature", 0.2), ("--koleo", "1"): ("koleo", 1.0),
    ("--max-minutes", "3"): ("max_minutes", 3.0), ("-P", "8"): ("ids_per_batch", 8), ("-K", "3"): ("images_per_id", 3),
    ("--lr", "0.01"): ("lr", 0.01), ("--backbone-lr", "0.001"): ("backbone_lr", 0.001),
    ("--finetune-lr", "0.002"): ("finetune_lr", 0.002), ("--weight-decay", "0.1"): ("weight_decay", 0.1),
    ("--freeze-backbone",): ("freeze_backbone", True), ("--unfreeze", "2:layer4"): ("unfreeze", ((2, ("layer4",)),)),
    ("--accumulate", "2"): ("accumulate", 2), ("--augment", "none"): ("augment", AUGMENT_PRESETS["none"]),
    ("--augment", "faces"): ("augment", AUGMENT_PRESETS["portraits"]),  # its old name, for one release
    ("--rotations", "2"): ("rotations", 2), ("--val-fraction", "0.3"): ("val_fraction", 0.3),
    ("--val-group-depth", "0"): ("val_group_depth", 0), ("--seed", "7"): ("seed", 7),
}


def test_every_flag_replaces_its_field_of_the_chosen_recipe(monkeypatch, tmp_path):
    root = folder(tmp_path / "glyphs", glyph, groups=5, ids=25)
    base = chosen(root)
    base_enc, base_cfg = base.recipe.encoder, base.recipe.train
    assert base_cfg.val_group_depth == 1 and _recipe_of(monkeypatch, [], root)[:2] == (base_enc, base_cfg)
    for flag, (name, value) in FLAGS.items():
        enc, cfg, _ = _recipe_of(monkeypatch, list(flag), root)
        changed = {f: getattr(c, f) for c, b in ((enc, base_enc), (cfg, base_cfg))
                   for f in (x.name for x in dataclasses.fields(c)) if getattr(c, f) != getattr(b, f)}
        assert changed == {name: value}, flag


def test_a_smaller_dim_takes_a_whitening_of_the_head_down_with_it(monkeypatch, tmp_path):
    root = folder(tmp_path / "glyphs", glyph)
    recipe = _recipe_of(monkeypatch, [], root)[0]
    assert (recipe.whiten, recipe.whiten_from) == (64, "pool")
    assert _recipe_of(monkeypatch, ["--dim", "32"], root)[0].whiten == 64  # it reads the pooled features, not dim
    assert _recipe_of(monkeypatch, ["--dim", "32", "--whiten-from", "head"], root)[0].whiten == 32
    assert _recipe_of(monkeypatch, ["--dim", "32", "--whiten", "0"], root)[0].whiten == 0


def test_epochs_alone_lift_the_time_budget(monkeypatch, tmp_path):
    root = folder(tmp_path / "glyphs", glyph)
    assert _recipe_of(monkeypatch, [], root)[1].max_minutes == 15.0
    cfg = _recipe_of(monkeypatch, ["--epochs", "3"], root)[1]
    assert (cfg.epochs, cfg.max_minutes) == (3, None)
    cfg = _recipe_of(monkeypatch, ["--epochs", "3", "--max-minutes", "2"], root)[1]
    assert (cfg.epochs, cfg.max_minutes) == (3, 2.0)


def test_recipes_and_augmentation_presets_never_share_a_name_and_the_old_preset_names_still_work():
    assert not set(RECIPES) & set(AUGMENT_PRESETS)
    assert not set(RECIPES) & set(settings.AUGMENT_ALIASES.values())
    for old, new in settings.AUGMENT_ALIASES.items():
        assert settings.value_of("augment", old) == AUGMENT_PRESETS[new]
        assert settings.parse_sets([f"augment={old}"]) == {"augment": AUGMENT_PRESETS[new]}


def test_recipe_list_shows_every_recipe_its_budget_and_what_it_is_for(monkeypatch):
    wide = Console(width=250, record=True)
    monkeypatch.setattr(terminal, "console", wide)
    assert run_cli("train", ".", "--recipe", "list").exit_code == 0
    rows = {line.split("│")[1].strip(): line for line in wide.export_text().splitlines() if line.count("│") == 8}
    assert set(rows) == set(RECIPES)
    for recipe in RECIPES.values():
        assert f" {recipe.budget} " in rows[recipe.name] and recipe.summary in rows[recipe.name]
    assert [recipe.budget for recipe in RECIPES.values()] == ["15 min", "minutes", "15 min", "20 epochs", "minutes"]
    assert "pooled → 64" in rows["glyphs"] and "128 px and ×1.41 and grey" in rows["copies"] and "no SGD" in rows["faces"]


def test_no_images_or_none_readable_is_one_clear_error(tmp_path):
    with pytest.raises(UsageError, match="no images found"):
        choose([], tmp_path)
    bad = tmp_path / "bad" / "id0"
    bad.mkdir(parents=True)
    (bad / "a.png").write_text("not an image")
    with pytest.raises(UsageError, match="none of 1 sampled images"):
        chosen(tmp_path / "bad")
