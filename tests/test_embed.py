"""Batched embedding equals one-by-one embedding, keeps order, and reports bad files."""

import numpy as np
import torch
from PIL import Image

from conftest import add_bad_files
from siamsearch.core.config import EncoderConfig
from siamsearch.core.decoding import decode_images
from siamsearch.core.embed import embed_paths
from siamsearch.core.images import find_images, load_image
from siamsearch.core.model import build_encoder
from siamsearch.core.transforms import normalize, square_view


def test_batched_workers_match_single_images_and_skip_bad_files(identity_dir):
    bad = add_bad_files(identity_dir)
    paths = find_images(identity_dir)
    torch.manual_seed(0)
    model = build_encoder(EncoderConfig(backbone="small", dim=8, image_size=24)).eval()
    pre = model.cfg.preprocess()
    result = embed_paths(model, pre, paths, batch_size=7, workers=2)
    assert sorted(f.path for f in result.failures) == sorted(bad)
    assert result.paths == [p for p in paths if p not in bad]
    assert result.vectors.shape == (len(result.paths), 8) and result.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1, atol=1e-5)
    assert result.sizes[0] == (32, 32)
    with torch.no_grad():
        one = model(normalize(square_view(load_image(result.paths[5]), 24)[None], pre)).numpy()
    assert np.allclose(one, result.vectors[5], atol=1e-5)


def test_large_jpeg_is_decoded_reduced_but_same_view(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(tmp_path / "big.jpg", quality=95)
    img = load_image(tmp_path / "big.jpg", draft_size=64)
    assert min(img.size) >= 64 and img.size[0] < 1200  # the decoder skipped work
    _, (views,), failures = decode_images([tmp_path / "big.jpg"], [64], 3)
    assert views.shape == (1, 3, 64, 64) and not failures
    full = square_view(load_image(tmp_path / "big.jpg"), 64)  # noise: the texture a too-eager draft sharpens
    assert (views[0].float() - full.float()).abs().mean() < 1.0
