"""Shared weights, freezing and progressive unfreezing: what trains and what does not."""

import dataclasses

import pytest
import torch

from siamsearch.core.config import EncoderConfig
from siamsearch.training.losses import contrastive_loss
from siamsearch.core.model import GeM, build_encoder, set_trainable
from siamsearch.training.loop import unfreeze_blocks


def small(channels=3, size=32, backbone="small"):
    torch.manual_seed(0)
    return build_encoder(EncoderConfig(backbone=backbone, dim=16, image_size=size, channels=channels))


def grads_of(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_both_branches_add_their_gradients_to_the_one_set_of_weights():
    """Why shared-weight updates seem to vanish: each branch's gradient lands on the same tensor."""
    model = small().eval()  # eval: BatchNorm uses stored statistics, so the branches are independent
    a, b = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    same = torch.tensor([True, False, True, False])
    full = grads_of(model, contrastive_loss(model(a), model(b), same))
    only_a = grads_of(model, contrastive_loss(model(a), model(b).detach(), same))
    only_b = grads_of(model, contrastive_loss(model(a).detach(), model(b), same))
    for name, g in full.items():
        assert torch.allclose(g, only_a[name] + only_b[name], atol=1e-6), name
    assert any(only_a[n].abs().sum() > 0 and only_b[n].abs().sum() > 0 for n in full)


def test_one_step_changes_shared_weights_and_every_trainable_parameter_gets_a_gradient():
    model = small().train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    a, b = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    loss = contrastive_loss(model(a), model(b), torch.arange(8) % 2 == 0)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_frozen_backbone_gets_no_gradient_and_its_batchnorm_stays_in_eval():
    model = small()
    set_trainable(model.backbone, False)
    model.train()
    loss = contrastive_loss(model(torch.randn(4, 3, 32, 32)), model(torch.randn(4, 3, 32, 32)),
                            torch.tensor([True, False, True, False]))
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is None) == name.startswith("backbone."), name
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert model.head[1].training  # the head's BatchNorm still learns


def test_unfreeze_adds_exactly_the_named_blocks_at_the_finetune_lr():
    model = small(backbone="resnet18", size=32)
    set_trainable(model.backbone, False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    unfreeze_blocks(model, opt, ("layer3", "layer4"), lr=1e-5)
    added = {id(p) for p in opt.param_groups[1]["params"]}
    expected = {id(p) for blk in (model.backbone.layer3, model.backbone.layer4) for p in blk.parameters()}
    assert added == expected and opt.param_groups[1]["lr"] == 1e-5
    still_frozen = [n for n, p in model.backbone.named_parameters() if not n.startswith(("layer3", "layer4"))]
    assert all(not dict(model.backbone.named_parameters())[n].requires_grad for n in still_frozen)
    with pytest.raises(ValueError, match="unknown block"):
        unfreeze_blocks(model, opt, ("layer9",), lr=1e-5)


@pytest.mark.parametrize("backbone,channels", [("small", 1), ("small", 3), ("resnet18", 1), ("resnet18", 3)])
def test_output_is_unit_norm_for_grey_and_colour(backbone, channels):
    model = small(channels=channels, backbone=backbone).eval()
    with torch.no_grad():
        z = model(torch.randn(2, channels, 32, 32))
    assert z.shape == (2, 16)
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)


def test_standardize_makes_the_embedding_blind_to_brightness_and_contrast():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    relit = 1.7 * x + 0.3  # brighter and more contrast, per channel as normalisation keeps it
    for standardize in (True, False):
        torch.manual_seed(0)
        model = build_encoder(EncoderConfig(backbone="small", dim=16, image_size=32, standardize=standardize)).eval()
        with torch.no_grad():
            shift = (model(x) - model(relit)).norm(dim=1).max().item()
        assert (shift < 1e-4) if standardize else (shift > 1e-3)


def test_local_torchvision_weights_load(tmp_path):
    import torchvision
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    model = build_encoder(EncoderConfig(backbone="resnet18", dim=8, image_size=32), tmp_path / "r18.pth")
    assert torch.equal(model.backbone.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert torch.equal(model.backbone.stem[0].weight, ref.conv1.weight)


def test_gem_with_p_1_is_average_pooling_and_p_learns():
    x = torch.rand(2, 5, 4, 4)
    assert torch.allclose(GeM(1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    gem = GeM(3.0)
    gem(x).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs() > 0


def test_gem_and_linear_head_train_end_to_end():
    torch.manual_seed(0)
    model = build_encoder(EncoderConfig(backbone="small", dim=8, image_size=32, pooling="gem", head="linear"))
    grads = grads_of(model, model(torch.randn(4, 3, 32, 32)).sum())
    assert "pool.p" in grads and isinstance(model.head, torch.nn.Linear)


def test_test_shifts_average_the_image_and_four_moved_copies_out_of_training_only():
    from siamsearch.core.model import shifted

    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    views = shifted(x, 1)
    assert len(views) == 5 and all(v.shape == x.shape for v in views) and torch.equal(views[0], x)
    assert torch.equal(views[4][..., :-1, :-1], x[..., 1:, 1:])  # moved one pixel up and left, the border repeated
    torch.manual_seed(0)
    model = build_encoder(EncoderConfig(backbone="small", dim=16, image_size=32, channels=1, test_shifts=2))
    plain = build_encoder(EncoderConfig(backbone="small", dim=16, image_size=32, channels=1))
    plain.load_state_dict(model.state_dict())
    glyphs = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        model.eval(), plain.eval()
        expected = torch.stack([plain.pool(plain.backbone(v)) for v in shifted(glyphs, 2)]).mean(0)
        assert torch.allclose(model(glyphs), torch.nn.functional.normalize(plain.head(expected), dim=1), atol=1e-5)
        model.train(), plain.train()
        assert torch.allclose(model(glyphs), plain(glyphs), atol=1e-5)  # SGD sees the image alone


def test_test_scales_add_resized_copies_to_the_average_out_of_training_only():
    from siamsearch.core.model import test_views

    x = torch.rand(2, 3, 32, 32)
    views = test_views(x, 0, (1.5, 0.5))
    assert [tuple(v.shape[-2:]) for v in views] == [(32, 32), (48, 48), (16, 16)] and torch.equal(views[0], x)
    assert len(test_views(x, 1, (2.0,))) == 6  # the five shifted views, then the resized one
    torch.manual_seed(0)
    model = build_encoder(EncoderConfig(backbone="small", dim=16, image_size=32, test_scales=(1.5,)))
    plain = build_encoder(EncoderConfig(backbone="small", dim=16, image_size=32))
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        model.eval(), plain.eval()
        expected = torch.stack([plain.pool(plain.backbone(v)) for v in views[:2]]).mean(0)
        assert torch.allclose(model(x), torch.nn.functional.normalize(plain.head(expected), dim=1), atol=1e-5)
        model.train(), plain.train()
        assert torch.allclose(model(x), plain(x), atol=1e-5)  # SGD sees the image alone


def test_test_grey_averages_the_image_with_its_grey_copy_so_a_grey_copy_comes_closer():
    from siamsearch.core.model import greyed

    torch.manual_seed(0)
    cfg = EncoderConfig(backbone="small", dim=16, image_size=32, head="linear", test_grey=True)
    model, plain = build_encoder(cfg).eval(), build_encoder(dataclasses.replace(cfg, test_grey=False)).eval()
    plain.load_state_dict(model.state_dict())
    colour = torch.rand(4, 3, 32, 32) * 2 - 1
    grey = greyed(colour, cfg.preprocess())
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    with torch.no_grad():
        assert torch.allclose(model(grey), plain(grey), atol=1e-6)  # grey already: its grey copy is itself
        apart = (model(colour) - model(grey)).norm(dim=1)
        assert (apart < (plain(colour) - plain(grey)).norm(dim=1)).all()
        assert torch.allclose(model.train()(colour), plain.train()(colour), atol=1e-6)  # SGD sees the image alone


@pytest.mark.parametrize("scales", [(0.1,), (1.41, 5.0)])
def test_test_scales_out_of_range_are_refused(scales):
    with pytest.raises(ValueError, match="test_scales must lie between"):
        EncoderConfig(test_scales=scales)
