"""Learned whitening: a closed-form last layer that shrinks what varies within an identity and spreads the rest.

Radenović, Tolias and Chum ("Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018) fit it on
matching pairs: whiten the within-identity scatter, then rotate onto the principal axes of what remains and
keep the first `whiten` of them. Fitted on a few thousand images in seconds, it cannot overfit the way a head
trained by SGD on 24 people does (its figures on AT&T faces: docs/recipes.md, scripts/bench_identity.py). The
within-identity scatter comes from the training identities (training.data.TrainData.whitening_sample), each image
seen plainly and under the recipe's augmentation (so lighting, crops or overlaid text count as "the same"); a
self-supervised image is an identity of its own views.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..core.embed import embed_tensors
from ..core.model import Encoder, Whitening
from .data import TrainData

SHRINK = 0.3  # the within-identity covariance is pulled this far towards its mean eigenvalue: few images, many axes
CHUNK = 256  # images embedded at once


def learned_whitening(vectors: np.ndarray, labels: np.ndarray, out_dim: int,
                      shrink: float = SHRINK) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), projection (D, out_dim)) such that (x - mean) @ projection, L2-normalised, is the whitened vector.

    The within-identity covariance C (deviations from each identity's mean), shrunk towards a multiple of
    the identity, is whitened by C^-1/2; the whitened vectors' principal axes then order what is left.
    """
    x = np.asarray(vectors, np.float64)
    mean = x.mean(0)
    z = x - mean
    _, codes = np.unique(labels, return_inverse=True)
    centres = np.zeros((codes.max() + 1, z.shape[1]))
    np.add.at(centres, codes, z)
    centres /= np.bincount(codes)[:, None]
    within = z - centres[codes]
    cov = within.T @ within / len(within)
    cov = (1 - shrink) * cov + shrink * np.trace(cov) / len(cov) * np.eye(len(cov))
    values, eigenvectors = np.linalg.eigh(cov)
    inv_sqrt = (eigenvectors * values.clip(min=1e-12) ** -0.5) @ eigenvectors.T
    white = z @ inv_sqrt
    _, _, axes = np.linalg.svd(white - white.mean(0), full_matrices=False)
    return mean.astype(np.float32), (inv_sqrt @ axes[:out_dim].T).astype(np.float32)


def fit_whitening(model: Encoder, data: TrainData, device: torch.device, amp: bool) -> int:
    """Fit a whitening to the recipe's dimensions on a sample of the training split, each image seen plainly and
    under cfg.whiten_views draws of the augmentation, and install it in the model (which has none yet; its config
    becomes the recipe's); returns the images used. A folder whose views span fewer axes than the recipe asks
    (a few dozen images) gets a whitening of as many as they span, and the model's config says so."""
    enc, cfg = data.enc, data.cfg
    model.eval()
    pre = model.cfg.preprocess()
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    images, labels = data.whitening_sample(gen)
    vectors, names = [], []
    for start in range(0, len(labels), CHUNK):
        batch = images[start:start + CHUNK]
        views = [data.plain(batch)] + [data.augmented(batch, gen) for _ in range(cfg.whiten_views)]
        for view in views:
            vectors.append(embed_tensors(model.whitening_input, view, pre, device, amp))
            names.append(labels[start:start + CHUNK])
    mean, projection = learned_whitening(np.concatenate(vectors), np.concatenate(names), enc.whiten)
    if projection.shape[1] < enc.whiten:  # a small folder gives fewer axes than the recipe's size: keep them all
        enc = dataclasses.replace(enc, whiten=projection.shape[1])
    model.cfg = enc
    model.whitening = Whitening(model.whitening_reads, enc.whiten).to(device)
    model.whitening.set(mean, projection)
    return len(labels)
