"""Training a Siamese encoder on an identity folder: data, the loop, validation, checkpoints."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import metrics
from .checkpoint import load_checkpoint, load_resume, save_model, save_resume, update_model_file
from .config import EncoderConfig, TrainConfig, from_dict, to_dict
from .device import autocast, resolve_device
from .embed import DecodedImages, decode_images, embed_tensors, keep_list
from .errors import UsageError
from .images import Failure, find_images
from .losses import batch_loss
from .model import Encoder, build_encoder, count_parameters, set_trainable
from .pairs import PKSampler, encode_labels, split_folder
from .transforms import augment_batch, normalize, resize_batch, train_load_size


class Observer(Protocol):
    """Where training reports progress; the CLI draws bars from it, tests ignore it."""

    def message(self, text: str) -> None: ...
    def epoch_start(self, epoch: int, steps: int) -> None: ...
    def step(self, images: int, loss: float) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...


class Quiet:
    """An Observer that reports nothing."""

    def message(self, text: str) -> None: ...
    def epoch_start(self, epoch: int, steps: int) -> None: ...
    def step(self, images: int, loss: float) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...


@dataclass
class Split:
    """One side of the data: files, int labels, and (when cached) their decoded uint8 views."""

    paths: list[Path]
    labels: np.ndarray
    views: tuple[torch.Tensor, ...] = ()  # one (N, C, s, s) uint8 tensor per cached size


@dataclass
class TrainData:
    """Training and held-out validation splits of an image folder."""

    train: Split
    val: Split
    self_supervised: bool
    failures: list[Failure] = field(default_factory=list)


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


def resume_path_for(out: Path) -> Path:
    """Where the full training state lives next to the model file."""
    return out.with_name(out.stem + ".resume.pt")


def _decode(paths: list[Path], labels: np.ndarray, sizes: list[int], channels: int, workers: int,
            failures: list[Failure]) -> Split:
    """Decode a split into memory, dropping (and recording) unreadable files."""
    kept, views, bad = decode_images(paths, sizes, channels, workers)
    failures.extend(bad)
    return Split([paths[i] for i in kept], labels[kept], views)


def load_data(root: Path, enc: EncoderConfig, cfg: TrainConfig) -> TrainData:
    """Scan an identity folder, hold out validation identities and decode what fits in memory.

    Sub-folders are identities. With no sub-folders (or --self-supervised) every image is its own
    identity and its positive is an augmented view of itself.
    """
    paths = find_images(root)
    if not paths:
        raise UsageError(f"no images found under {root}")
    names, tr, va, self_sup = split_folder(paths, root, cfg)
    labels, _ = encode_labels(names)
    size, load = enc.image_size, train_load_size(enc.image_size)
    failures: list[Failure] = []
    train_paths = [paths[i] for i in tr]
    fits = len(tr) * enc.channels * load * load <= cfg.cache_gb * 2**30
    train = (_decode(train_paths, labels[tr], [load], enc.channels, cfg.workers, failures) if fits
             else Split(train_paths, labels[tr]))
    val_sizes = [size, load] if self_sup else [size]
    val = _decode([paths[i] for i in va], labels[va], val_sizes, enc.channels, cfg.workers, failures)
    return TrainData(train, val, self_sup, failures)


def _train_batches(split: Split, sampler: PKSampler, load: int, channels: int, workers: int,
                   failures: list[Failure]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, labels) per P×K batch, from the memory cache or decoded on the fly."""
    if split.views:
        for idx in sampler:
            yield split.views[0][idx], torch.from_numpy(split.labels[idx])
        return
    loader = DataLoader(DecodedImages(split.paths, [load], channels), batch_sampler=sampler,
                        num_workers=workers, collate_fn=keep_list)
    for items in loader:
        failures.extend(Failure(split.paths[i], why) for i, v, _, why in items if v is None)
        good = [(i, v[0]) for i, v, _, _ in items if v is not None]
        yield torch.stack([v for _, v in good]), torch.from_numpy(split.labels[[i for i, _ in good]])


def _val_views(data: TrainData, enc: EncoderConfig, cfg: TrainConfig) -> tuple[torch.Tensor, np.ndarray]:
    """The validation images as the encoder sees them, and their labels.

    Self-supervised runs validate on (image, augmented copy) pairs: exactly the question dedup asks.
    """
    val = data.val
    if not data.self_supervised:
        return val.views[0], val.labels
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    copies = augment_batch(val.views[1], enc.image_size, cfg.augment_cfg, gen)
    clean = resize_batch(val.views[1], enc.image_size)
    n = len(val.labels)
    return torch.cat([clean, copies]), np.concatenate([np.arange(n), np.arange(n)])


def validate(model: Encoder, images: torch.Tensor, labels: np.ndarray, cfg: TrainConfig,
             device: torch.device) -> dict[str, float]:
    """Held-out identity metrics: verification ROC AUC, P@1, N-way one-shot and the thresholds."""
    counts = np.unique(labels, return_counts=True)[1]
    ways = min(cfg.ways, int((counts >= 2).sum()))
    if ways < 2:  # nothing to verify: the run keeps its last epoch instead of a best one
        return {}
    model.eval()
    pre = model.cfg.preprocess()
    emb = np.concatenate([embed_tensors(model, images[i:i + 512], pre, device, cfg.amp)
                          for i in range(0, len(images), 512)])
    out = metrics.verification_metrics(emb, labels, seed=cfg.seed)
    out["p_at_1"] = metrics.precision_at_1(emb, labels)
    out["ways"] = ways
    out["one_shot"] = metrics.one_shot_accuracy(emb, labels, ways, cfg.episodes, cfg.seed)
    return {k: float(v) for k, v in out.items()}  # plain floats: checkpoints load with weights_only


def _score(record: dict[str, Any]) -> float:
    """Which epoch is best: one-shot accuracy, then P@1 to break ties; without validation, the last."""
    if "p_at_1" not in record:
        return float(record["epoch"])
    one_shot = record.get("one_shot", float("nan"))
    return (0.0 if math.isnan(one_shot) else one_shot) + 1e-3 * record.get("p_at_1", 0.0)


def _calibration(record: dict[str, Any]) -> dict[str, Any]:
    """The distance thresholds dedup uses by default, from the best validation epoch."""
    if "threshold_best_f1" not in record:
        return {}
    return {k: record[k] for k in metrics.CALIBRATION_KEYS if k in record} | {"source": "validation", "epoch": record["epoch"]}


def _lr_factor(step: int, total_steps: int, elapsed: float, budget: float | None) -> float:
    """Cosine decay over whichever runs out first, the epochs or the time budget."""
    progress = step / max(1, total_steps)
    if budget:
        progress = max(progress, elapsed / budget)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _unfreeze(model: Encoder, optimizer: torch.optim.Optimizer, names: tuple[str, ...], lr: float) -> int:
    """Make the named blocks trainable and give them their own optimizer group at the fine-tune lr."""
    params = [p for p in set_trainable(model.blocks(names), True)]
    optimizer.add_param_group({"params": params, "lr": lr, "base_lr": lr})
    return sum(p.numel() for p in params)


def _resume_state(model: Encoder, optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int,
                  history: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    """Everything --resume needs to carry on from the start of `epoch`."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "encoder": to_dict(model.cfg),
            "train": to_dict(cfg), "epoch": epoch, "history": history, "elapsed": elapsed}


@dataclass
class _Setup:
    """The model and optimizer a run starts from, fresh or resumed."""

    model: Encoder
    optimizer: torch.optim.Optimizer
    enc: EncoderConfig
    cfg: TrainConfig
    start_epoch: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0


def _setup(enc: EncoderConfig, cfg: TrainConfig, weights_file: Path | None, state: dict[str, Any] | None) -> _Setup:
    """Build model and optimizer; a resumed run keeps its configuration, only the budget may change."""
    if state:
        enc = from_dict(EncoderConfig, state["encoder"])
        cfg = dataclasses.replace(from_dict(TrainConfig, state["train"]), epochs=cfg.epochs,
                                  max_minutes=cfg.max_minutes)
    model = build_encoder(enc, None if state else weights_file)
    if cfg.freeze_backbone:
        set_trainable(model.backbone, False)
    optimizer = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.requires_grad],
                                    "lr": cfg.lr, "base_lr": cfg.lr}], weight_decay=cfg.weight_decay)
    if not state:
        return _Setup(model, optimizer, enc, cfg)
    for epoch, names in cfg.unfreeze:  # recreate the optimizer groups in the order they were added
        if epoch < state["epoch"]:
            _unfreeze(model, optimizer, names, cfg.finetune_lr)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return _Setup(model, optimizer, enc, cfg, state["epoch"], state["history"], state["elapsed"])


def train(root: Path, out: Path, enc: EncoderConfig, cfg: TrainConfig, *, weights_file: Path | None = None,
          resume: bool = False, observer: Observer | None = None) -> TrainResult:
    """Train an encoder on an identity folder and write the best checkpoint to `out`."""
    obs = observer or Quiet()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    run = _setup(enc, cfg, weights_file, load_resume(resume_path_for(out)) if resume else None)
    model, optimizer, enc, cfg, history = run.model, run.optimizer, run.enc, run.cfg, run.history
    if resume:
        obs.message(f"resuming at epoch {run.start_epoch} ({run.elapsed / 60:.1f} min trained so far)")
    model.to(device).to(memory_format=torch.channels_last)
    trainable, total = count_parameters(model)
    obs.message(f"{trainable:,} of {total:,} parameters train on {device}")

    t_load = time.perf_counter()
    data = load_data(root, enc, cfg)
    failures = data.failures
    obs.message(f"{len(data.train.labels):,} training images, {len(data.val.labels):,} validation images "
                f"({'self-supervised' if data.self_supervised else 'held-out identities'}), decoded in "
                f"{time.perf_counter() - t_load:.1f}s" + (f"; skipped {len(failures)} unreadable" if failures else ""))
    sampler = PKSampler(data.train.labels, cfg.ids_per_batch, 2 if data.self_supervised else cfg.images_per_id,
                        min_images=1 if data.self_supervised else 2, seed=cfg.seed)
    val_images, val_labels = _val_views(data, enc, cfg) if len(data.val.labels) else (None, None)
    loss_fn = batch_loss(cfg.loss, cfg.margin, cfg.temperature)
    pre, load = enc.preprocess(), train_load_size(enc.image_size)
    gen = torch.Generator().manual_seed(cfg.seed + run.start_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())  # fp16 needs loss scaling
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None
    total_steps = cfg.epochs * len(sampler) // cfg.accumulate
    best = max(history, key=_score) if history else None
    fp = load_checkpoint(out).fingerprint if best else None  # a resumed run may not beat its saved best
    step, stopped, t0 = (run.start_epoch - 1) * len(sampler) // cfg.accumulate, "epochs", time.perf_counter()
    elapsed = lambda: run.elapsed + time.perf_counter() - t0  # noqa: E731

    epoch = run.start_epoch
    try:
        for epoch in range(run.start_epoch, cfg.epochs + 1):
            for at, names in cfg.unfreeze:
                if at == epoch:
                    n = _unfreeze(model, optimizer, names, cfg.finetune_lr)
                    obs.message(f"epoch {epoch}: unfroze {', '.join(names)} ({n:,} parameters at lr {cfg.finetune_lr:g})")
            sampler.set_epoch(epoch)
            model.train()
            obs.epoch_start(epoch, len(sampler))
            losses, seen, t_epoch = [], 0, time.perf_counter()
            for i, (batch, labels) in enumerate(_train_batches(data.train, sampler, load, enc.channels,
                                                                cfg.workers, failures)):
                x = normalize(augment_batch(batch.to(device, non_blocking=True), enc.image_size,
                                            cfg.augment_cfg, gen), pre).contiguous(memory_format=torch.channels_last)
                with autocast(device, cfg.amp):
                    emb = model(x)
                loss = loss_fn(emb.float(), labels.to(device)) / cfg.accumulate
                scaler.scale(loss).backward()
                if (i + 1) % cfg.accumulate == 0:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    for group in optimizer.param_groups:
                        group["lr"] = group["base_lr"] * _lr_factor(step, total_steps, elapsed(), budget)
                losses.append(loss.item() * cfg.accumulate)
                seen += len(labels)
                obs.step(len(labels), losses[-1])
                if budget and elapsed() >= budget:
                    stopped = "time budget"
                    break
            record = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                      "images_per_s": seen / max(1e-9, time.perf_counter() - t_epoch),
                      "lr": optimizer.param_groups[0]["lr"]}
            if val_images is not None:
                record |= validate(model, val_images, val_labels, cfg, device)
            record["minutes"] = elapsed() / 60
            history.append(record)
            if best is None or _score(record) > _score(best):
                best = record
                fp = save_model(out, model, cfg, history, _calibration(record))
            obs.epoch_end(record)
            save_resume(resume_path_for(out), _resume_state(model, optimizer, cfg, epoch + 1, history, elapsed()))
            if stopped != "epochs":
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
        save_resume(resume_path_for(out), _resume_state(model, optimizer, cfg, epoch, history, elapsed()))
    if best is not None:  # the best file gets the whole history, for training curves
        update_model_file(out, history=history)
    return TrainResult(out, fp, history, best, _calibration(best) if best else {}, failures, stopped,
                       resume_path_for(out))
