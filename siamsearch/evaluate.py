"""Evaluate an encoder on an identity-labelled folder, and calibrate its thresholds on it.

The folder is read like a training folder: the identity of an image is its parent folder relative
to the root (images at the root itself have none and are left out). Every number comes from
siamsearch.core.metrics, so `eval` and training validation measure the same things the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .core import metrics
from .core.calibration import CALIBRATION_KEYS, distance_tails, purpose_of
from .core.checkpoint import Checkpoint, load_encoder, update_model_file
from .core.config import Runtime
from .core.device import precision, resolve_device
from .core.embed import Progress, embed_paths
from .core.errors import NotFoundError, UsageError
from .core.images import Failure, Selection, identity_of, scan_images
from .training.sampling import group_of, split_folder


@dataclass
class Labelled:
    """Embeddings of the readable images of an identity folder, with their identities."""

    root: Path
    paths: list[Path]
    labels: np.ndarray  # (N,) str identities
    vectors: np.ndarray  # (N, D) float32, rows L2-normalised
    failures: list[Failure]
    unlabelled: int  # images at the root, which have no identity
    ckpt: Checkpoint


@dataclass
class EvalResult:
    """What `evaluate` measured, plus the raw material the report draws from.

    `metrics` is a flat dict of floats (JSON-able); `distances` and `same` are the sampled
    verification pairs behind the verification metrics, for histograms and ROC curves.
    """

    root: Path
    fingerprint: str
    metrics: dict[str, float]
    counts: dict[str, int]
    distances: np.ndarray  # (P,) float32
    same: np.ndarray  # (P,) bool
    paths: list[Path]  # the embedded images, in the order of labels and vectors
    labels: np.ndarray  # (N,) str identities
    vectors: np.ndarray  # (N, D) float32, rows L2-normalised
    failures: list[Failure]
    notes: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)  # the model's training curves, for the report
    calibration: dict[str, Any] = field(default_factory=dict)  # the model's stored thresholds, for the report

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary: metrics, counts, notes and skipped files (no arrays)."""
        return {"root": str(self.root), "fingerprint": self.fingerprint, "metrics": self.metrics,
                "counts": self.counts, "notes": self.notes,
                "failures": [f.to_dict() for f in self.failures]}


def held_out_images(found: list[Path], root: Path, ckpt: Checkpoint) -> list[Path]:
    """The images of the identities that training held out for validation, found as training found them.

    Raises:
        ValueError: the model file has no training config, trained self-supervised, or held nothing out.
    """
    if ckpt.train is None:
        raise UsageError("this model file has no training config, so its held-out identities are unknown")
    _, _, val, self_sup = split_folder(found, root, ckpt.train)
    if self_sup:
        raise UsageError("the model trained self-supervised: it held out images, not identities")
    if not len(val):
        raise UsageError("the model's training held nothing out (val_fraction 0, or too few identities to split)")
    return [found[i] for i in val]


def embed_labelled(data_dir: Path | str, model_path: Path | str, *, held_out: bool = False,
                   runtime: Runtime = Runtime(), progress: Progress | None = None,
                   selection: Selection | None = None) -> Labelled:
    """Embed every labelled image of a folder with a model file; bad files are collected, not fatal.

    held_out: only the identities that training held out (data_dir must be the training folder, chosen with
    the selection training used). runtime: the device, decode workers, batch size and precision to embed with.
    selection: the files to use, like index and train (and .siamsearchignore).

    Raises:
        FileNotFoundError: no such folder. ValueError: fewer than 2 identities or no identity
        with 2+ readable images, so nothing can be measured; see held_out_images.
    """
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise NotFoundError(f"no such folder: {root}")
    dev = resolve_device(runtime.device)
    model, ckpt = load_encoder(Path(model_path), dev)
    scan = scan_images(root, selection or Selection())
    found = held_out_images(scan.images, root, ckpt) if held_out else scan.images
    labelled = [p for p in found if identity_of(p, root) is not None]
    emb = embed_paths(model, ckpt.preprocess, labelled, batch_size=runtime.batch_size, workers=runtime.workers,
                      device=dev, amp=runtime.amp, decode=runtime.decode, compile=runtime.compile, progress=progress)
    labels = np.array([identity_of(p, root) for p in emb.paths], dtype=str)
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2 or counts.max(initial=0) < 2:
        raise UsageError(f"{root} needs at least 2 identity sub-folders and one with 2+ readable images; "
                         f"found {len(counts)} identities in {len(labels)} labelled images")
    failures = scan.failures + emb.failures  # broken links, loops and FIFOs are skipped files too
    return Labelled(root, emb.paths, labels, emb.vectors, failures, len(found) - len(labelled), ckpt)


def episode_groups(labels: np.ndarray, depth: int, ways: int) -> tuple[np.ndarray | None, int, list[str]]:
    """Each image's group for within-group one-shot episodes (depth 1: its alphabet), the ways they allow, notes.

    Returns (None, ways, []) for depth 0: episodes draw identities from the whole folder.
    """
    if not depth:
        return None, ways, []
    groups = np.array([group_of(label, depth) for label in labels.tolist()], dtype=str)
    names, counts = np.unique(labels, return_counts=True)
    eligible = np.unique([group_of(n, depth) for n in names[counts >= 2].tolist()], return_counts=True)[1]
    widest = int(eligible.max(initial=0))
    notes = [f"one-shot episodes draw their identities from one folder {depth} level(s) down (e.g. one alphabet)"]
    if widest < ways:
        notes.append(f"{ways}-way asked, but no such folder has {ways} identities with 2+ images: "
                     + (f"measured {widest}-way" if widest >= 2 else "one-shot skipped"))
    return groups, min(ways, widest), notes


def evaluate(data_dir: Path | str, model_path: Path | str, *, held_out: bool = False, ways: int = 20,
             episodes: int = 400, episode_group_depth: int | None = None, target_precision: float = 0.99,
             seed: int = 0, max_pairs: int = 200_000, runtime: Runtime = Runtime(), progress: Progress | None = None,
             selection: Selection | None = None) -> EvalResult:
    """Retrieval, verification and N-way one-shot metrics of a model on an identity folder.

    Every image queries all others for P@1, recall@1/5/10, R-precision and MAP@R. Verification uses
    a seeded sample of at most max_pairs pairs (half same, half different identity). One-shot uses
    `episodes` seeded episodes; `ways` shrinks (with a note) when fewer identities have 2+ images.
    held_out: measure only the identities training held out (data_dir = the training folder).
    episode_group_depth: draw each episode's identities from one folder this many levels down (1: one
    alphabet, as Omniglot's official runs); None: the model's --val-group-depth with held_out, else 0.
    runtime and selection: how to embed, and the files to use (see embed_labelled).

    Raises:
        FileNotFoundError, ValueError (see embed_labelled), CheckpointError.
    """
    data = embed_labelled(data_dir, model_path, held_out=held_out, runtime=runtime, progress=progress,
                          selection=selection)
    emb, labels = data.vectors, data.labels
    i, j, same = metrics.sample_pairs(labels, max_pairs, seed)  # sampled once: metrics and plots share them
    distances = metrics.pair_distances(emb, i, j)
    found = metrics.retrieval_metrics(emb, labels) | metrics.pair_metrics(distances, same, target_precision)
    names, counts = np.unique(labels, return_counts=True)
    eligible = int((counts >= 2).sum())
    notes = []
    if data.unlabelled:
        notes.append(f"{data.unlabelled} image(s) directly in {data.root} have no identity folder: left out")
    if eligible < ways:
        notes.append(f"{ways}-way one-shot asked, but only {eligible} identities have 2+ images: "
                     + (f"measured {eligible}-way" if eligible >= 2 else "one-shot skipped"))
        ways = eligible
    if episode_group_depth is None:
        episode_group_depth = data.ckpt.train.val_group_depth if held_out and data.ckpt.train else 0
    groups, ways, more = episode_groups(labels, episode_group_depth, ways) if ways >= 2 else (None, ways, [])
    notes += more
    if ways >= 2:
        found |= {"one_shot": metrics.one_shot_accuracy(emb, labels, ways, episodes, seed, groups), "ways": ways,
                  "episodes": episodes, "episode_group_depth": episode_group_depth}
    tally = {"images": len(labels), "identities": len(names), "identities_with_pairs": eligible,
             "skipped": len(data.failures), "unlabelled": data.unlabelled}
    return EvalResult(data.root, data.ckpt.fingerprint, {k: float(v) for k, v in found.items()}, tally,
                      distances, same, data.paths, labels, emb, data.failures, notes, data.ckpt.history,
                      data.ckpt.calibration)


def calibrate(data_dir: Path | str, model_path: Path | str, *, target_precision: float = 0.99,
              target_recall: float = metrics.TARGET_RECALL, seed: int = 0, max_pairs: int = 200_000,
              group_depth: int = 0, runtime: Runtime = Runtime(), progress: Progress | None = None,
              selection: Selection | None = None) -> dict[str, Any]:
    """Recompute the duplicate thresholds on the user's labelled data and store them in the model file.

    The weights (and so the fingerprint, and every index built with the model) stay the same; only
    the calibration that dedup uses by default is replaced. runtime and selection: how to embed, and the files
    to use (see embed_labelled); the calibration records the precision it was measured in.
    With group_depth g, identities that share their first g folders form a group (tiles of one photo:
    distinct images, but not what a collection's distinct photos look like), and pairs within a group are
    left out of the different pairs.

    Returns:
        The new calibration: CALIBRATION_KEYS, "tails" (siamsearch.core.calibration), the model's "purpose",
        "source" ("calibrate:<folder>"), "pairs" and "group_depth".
    """
    data = embed_labelled(data_dir, model_path, runtime=runtime, progress=progress, selection=selection)
    groups = identity_groups(data.labels, group_depth)
    found = metrics.verification_metrics(data.vectors, data.labels, max_pairs=max_pairs, seed=seed,
                                         target_precision=target_precision, target_recall=target_recall,
                                         groups=groups)
    purpose = purpose_of(data.ckpt.calibration, data.ckpt.train and data.ckpt.train.self_supervised)
    calibration = ({k: found[k] for k in CALIBRATION_KEYS}
                   | {"tails": distance_tails(data.vectors, data.labels, seed, groups), "purpose": purpose,
                      "source": f"calibrate:{data.root}", "pairs": int(found["pairs"]), "group_depth": group_depth,
                      "precision": precision(resolve_device(runtime.device), runtime.amp)})
    update_model_file(Path(model_path), calibration=calibration)
    return calibration


def identity_groups(labels: np.ndarray, depth: int) -> np.ndarray | None:
    """Each identity's first `depth` folders, its group; None for depth 0 (every identity its own group).

    Raises:
        UsageError: the identities are not that deep, or fewer than 2 groups remain to pair.
    """
    if depth <= 0:
        return None
    parts = [label.split("/") for label in labels]
    if min(len(p) for p in parts) <= depth:
        raise UsageError(f"--group-depth {depth} needs identities at least {depth + 1} folders deep "
                         f"(<group>/.../<identity>/image); found {labels[0]!r}")
    groups = np.array(["/".join(p[:depth]) for p in parts])
    if len(np.unique(groups)) < 2:
        raise UsageError(f"--group-depth {depth} leaves one group only: no pair of distinct images to measure")
    return groups
