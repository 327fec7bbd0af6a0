"""Fixtures: tiny synthetic identity folders and bad files, made fresh for each test session."""

from __future__ import annotations

import io
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner, Result


def grating(angle: float, freq: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """A sinusoidal grating: its angle and frequency are the identity; phase, tint and noise vary."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    wave = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    tint = rng.uniform(0.5, 1.0, size=3)
    img = (0.5 + 0.4 * wave)[..., None] * tint + rng.normal(0, 0.05, (size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_identities(root: Path, n_ids: int = 16, per_id: int = 6, size: int = 32, seed: int = 0) -> Path:
    """Write n_ids identity folders of per_id PNG gratings each under root."""
    rng = np.random.default_rng(seed)
    for i in range(n_ids):
        angle, freq = np.pi * i / n_ids, 2 + (i % 3)
        folder = root / f"id{i:02d}"
        folder.mkdir(parents=True)
        for j in range(per_id):
            Image.fromarray(grating(angle, freq, size, rng)).save(folder / f"{j}.png")
    return root


def add_bad_files(root: Path) -> list[Path]:
    """Empty, truncated and non-image files with image extensions: each must be skipped."""
    folder = root / "id00"
    empty, trunc, text = folder / "empty.jpg", folder / "truncated.png", folder / "notes.png"
    empty.write_bytes(b"")
    good = (folder / "0.png").read_bytes()
    trunc.write_bytes(good[: len(good) // 3])
    text.write_text("this is not an image")
    return [empty, trunc, text]


# ---- vectors with a brute-force oracle (FAISS answers are checked against these) ----

DIM = 8


def clustered(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """Unit vectors around a few centres, like embeddings of a few identities."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, dim))[rng.integers(8, size=n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances and ids of the k nearest, computed the slow, obvious way."""
    d = np.sqrt(((xq[:, None, :].astype(np.float64) - xb[None]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), ids[order]


def assert_same_neighbours(dist, found, xb, ids, xq, k):
    """Distances match the oracle; ids too, wherever the distance is not tied with a neighbour's."""
    true_d, true_ids = brute_force(xb, ids, xq, k + 1)
    np.testing.assert_allclose(dist, true_d[:, :k], atol=1e-5)
    gaps = np.diff(true_d, axis=1) > 1e-5
    distinct = gaps[:, :k] & np.concatenate([np.ones((len(xq), 1), bool), gaps[:, :k - 1]], axis=1)
    assert np.array_equal(found[distinct], true_ids[:, :k][distinct])


@pytest.fixture
def identity_dir(tmp_path: Path) -> Path:
    """16 identities x 6 images of 32x32 RGB gratings."""
    return make_identities(tmp_path / "data")


@pytest.fixture
def bad_files(identity_dir: Path) -> list[Path]:
    """identity_dir with the unreadable files of add_bad_files in it; returns those files."""
    return add_bad_files(identity_dir)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A small untrained encoder saved as a model file (weights seeded, so runs repeat)."""
    import torch

    from siamsearch.core.checkpoint import save_model
    from siamsearch.core.config import EncoderConfig
    from siamsearch.core.model import build_encoder

    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    save_model(path, build_encoder(EncoderConfig(backbone="small", dim=16, image_size=32)))
    return path


@cache
def loopback_only() -> str | None:
    """Why a multi-process test cannot run here (None when it can): it needs `unshare -n` (root) to keep to loopback."""
    try:
        done = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -n is not available ({exc})"
    return None if done.returncode == 0 else f"unshare -n is not permitted: {done.stderr.decode().strip()}"


def in_loopback_namespace(cmd: list[str]) -> list[str]:
    """cmd run inside a new network namespace whose only interface is loopback: no traffic leaves the machine."""
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up; exec "$@"', "sh", *cmd]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked cuda are skipped, with the reason, where no CUDA GPU is (scripts/gpu_check.sh runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def run_cli(*args: object) -> Result:
    """Invoke the siamsearch CLI in-process with every argument as a string."""
    from siamsearch.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The whole demo, run once per session (about 2 minutes on a CPU): a DemoSummary."""
    pytest.importorskip("sklearn", reason='the demo needs pip install -e ".[demo]"')
    pytest.importorskip("skimage", reason='the demo needs pip install -e ".[demo]"')
    from siamsearch.core.config import Runtime
    from siamsearch.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("demo"), minutes=2.0, runtime=Runtime(device="cpu", workers=0))


class VectorEmbed:
    """An embedding stream where file v0042.png embeds to vectors[42], in batches of batch_size."""

    def __init__(self, vectors: np.ndarray, batch_size: int = 64) -> None:
        self.vectors, self.batch_size = vectors, batch_size

    def __call__(self, paths):
        from siamsearch.core.embed import EmbedResult

        for i in range(0, len(paths), self.batch_size):
            batch = list(paths[i:i + self.batch_size])
            rows = [int(p.stem[1:]) for p in batch]
            yield EmbedResult(batch, self.vectors[rows], [(1, 1)] * len(rows))


@pytest.fixture
def sync_vectors():
    """sync_vectors(store, vectors, **options): sync a store whose file v0042.png holds vectors[42], decoding nothing."""
    from siamsearch.index.indexing import sync

    return lambda store, vectors, **options: sync(store, VectorEmbed(vectors), **options)


@pytest.fixture
def vector_folder():
    """vector_folder(root, n): n tiny files v0000.png ... for sync_vectors, which never decodes them."""

    def make(root: Path, n: int) -> Path:
        root.mkdir(parents=True)
        buf = io.BytesIO()
        Image.new("L", (1, 1)).save(buf, format="PNG")
        for i in range(n):  # each file's bytes differ (a trailing number), or indexing would embed one for all
            (root / f"v{i:04d}.png").write_bytes(buf.getvalue() + str(i).encode())
        return root

    return make


@pytest.fixture
def new_store(tmp_path: Path):
    """new_store(root, kind, fingerprint): an empty DIM-d store at tmp_path/index for the images under root."""
    from siamsearch.index.store import Store

    def make(root: Path, kind: str = "auto", fingerprint: str = "a" * 16) -> Store:
        return Store.create(tmp_path / "index", dim=DIM, fingerprint=fingerprint, encoder={"dim": DIM},
                            model_path=None, root=root, index_kind=kind)

    return make


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """3 identity folders x 3 images of 8x8 gratings."""
    return make_identities(tmp_path / "photos", n_ids=3, per_id=3, size=8)
