"""The GPU paths: each checked on the CPU where the mistake shows there, and on a GPU by the `cuda` tests.

The device decoder, the chunked copies back, the blocked range search and the precision rule are the same
code on a CPU and a GPU: the CPU tests run them with torch on device="cpu" (torchvision's CPU JPEG decoder).
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import clustered
from PIL import Image
from test_dedup import make_store
from torchvision.io import decode_jpeg

import siamsearch.core.devicedecode as devicedecode
import siamsearch.core.decoding as decoding
import siamsearch.core.embed as embed
from siamsearch.duplicates.closepairs import close_pairs, find_cross_pairs
from siamsearch.core.config import EncoderConfig, Runtime
from siamsearch.core.device import default_workers, precision, train_workers
from siamsearch.core.devicedecode import decode_views, read_jpeg, upright
from siamsearch.core.decoding import DecodedImages, collate, loader
from siamsearch.core.embed import embed_batches, embed_paths
from siamsearch.core.errors import ModelMismatchError
from siamsearch.core.images import find_images, load_image
from siamsearch.index.indexing import index_folder
from siamsearch.core.model import build_encoder
from siamsearch.index.search import Searcher
from siamsearch.index.store import Store
from siamsearch.core.transforms import square_view

CPU = torch.device("cpu")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
BF16_TOLERANCE = 0.05  # Euclidean distance between a bf16 and an fp32 vector of one image (unit vectors)
DECODE_TOLERANCE = 0.05  # ... between the device decoder's vector and PIL's (ImageNet EfficientNet: 0.0035)


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth (h, w, 3) uint8 picture: random colours at 8x6 points, scaled up bicubically, like a photo's shading."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC))


@pytest.fixture
def mixed_dir(tmp_path: Path) -> tuple[Path, list[Path]]:
    """JPEGs (colour, gray, EXIF-turned, CMYK), a PNG, and bad files with image names; (folder, bad files)."""
    root = tmp_path / "mixed"
    root.mkdir()
    for i in range(7):
        Image.fromarray(photo(300 + 40 * i, 420 - 30 * i, i)).save(root / f"c{i}.jpg", quality=90)
    Image.fromarray(photo(200, 260, 9)[..., 0]).save(root / "gray.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo(240, 320, 10)).save(root / "turned.jpg", exif=exif)
    Image.fromarray(photo(200, 200, 11)).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(photo(180, 240, 12)).save(root / "p.png")
    good = (root / "c0.jpg").read_bytes()
    bad = [root / "b_truncated.jpg", root / "b_empty.jpg", root / "b_text.jpg"]
    bad[0].write_bytes(good[: len(good) // 2])
    bad[1].write_bytes(b"")
    bad[2].write_text("not an image")
    return root, bad


def small_model(dim: int = 16, size: int = 48) -> torch.nn.Module:
    """A seeded small encoder."""
    torch.manual_seed(0)
    return build_encoder(EncoderConfig(backbone="small", dim=dim, image_size=size)).eval()


# ---- JPEGs decoded on the device -------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_device_decode_turns_each_exif_orientation_as_pil(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(photo(30, 50)).save(tmp_path / "o.jpg", quality=95, exif=exif)
    jpeg = read_jpeg(tmp_path / "o.jpg", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mine = upright(decode_jpeg(jpeg.data), jpeg.orientation).permute(1, 2, 0).numpy()
    pil = np.asarray(load_image(tmp_path / "o.jpg"))
    assert mine.shape == pil.shape and jpeg.size == (pil.shape[1], pil.shape[0])
    assert np.abs(mine.astype(int) - pil).mean() < 0.5


@pytest.mark.parametrize("device", DEVICES)
def test_device_views_are_pils_views(tmp_path, device):
    shapes = {"small": (90, 70), "large": (900, 1200), "small2": (90, 70), "turned": (70, 90)}  # one call, 3 shapes
    for seed, (name, (h, w)) in enumerate(shapes.items()):
        Image.fromarray(photo(h, w, seed)).save(tmp_path / f"{name}.jpg", quality=92)
    files = [tmp_path / f"{name}.jpg" for name in shapes]
    views = decode_views([read_jpeg(f, 3) for f in files], 64, 3, torch.device(device))
    for view, file in zip(views, files):
        pil = square_view(load_image(file, draft_size=64), 64)
        assert view.shape == pil.shape and view.dtype == torch.uint8
        # gray levels: 0.04-0.11 on a CPU (0.20 resized in one pass); PIL decodes the large one reduced in the
        # DCT (0.16 off); nvJPEG's own IDCT and chroma upsampling add some
        off = (view.cpu().float() - pil.float()).abs().mean()
        assert off < (1.5 if device == "cuda" else 0.3 if file.stem == "large" else 0.15)


def test_only_plain_jpegs_are_left_to_the_device(mixed_dir):
    root, bad = mixed_dir
    left = {p.name for p in find_images(root) if read_jpeg(p, 3) is not None}
    assert left == {f"c{i}.jpg" for i in range(7)} | {"gray.jpg", "turned.jpg", "b_truncated.jpg"}


@pytest.mark.parametrize("device", DEVICES)
def test_device_decoding_embeds_like_pil_and_skips_the_same_files(mixed_dir, device):
    root, bad = mixed_dir
    paths, model = find_images(root), small_model()
    pre = model.cfg.preprocess()
    pil = embed_paths(model, pre, paths, batch_size=4, workers=0, decode="pil", amp=False)
    dev = embed_paths(model, pre, paths, batch_size=4, workers=2, device=device, decode="device", amp=False)
    assert dev.paths == pil.paths == [p for p in paths if p not in bad]  # input order kept
    assert sorted((f.path, f.reason) for f in dev.failures) == sorted((f.path, f.reason) for f in pil.failures)
    assert dev.sizes == pil.sizes
    assert np.linalg.norm(dev.vectors - pil.vectors, axis=1).max() < DECODE_TOLERANCE


def test_a_batch_the_decoder_refuses_falls_back_to_pil_file_by_file(mixed_dir, monkeypatch):
    root, bad = mixed_dir
    paths, model = find_images(root), small_model()
    pre = model.cfg.preprocess()

    def refuse(data, **kwargs):
        raise RuntimeError("nvjpeg: refused")

    monkeypatch.setattr(devicedecode, "decode_jpeg", refuse)
    refused = embed_paths(model, pre, paths, batch_size=5, workers=0, decode="device")
    pil = embed_paths(model, pre, paths, batch_size=5, workers=0, decode="pil")
    assert refused.paths == pil.paths and sorted(f.path for f in refused.failures) == sorted(bad)
    np.testing.assert_allclose(refused.vectors, pil.vectors, atol=1e-5)


def test_unknown_decode_is_a_usage_error(mixed_dir):
    model = small_model()
    with pytest.raises(ValueError, match="decode"):
        next(embed_batches(model, model.cfg.preprocess(), [], decode="nvjpeg"))


# ---- no wait on the GPU per batch ----------------------------------------------------------------------


def test_embeddings_come_back_a_chunk_of_batches_at_a_time(identity_dir):
    paths, model = find_images(identity_dir)[:13], small_model(size=32)
    pre = model.cfg.preprocess()
    chunks = list(embed_batches(model, pre, paths, batch_size=2, workers=0, chunk=3))
    assert [len(c.paths) for c in chunks] == [6, 6, 1]  # 7 batches: one copy back per 3
    whole = embed_paths(model, pre, paths, batch_size=13, workers=0)
    np.testing.assert_allclose(np.concatenate([c.vectors for c in chunks]), whole.vectors, atol=1e-5)
    assert [p for c in chunks for p in c.paths] == whole.paths


def test_workers_stack_each_batch_so_the_loader_pins_one_tensor(identity_dir, monkeypatch):
    images = DecodedImages(find_images(identity_dir)[:5], [16], 3)
    batch = collate([images[i] for i in range(5)], images.sizes, images.channels)
    assert batch.views[0].shape == (5, 3, 16, 16) and batch.indices == list(range(5))
    asked = {}
    monkeypatch.setattr(decoding, "DataLoader", lambda *args, **kwargs: asked.update(kwargs) or [batch])
    assert list(loader(images, 0, pin=True, batch_size=5)) == [batch] and asked["pin_memory"]  # it calls Batch.pin_memory


def test_workers_join_a_batchs_jpeg_bytes_into_one_tensor(mixed_dir):
    root, bad = mixed_dir
    paths = find_images(root)
    images = DecodedImages(paths, [16], 3, jpeg=True)
    batch = collate([images[i] for i in range(len(paths))], images.sizes, images.channels)
    assert len(batch.jpegs) == 10 and batch.blob.dim() == 1  # one tensor crosses from the worker, not one per file
    for f, jpeg in zip(batch.jpegs, batch.jpeg_files()):
        assert bytes(jpeg.data.numpy()) == paths[f.index].read_bytes()
    assert sorted(paths[i].name for i in batch.indices) == ["cmyk.jpg", "p.png"]


def test_compile_is_asked_of_torch_only_with_the_flag(identity_dir, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)
    model = small_model(size=32)
    for flag in (False, True):
        embed_paths(model, model.cfg.preprocess(), find_images(identity_dir)[:3], workers=0, compile=flag)
    assert compiled == [model]


@pytest.mark.cuda
def test_cuda_embedding_waits_on_the_gpu_once_per_chunk(identity_dir):
    paths, model = find_images(identity_dir)[:40], small_model(size=32)
    list(embed_batches(model, model.cfg.preprocess(), paths[:8], batch_size=4, workers=0, device="cuda"))  # warm-up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            chunks = list(embed_batches(model, model.cfg.preprocess(), paths, batch_size=4, workers=2,
                                        device="cuda", chunk=5))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(chunks) == 2 and len(syncs) <= 2 * len(chunks)  # the copy back of each chunk, not one per batch


@pytest.mark.cuda
def test_cuda_batches_come_pinned(identity_dir):
    images = DecodedImages(find_images(identity_dir)[:8], [16], 3)
    assert all(b.views[0].is_pinned() for b in loader(images, 2, pin=True, batch_size=4))


# ---- one precision rule -----------------------------------------------------------------------------------


def test_the_head_and_the_norm_run_in_fp32_under_autocast():
    model, seen = small_model(), {}
    model.head.register_forward_hook(lambda m, args, out: seen.update(x=args[0].dtype, y=out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 48, 48))
    assert seen == {"x": torch.float32, "y": torch.float32} and out.dtype == torch.float32
    np.testing.assert_allclose(out.norm(dim=1).detach().numpy(), 1.0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_vectors_stay_near_fp32_ones(identity_dir, device):
    model = small_model(size=32)
    pre, x = model.cfg.preprocess(), torch.stack([square_view(load_image(p), 32) for p in find_images(identity_dir)[:32]])
    dev = torch.device(device)
    fp32 = embed.embed_tensors(model.to(dev), x, pre, dev, amp=False)
    bf16 = embed.embed_tensors(model, x, pre, dev, amp=True)
    assert 0 < np.linalg.norm(fp32 - bf16, axis=1).max() < BF16_TOLERANCE


def test_the_precision_rule():
    assert precision(CPU) == precision(CPU, False) == "fp32" and precision(CPU, True) == "bf16"
    if torch.cuda.is_available():
        assert precision(torch.device("cuda")) in ("bf16", "fp16") and precision(torch.device("cuda"), False) == "fp32"


@pytest.mark.parametrize("amp, other", [(True, False), (None, True)])
def test_an_index_records_its_precision_and_queries_and_updates_follow_it(identity_dir, model_file, tmp_path, amp,
                                                                            other):
    index = tmp_path / "index"
    store, _ = index_folder(identity_dir, index, model_file, runtime=Runtime(device="cpu", amp=amp, workers=0))
    assert store.precision == ("bf16" if amp else "fp32")
    store.close()
    searcher = Searcher.open(index, runtime=Runtime(device="cpu", workers=0))  # amp not given: the index's
    first = find_images(identity_dir)[0]
    (result,), _ = searcher.query_images([first], k=1)
    assert result.neighbors[0].path == first.relative_to(identity_dir).as_posix()
    assert result.neighbors[0].distance < 1e-3  # its own vector: the same precision made both
    with pytest.raises(ModelMismatchError, match="--rebuild"):
        Searcher.open(index, runtime=Runtime(device="cpu", amp=other))
    (identity_dir / "id00" / "new.png").write_bytes((identity_dir / "id01" / "0.png").read_bytes())
    with pytest.raises(ModelMismatchError, match=store.precision):
        index_folder(identity_dir, index, runtime=Runtime(device="cpu", amp=other, workers=0))


@pytest.mark.cuda
def test_an_index_made_on_the_gpu_is_queried_on_the_cpu_in_its_precision(identity_dir, model_file, tmp_path):
    store, _ = index_folder(identity_dir, tmp_path / "index", model_file, runtime=Runtime(device="cuda"))
    assert store.precision in ("bf16", "fp16")
    store.close()
    if store.precision == "fp16":
        pytest.skip("an fp16 index (a GPU without bf16) is queried on a GPU")
    searcher = Searcher.open(tmp_path / "index", runtime=Runtime(device="cpu", workers=0))
    results, _ = searcher.query_images(find_images(identity_dir)[:10], k=1)
    assert max(r.neighbors[0].distance for r in results) < BF16_TOLERANCE


# ---- training on a GPU --------------------------------------------------------------------------------------


def test_training_decodes_in_workers_on_a_gpu_and_in_the_main_process_on_a_cpu():
    assert train_workers(None, torch.device("cuda")) == default_workers()
    assert train_workers(None, CPU) == 0 and train_workers(3, CPU) == 3


def test_training_reads_the_loss_only_now_and_then(identity_dir, tmp_path, monkeypatch):
    from test_train import CFG, ENC

    import siamsearch.training.loop as tr

    reads, real = [], torch.Tensor.item

    def item(t: torch.Tensor) -> float:
        caller = sys._getframe(1).f_code.co_filename
        reads.extend([caller] if Path(caller).parent.name == "siamsearch" else [])  # not the optimizer's step count
        return real(t)

    monkeypatch.setattr(torch.Tensor, "item", item)
    monkeypatch.setattr(tr, "PROGRESS_EVERY", 1000)
    cfg = dataclasses.replace(CFG, epochs=2, ids_per_batch=2, images_per_id=2)  # many batches per epoch
    result = tr.train(identity_dir, tmp_path / "m.pt", ENC, cfg, Runtime(device="cpu"))
    assert len(reads) <= 3 * len(result.history)  # the first batch's, the epoch's mean: never one per step


@pytest.mark.cuda
def test_cuda_training_with_amp_decodes_uncached_batches_in_workers(identity_dir, tmp_path):
    from test_train import CFG, ENC

    import siamsearch.training.loop as tr

    runtime = Runtime(device="cuda", amp=True, cache_gb=0.0)  # decoded on the fly, pinned, by default workers
    result = tr.train(identity_dir, tmp_path / "m.pt", ENC, dataclasses.replace(CFG, epochs=2), runtime)
    assert np.isfinite(result.history[-1]["loss"]) and result.calibration.get("precision") in ("bf16", "fp16")


# ---- dedup's range search on a device ------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_device_range_search_finds_faiss_pairs(tmp_path, monkeypatch, device):
    import siamsearch.duplicates.closepairs as closepairs

    monkeypatch.setattr(closepairs, "BASE_BLOCK", 37)  # several blocks of stored vectors
    vectors = clustered(300, seed=3, dim=16)
    vectors[10] = vectors[20] = vectors[30]  # exact copies collapse the same way
    store = make_store(tmp_path / "a", vectors)
    other = make_store(tmp_path / "b", clustered(120, seed=4, dim=16))
    for margin in (0.3, 0.8):
        faiss_found, mine = close_pairs(store, margin, block=64), close_pairs(store, margin, block=64, device=device)
        assert len(faiss_found.pairs[0]) > 50
        for a, b in zip(faiss_found.pairs[:2], mine.pairs[:2]):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(faiss_found.pairs[2], mine.pairs[2], atol=1e-3)
        assert faiss_found.copies.keys() == mine.copies.keys()
        cross, cross_mine = find_cross_pairs(store, other, margin), find_cross_pairs(store, other, margin, device=device)
        assert all(np.array_equal(a, b) for a, b in zip(cross[:2], cross_mine[:2]))


def test_device_range_search_answers_like_the_store(tmp_path):
    from siamsearch.duplicates.closepairs import DeviceSearch

    store = make_store(tmp_path / "a", clustered(200, seed=5, dim=16))
    queries = clustered(25, seed=6, dim=16)
    want, got = store.range_search(queries, 0.5), DeviceSearch(store, "cpu").range_search(queries, 0.5)
    np.testing.assert_array_equal(want[0], got[0])
    np.testing.assert_allclose(want[1], got[1], atol=1e-3)
    assert sum(np.array_equal(a, b) for a, b in zip(np.split(want[2], want[0][1:-1]), np.split(got[2], got[0][1:-1]))) == 25
    assert isinstance(store, Store)
