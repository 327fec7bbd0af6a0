"""Held-out validation during training: each epoch's metrics, which epoch a run keeps, and the calibration it gives."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import torch

from ..core import metrics
from ..core.calibration import CALIBRATION_KEYS, distance_tails
from ..core.config import TrainConfig
from ..core.embed import embed_tensors
from ..core.model import Encoder


def validate(model: Encoder, images: torch.Tensor, labels: np.ndarray, cfg: TrainConfig,
             device: torch.device, amp: bool | None = None) -> dict[str, float]:
    """Held-out identity metrics: verification ROC AUC, P@1, N-way one-shot and the thresholds."""
    counts = np.unique(labels, return_counts=True)[1]
    ways = min(cfg.ways, int((counts >= 2).sum()))
    if ways < 2:  # nothing to verify: the run keeps its last epoch instead of a best one
        return {}
    model.eval()
    pre = model.cfg.preprocess()
    emb = np.concatenate([embed_tensors(model, images[i:i + 512], pre, device, amp)
                          for i in range(0, len(images), 512)])
    out = metrics.verification_metrics(emb, labels, seed=cfg.seed)
    out["p_at_1"] = metrics.precision_at_1(emb, labels)
    out["ways"] = ways
    out["one_shot"] = metrics.one_shot_accuracy(emb, labels, ways, cfg.episodes, cfg.seed)
    # plain floats: checkpoints load with weights_only; the tails go to the calibration, not the history
    return {k: float(v) for k, v in out.items()} | {"tails": distance_tails(emb, labels, cfg.seed)}


def _score(record: dict[str, Any], self_supervised: bool = False) -> float:
    """How good an epoch is: one-shot accuracy, then P@1 to break ties; without validation, how late it is.

    Self-supervised runs rank by lateness too: their validation copies come from the random training
    augmentation, and a few hundred of them judge epochs more by luck than the loss does.
    """
    if "p_at_1" not in record or self_supervised:
        return float(record["epoch"])
    one_shot = record.get("one_shot", float("nan"))
    return (0.0 if math.isnan(one_shot) else one_shot) + 1e-3 * record.get("p_at_1", 0.0)


def kept_epoch(history: list[dict[str, Any]], episodes: int, self_supervised: bool = False) -> dict[str, Any] | None:
    """The epoch a run keeps: the latest whose validation one-shot is within one standard error of the best's.

    Closer than that is the episodes' noise, and the later epoch has the cooler learning rate: on Omniglot the
    highest of 400 episodes picked epoch 19 of 38, whose model scored 0.8 points below the last on unseen
    alphabets. Without validation (or self-supervised), the last epoch.
    """
    if not history:
        return None
    top = max(history, key=partial(_score, self_supervised=self_supervised))
    p = top.get("one_shot", float("nan"))
    noise = 0.0 if self_supervised or "p_at_1" not in top or math.isnan(p) else math.sqrt(p * (1 - p) / episodes)
    return next(r for r in reversed(history) if _score(r, self_supervised) >= _score(top, self_supervised) - noise)


def calibration_of(record: dict[str, Any], tails: dict[str, Any] | None, purpose: str, precision: str) -> dict[str, Any]:
    """What dedup's default margin comes from, of the best validation epoch: thresholds, distance tails, purpose,
    and the precision its vectors were embedded in (the device's precision rule)."""
    if "threshold_best_f1" not in record:
        return {}
    return ({k: record[k] for k in CALIBRATION_KEYS if k in record}
            | {"tails": tails or {}, "purpose": purpose, "source": "validation", "epoch": record["epoch"],
               "precision": precision})
