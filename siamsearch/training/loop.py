"""Training a Siamese encoder on an identity folder: the loop, checkpoints (data: trainset.py; epochs judged: validation.py)."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch

from ..core.checkpoint import damaged, load_checkpoint, load_encoder, load_resume, save_model, save_resume, update_model_file
from ..core.config import EncoderConfig, Runtime, TrainConfig, from_dict, to_dict
from ..core.device import autocast, precision, resolve_device
from .distributed import World
from ..core.errors import RefusedError, UsageError
from ..core.images import Failure, Scan, Selection, scan_images
from .losses import batch_loss
from ..core.model import Encoder, build_encoder, count_parameters, set_trainable, whitening_size
from .data import TrainData
from ..core.transforms import normalize
from .validation import calibration_of, kept_epoch, validate
from .whitening import fit_whitening

PROGRESS_EVERY = 20  # batches between loss reads for the progress bar: each read waits for the GPU


class Observer(Protocol):
    """Where training reports progress; the CLI draws bars from it, tests ignore it."""

    def message(self, text: str) -> None: ...
    def epoch_start(self, epoch: int, steps: int) -> None: ...
    def step(self, images: int, loss: float) -> None: ...  # loss: epoch mean so far, read every PROGRESS_EVERY
    def epoch_end(self, record: dict[str, Any]) -> None: ...


class Quiet:
    """An Observer that reports nothing."""

    def message(self, text: str) -> None: ...
    def epoch_start(self, epoch: int, steps: int) -> None: ...
    def step(self, images: int, loss: float) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    """What a training run produced."""

    out: Path
    fingerprint: str | None
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    calibration: dict[str, Any]
    failures: list[Failure]
    stopped: str  # "epochs", "time budget" or "interrupted"
    resume_path: Path

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary: the model written, its best epoch and calibration thresholds, how it stopped."""
        return {"out": str(self.out), "fingerprint": self.fingerprint, "best": self.best, "stopped": self.stopped,
                "calibration": {k: v for k, v in self.calibration.items() if k != "tails"},
                "resume_path": str(self.resume_path), "failures": [f.to_dict() for f in self.failures]}


def resume_path_for(out: Path) -> Path:
    """Where the full training state lives next to the model file."""
    return out.with_name(out.stem + ".resume.pt")


def _lr_factor(step: int, total_steps: int, elapsed: float, budget: float | None) -> float:
    """Cosine decay over whichever runs out first, the epochs or the time budget."""
    progress = step / max(1, total_steps)
    if budget:
        progress = max(progress, elapsed / budget)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))




class _Clock:
    """Seconds trained, counting the runs before a resume, against the --max-minutes budget."""

    def __init__(self, before: float, max_minutes: float | None) -> None:
        self.t0, self.budget = time.perf_counter() - before, max_minutes * 60 if max_minutes else None

    def elapsed(self) -> float:
        """Seconds trained so far, this run and the ones it resumes."""
        return time.perf_counter() - self.t0

    def out_of_time(self) -> bool:
        """True once the time budget is spent (never without one)."""
        return self.budget is not None and self.elapsed() >= self.budget


class _Stepper:
    """Backward on every batch, an optimizer step every `accumulate` batches, then the cosine learning rate."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, batches_per_epoch: int, start_epoch: int,
                 clock: _Clock, device: torch.device, amp: bool) -> None:
        self.optimizer, self.clock, self.accumulate = optimizer, clock, cfg.accumulate
        self.total = cfg.epochs * batches_per_epoch // cfg.accumulate
        self.done = (start_epoch - 1) * batches_per_epoch // cfg.accumulate
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision(device, amp) == "fp16")  # needs loss scaling

    def backward(self, loss: torch.Tensor, batch: int) -> None:
        """Add this batch's gradient; after the epoch's `accumulate`-th, `2×accumulate`-th… batch, step."""
        self.scaler.scale(loss / self.accumulate).backward()
        if (batch + 1) % self.accumulate:
            return
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.done += 1
        factor = _lr_factor(self.done, self.total, self.clock.elapsed(), self.clock.budget)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor


def unfreeze_blocks(model: Encoder, optimizer: torch.optim.Optimizer, names: tuple[str, ...], lr: float) -> int:
    """Make the named blocks trainable and give them their own optimizer group at the fine-tune lr."""
    params = [p for p in set_trainable(model.blocks(names), True)]
    optimizer.add_param_group({"params": params, "lr": lr, "base_lr": lr})
    return sum(p.numel() for p in params)


def _unfreeze_due(run: _Run, epoch: int, obs: Observer) -> None:
    """Unfreeze the blocks --unfreeze names up to this epoch that are not unfrozen yet (a resumed run has some)."""
    for at, names in run.cfg.unfreeze[run.unfrozen:]:
        if at > epoch:
            return
        n = unfreeze_blocks(run.model, run.optimizer, names, run.cfg.finetune_lr)
        run.unfrozen += 1
        obs.message(f"epoch {epoch}: unfroze {', '.join(names)} ({n:,} parameters at lr {run.cfg.finetune_lr:g})")


def _check_unfreeze(model: Encoder, cfg: TrainConfig) -> None:
    """Refuse at the start an --unfreeze plan that would fail at its epoch, hours in."""
    names = [name for _, names in cfg.unfreeze for name in names]
    if names and not cfg.freeze_backbone:
        raise UsageError("--unfreeze needs --freeze-backbone: without it every block trains at --lr from the start")
    model.blocks(names)  # an unknown name: UsageError listing the backbone's blocks
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"--unfreeze names {', '.join(twice)} more than once; name each block once")


@dataclass
class _Run:
    """What a run carries from epoch to epoch, fresh or resumed: model, optimizer, recipe, history."""

    model: Encoder
    optimizer: torch.optim.Optimizer
    enc: EncoderConfig
    cfg: TrainConfig
    start_epoch: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0  # seconds trained before this call
    fingerprint: str | None = None  # of the best model written so far
    unfrozen: int = 0  # --unfreeze steps applied: the optimizer's groups after the starting ones

    def save_state(self, out: Path, epoch: int, elapsed: float) -> None:
        """Everything --resume needs to carry on from the start of `epoch`; the recipe, never the runtime."""
        save_resume(resume_path_for(out), {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "encoder": to_dict(self.enc),
            "train": to_dict(self.cfg), "epoch": epoch, "history": self.history, "elapsed": elapsed,
            "fingerprint": self.fingerprint})


def _check_out(out: Path, force: bool, resume: bool) -> None:
    """Refuse at the start an --out that cannot be written at the end, or a model that --force alone may replace."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; name a model file, e.g. {out / 'model.pt'}")
    folder = next(p for p in out.absolute().parents if p.exists())  # the missing ones are created
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {out}: {folder} is not a writable folder; choose another --out")
    taken = [p for p in (out, resume_path_for(out)) if p.exists()]
    if taken and not (force or resume):
        raise RefusedError(f"{taken[0]} exists; pass --resume to continue its run, --force to start over "
                         "(indexes built with the old model will refuse the new one), or choose another --out")


def _recipe(enc: EncoderConfig, cfg: TrainConfig, state: dict[str, Any] | None) -> tuple[EncoderConfig, TrainConfig]:
    """The run's recipe: as given, or a resumed run's own, where only the budget (epochs, minutes) may change."""
    if state is None:
        if enc.pretrained and enc.backbone == "small":
            raise UsageError("--pretrained needs a ResNet backbone: small has no ImageNet weights")
        if not cfg.epochs and not enc.whiten:
            raise UsageError("--epochs 0 trains nothing; with --whiten N it fits the learned whitening alone")
        return enc, cfg
    return from_dict(EncoderConfig, state["encoder"]), dataclasses.replace(
        from_dict(TrainConfig, state["train"]), epochs=cfg.epochs, max_minutes=cfg.max_minutes)


def _restore(run: _Run, state: dict[str, Any], path: Path) -> None:
    """Load a resume state: first the optimizer groups it has (unfrozen blocks, even mid-epoch), then weights."""
    run.unfrozen = len(state["optimizer"].get("param_groups", [])) - len(run.optimizer.param_groups)
    if not 0 <= run.unfrozen <= len(run.cfg.unfreeze):
        raise damaged(path, f"{len(state['optimizer'].get('param_groups', []))} optimizer groups for a plan of "
                      f"{len(run.cfg.unfreeze)} --unfreeze")
    for _, names in run.cfg.unfreeze[:run.unfrozen]:
        unfreeze_blocks(run.model, run.optimizer, names, run.cfg.finetune_lr)
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])  # its tensors go to their parameters' device
    except (RuntimeError, ValueError, KeyError) as exc:
        raise damaged(path, f"it does not fit its recipe: {str(exc).splitlines()[0]}") from None


def _param_groups(model: Encoder, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's groups at the start: everything trainable at --lr, or the trunk apart at --backbone-lr."""
    trunk = {id(p) for p in model.backbone.parameters()} if cfg.backbone_lr is not None else set()
    groups = [([p for p in model.parameters() if p.requires_grad and id(p) not in trunk], cfg.lr),
              ([p for p in model.backbone.parameters() if p.requires_grad and id(p) in trunk], cfg.backbone_lr)]
    return [{"params": params, "lr": lr, "base_lr": lr} for params, lr in groups if params]


def _setup(enc: EncoderConfig, cfg: TrainConfig, weights_file: Path | None, out: Path, resume: bool,
           device: torch.device) -> _Run:
    """Model on `device`, then its optimizer; a resumed run's weights come from its state, never a download."""
    path = resume_path_for(out)
    state = load_resume(path) if resume else None
    enc, cfg = _recipe(enc, cfg, state)
    # SGD trains the encoder without its learned whitening, which is fitted afterwards (see _whiten)
    model = build_encoder(dataclasses.replace(enc, whiten=0), None if state else weights_file, download=state is None)
    _check_unfreeze(model, cfg)
    whitening_size(enc, model.backbone.out_features)  # a whitening too large for what it reads: refused before SGD
    if cfg.freeze_backbone:
        set_trainable(model.backbone, False)
    model.to(device).to(memory_format=torch.channels_last)
    groups = _param_groups(model, cfg)
    if not groups and cfg.epochs and not cfg.unfreeze:
        raise UsageError("nothing to train: the trunk is frozen and head none has no weights; choose a head, "
                         "unfreeze blocks, or fit the learned whitening alone with --epochs 0 --whiten N")
    placeholder = [{"params": [torch.nn.Parameter(torch.zeros(0))], "lr": 0.0, "base_lr": 0.0}]  # AdamW needs one
    optimizer = torch.optim.AdamW(groups or placeholder, weight_decay=cfg.weight_decay)
    run = _Run(model, optimizer, enc, cfg)
    if state:
        _restore(run, state, path)
        run.start_epoch, run.history, run.elapsed = state["epoch"], state["history"], state["elapsed"]
        run.fingerprint = state["fingerprint"] or (load_checkpoint(out).fingerprint if run.history else None)  # older states
    return run


def _load(root: Path, run: _Run, runtime: Runtime, obs: Observer, scan: Scan | None,
          selection: Selection | None) -> TrainData:
    """The training folder (as scanned; else the files selection keeps), decoded, with a line saying how much and
    how long."""
    t0 = time.perf_counter()
    data = TrainData.load(root, scan or scan_images(root, selection or Selection()), run.enc, run.cfg, runtime)
    bad = f"; skipped {len(data.failures)} unreadable" if data.failures else ""
    obs.message(f"{len(data.train.labels):,} training images, {len(data.val.labels):,} validation images "
                f"({'self-supervised' if data.self_supervised else 'held-out identities'}), decoded in "
                f"{time.perf_counter() - t0:.1f}s{bad}")
    if run.cfg.val_fraction > 0 and not len(data.val.labels):
        obs.message("warning: too few identities to hold some out and still train (each side needs 2 that can "
                    "form pairs): nothing held out, so the run keeps its last epoch")
    return data


def train(root: Path, out: Path, enc: EncoderConfig, cfg: TrainConfig, runtime: Runtime = Runtime(), *,
          weights_file: Path | None = None, resume: bool = False, force: bool = False,
          observer: Observer | None = None, world: World = World(), scan: Scan | None = None,
          selection: Selection | None = None) -> TrainResult:
    """Train an encoder on an identity folder and write the best checkpoint to `out`.

    `enc` and `cfg` are the recipe, kept in the model file and the resume state; `runtime` is this
    machine's (device, decode workers, mixed precision, cache), so a resumed run uses the one given now.
    `world`: this process's place under torchrun (distributed.launched); only its rank 0 writes files.
    An existing `out` is replaced only with `force` (or continued with `resume`). `scan`: the folder as the recipe
    choice already scanned it (else it is scanned here, keeping the files selection keeps).
    """
    _check_out(out, force, resume)
    obs, device = observer or Quiet(), world.place(resolve_device(runtime.device))
    torch.manual_seed(cfg.seed)
    run = _setup(enc, cfg, weights_file, out, resume, device)
    if resume:
        obs.message(f"resuming at epoch {run.start_epoch} ({run.elapsed / 60:.1f} min trained so far)")
    obs.message(f"encoder: {run.enc}\ntraining: {run.cfg}")
    obs.message("{:,} of {:,} parameters train on {}".format(*count_parameters(run.model), device))
    data = _load(root, run, runtime, obs, scan, selection)
    amp = device.type == "cuda" if runtime.amp is None else runtime.amp
    best, stopped, calibration = _loop(run, data, out, device, amp, obs, world)
    if run.enc.whiten and stopped != "interrupted" and world.main:
        best, calibration = _whiten(run, data, out, best, device, amp, obs)
    if best is not None and world.main:  # the best file gets the whole history, for training curves
        update_model_file(out, history=run.history)
    return TrainResult(out, run.fingerprint, run.history, best, calibration, data.failures, stopped,
                       resume_path_for(out))


def _whiten(run: _Run, data: TrainData, out: Path, best: dict[str, Any] | None, device: torch.device, amp: bool,
            obs: Observer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the learned whitening on the best epoch's encoder (the untrained one with --epochs 0), validate and
    save it to `out`: the model file holds the whitened encoder; its record (that epoch's loss and speed, the
    validation measured anew) ends the history."""
    model = load_encoder(out, device)[0] if best is not None else run.model
    t0 = time.perf_counter()
    images = fit_whitening(model, data, device, amp)
    val = data.validation()
    fitted = (time.perf_counter() - t0) / 60
    sgd = {k: v for k, v in (best or {"epoch": 0}).items() if k in ("epoch", "loss", "images_per_s", "lr")}
    record = sgd | {"whitened": float(images), "minutes": (run.history[-1]["minutes"] if run.history else 0.0) + fitted}
    record |= validate(model, *val, run.cfg, device, amp) if val else {}
    tails = record.pop("tails", None)
    fewer = f" (the recipe asks {run.enc.whiten}: too few images for more)" if model.cfg.whiten < run.enc.whiten else ""
    obs.message(f"learned whitening {model.whitening_reads} → {model.cfg.whiten}{fewer} from {images:,} training "
                f"images and their augmented views in {fitted * 60:.1f}s")
    run.history.append(record)
    calibration = calibration_of(record, tails, data.purpose, precision(device, amp))
    run.fingerprint = save_model(out, model, run.cfg, run.history, calibration)
    return record, calibration


def _loop(run: _Run, data: TrainData, out: Path, device: torch.device, amp: bool, obs: Observer,
          world: World) -> tuple[dict[str, Any] | None, str, dict[str, Any]]:
    """The epochs: P×K batches, validation, the best model to `out`, the state --resume needs.

    Returns:
        (best epoch's record, why training stopped, the calibration saved with the best model).
    """
    model, enc, cfg, clock = run.model, run.enc, run.cfg, world.clock(_Clock(run.elapsed, run.cfg.max_minutes))
    sampler, val = world.shard(data.sampler()), data.validation() if world.main else None
    stepper = _Stepper(run.optimizer, cfg, len(sampler), run.start_epoch, clock, device, amp)
    loss_fn = batch_loss(cfg.loss, cfg.hinge, cfg.temperature, cfg.koleo)
    gen = torch.Generator().manual_seed(world.seed(cfg.seed + run.start_epoch))
    pre = enc.preprocess()
    keep = partial(kept_epoch, episodes=cfg.episodes, self_supervised=data.self_supervised)
    best, stopped, epoch = keep(run.history), "epochs", run.start_epoch
    calibration: dict[str, Any] = {}
    try:
        for epoch in range(run.start_epoch, cfg.epochs + 1):
            _unfreeze_due(run, epoch, obs)
            net = world.wrap(model)
            sampler.set_epoch(epoch)
            model.train()
            obs.epoch_start(epoch, len(sampler))
            loss_sum, batches, seen, shown, t0 = torch.zeros((), device=device), 0, 0, math.nan, time.perf_counter()
            for batches, (images, labels) in enumerate(data.batches(sampler, device.type == "cuda"), 1):
                x = data.augmented(images.to(device, non_blocking=True), gen)
                with autocast(device, amp):
                    emb = net(normalize(x, pre).contiguous(memory_format=torch.channels_last))
                loss = loss_fn(*world.gather(emb.float(), labels.to(device, non_blocking=True)))
                stepper.backward(loss, batches - 1)
                loss_sum += loss.detach()  # on the device: reading it waits for the GPU, so only now and then
                seen += len(labels)
                shown = loss_sum.item() / batches if batches % PROGRESS_EVERY == 1 else shown
                obs.step(len(labels), shown)
                if clock.out_of_time():
                    stopped = "time budget"
                    break
            record = {"epoch": epoch, "loss": loss_sum.item() / batches if batches else math.nan,
                      "images_per_s": seen / max(1e-9, time.perf_counter() - t0), "lr": run.optimizer.param_groups[0]["lr"]}
            record |= validate(model, *val, cfg, device, amp) if val else {}
            record["minutes"] = clock.elapsed() / 60
            tails = record.pop("tails", None)
            run.history.append(record)
            if keep(run.history) is record:
                best, calibration = record, calibration_of(record, tails, data.purpose, precision(device, amp))
                run.fingerprint = save_model(out, model, cfg, run.history, calibration) if world.main else None
            obs.epoch_end(record)
            if world.main:
                run.save_state(out, epoch + 1, clock.elapsed())
            world.barrier()
            if stopped != "epochs":
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
        if world.main:
            run.save_state(out, epoch, clock.elapsed())
    return best, stopped, calibration
