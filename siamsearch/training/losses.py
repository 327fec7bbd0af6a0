"""Contrastive, triplet and NT-Xent losses and the KoLeo regulariser: embeddings and labels in, a scalar out."""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

DEFAULT_HINGES = {"contrastive": 1.0, "triplet": 0.2}


def contrastive_terms(distance: torch.Tensor, same: torch.Tensor, hinge: float) -> torch.Tensor:
    """Hadsell, Chopra and LeCun (2006): a similar pair pays d², a dissimilar one max(0, hinge − d)²."""
    same = same.bool()
    return torch.where(same, distance.pow(2), (hinge - distance).clamp(min=0).pow(2))


def contrastive_loss(emb_a: torch.Tensor, emb_b: torch.Tensor, same: torch.Tensor, hinge: float = 1.0) -> torch.Tensor:
    """Mean contrastive loss over explicit pairs.

    Args:
        emb_a, emb_b: (N, D) embeddings of the two images of each pair.
        same: (N,) bool, True where the two images show the same identity (so there is no
            "does label 1 mean similar?" ambiguity).
        hinge: dissimilar pairs closer than this are pushed apart.
    """
    return contrastive_terms(torch.linalg.vector_norm(emb_a - emb_b, dim=1), same, hinge).mean()


def _pair_distances(emb: torch.Tensor) -> torch.Tensor:
    """(N, N) Euclidean distances with a gradient-safe sqrt at zero."""
    sq = (emb.unsqueeze(1) - emb.unsqueeze(0)).pow(2).sum(-1)
    return sq.clamp(min=1e-12).sqrt() * (sq > 0)


def batch_contrastive_loss(emb: torch.Tensor, labels: torch.Tensor, hinge: float = 1.0) -> torch.Tensor:
    """Contrastive loss over every pair inside a P×K batch.

    Positives and negatives are averaged separately and added, so the many easy negatives neither
    drown the positives nor dilute the gradient: negatives are averaged over those still inside the
    hinge (pytorch-metric-learning's "average non-zero" reduction).

    Args:
        emb: (N, D) embeddings; labels: (N,) identity ids.
    """
    d = _pair_distances(emb)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    terms = contrastive_terms(d, same, hinge)
    pos, neg = terms[same & upper], terms[~same & upper]
    pos_loss = pos.mean() if pos.numel() else emb.sum() * 0
    active = neg[neg > 0]
    neg_loss = active.mean() if active.numel() else emb.sum() * 0
    return pos_loss + neg_loss


def triplet_margin_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                        hinge: float = 0.2) -> torch.Tensor:
    """Mean of max(0, d(a, p) − d(a, n) + hinge) over explicit (N, D) triplets."""
    d_ap = torch.linalg.vector_norm(anchor - positive, dim=1)
    d_an = torch.linalg.vector_norm(anchor - negative, dim=1)
    return (d_ap - d_an + hinge).clamp(min=0).mean()


def batch_triplet_loss(emb: torch.Tensor, labels: torch.Tensor, hinge: float = 0.2) -> torch.Tensor:
    """Triplet loss over every valid (anchor, positive, negative) in a P×K batch ("batch all").

    Averaged over the triplets that still violate the hinge (Hermans et al., 2017), so the loss
    keeps its scale as training makes most triplets easy.
    """
    d = _pair_distances(emb)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    valid = (same & ~eye).unsqueeze(2) & (~same).unsqueeze(1)  # [a, p, n]
    losses = (d.unsqueeze(2) - d.unsqueeze(1) + hinge).clamp(min=0)[valid]
    active = losses[losses > 0]
    return active.mean() if active.numel() else emb.sum() * 0


def batch_ntxent_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020) over a P×K batch; with K > 2, its multi-positive form (SupCon).

    Each image's positives compete, in a softmax over cosine similarity / temperature, against every
    other image of the batch, so the nearest negatives get the most gradient without any mining.

    Args:
        emb: (N, D) unit embeddings; labels: (N,) identity ids.
    """
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    logits = (emb @ emb.T / temperature).masked_fill(eye, float("-inf"))
    positives = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye
    log_prob = (logits - logits.logsumexp(dim=1, keepdim=True)).masked_fill(~positives, 0)
    counts = positives.sum(1)
    anchors = counts > 0
    if not anchors.any():
        return emb.sum() * 0
    return -(log_prob.sum(1)[anchors] / counts[anchors]).mean()


def koleo_loss(emb: torch.Tensor, labels: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo entropy regulariser (Sablayrolles et al. 2019; SSCD): −mean log(distance to the nearest other identity).

    Its gradient pushes each embedding away from its nearest neighbour, so embeddings spread evenly over the sphere
    and the distance that separates copies from distinct images is about the same everywhere: one global threshold
    fits. Neighbours of the same identity (an image's own augmented view) do not count.

    Args:
        emb: (N, D) unit embeddings; labels: (N,) identity ids.
    """
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    nearest = _pair_distances(emb).masked_fill(same, float("inf")).min(dim=1).values
    return -torch.log(nearest[torch.isfinite(nearest)] + eps).mean()


def _with_koleo(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], weight: float,
                emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A batch loss plus `weight` × KoLeo."""
    return loss(emb, labels) + weight * koleo_loss(emb, labels)


BATCH_LOSSES = {"contrastive": batch_contrastive_loss, "triplet": batch_triplet_loss, "ntxent": batch_ntxent_loss}


def batch_loss(name: str, hinge: float | None, temperature: float,
               koleo: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The batch loss `name` with its one setting bound: ntxent's temperature, or the others' hinge; plus KoLeo.

    hinge=None takes the loss's own default (DEFAULT_HINGES): contrastive's hinge is a distance, triplet's a gap.
    koleo > 0 adds that weight times koleo_loss.
    """
    if name == "ntxent":
        loss = partial(BATCH_LOSSES[name], temperature=temperature)
    else:
        loss = partial(BATCH_LOSSES[name], hinge=DEFAULT_HINGES[name] if hinge is None else hinge)
    return partial(_with_koleo, loss, koleo) if koleo else loss
