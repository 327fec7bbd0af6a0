"""A few seconds of real training on tiny synthetic identities, resume, bad files, and the CLI."""

import dataclasses
import math

import pytest
import torch
from conftest import make_identities
from typer.testing import CliRunner

from siamsearch import commands
from siamsearch.core.checkpoint import load_checkpoint, load_encoder, save_model
from siamsearch.cli.app import app
from siamsearch.core.config import AUGMENT_PRESETS, EncoderConfig, Runtime, TrainConfig
from siamsearch.core.errors import RefusedError, UsageError
from siamsearch.core.model import build_encoder
from siamsearch.training.loop import Quiet, resume_path_for, train
from siamsearch.training.recipes import RECIPES
from siamsearch.training.validation import kept_epoch, validate
from siamsearch.core.images import scan_images
from siamsearch.training.data import TrainData

ENC = EncoderConfig(backbone="small", dim=32, image_size=32, channels=3)
CFG = TrainConfig(epochs=4, ids_per_batch=8, images_per_id=3, lr=3e-3, val_fraction=0.25, ways=4, episodes=100,
                  augment=AUGMENT_PRESETS["none"], hinge=1.0)


def load_data(root, enc, cfg):
    """The training data of a folder, scanned whole."""
    return TrainData.load(root, scan_images(root), enc, cfg)


def test_training_separates_unseen_identities(identity_dir, tmp_path):
    out = tmp_path / "m.pt"
    result = train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=6))
    data = load_data(identity_dir, ENC, CFG)
    images, labels = data.validation()
    torch.manual_seed(0)
    untrained = validate(build_encoder(ENC), images, labels, CFG, torch.device("cpu"))
    best = result.best
    assert best["roc_auc"] >= 0.9 and best["roc_auc"] > untrained["roc_auc"] + 0.05
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    ckpt = load_checkpoint(out)
    assert len(ckpt.history) == 6 and ckpt.fingerprint == result.fingerprint
    assert 0 < ckpt.calibration["threshold_best_f1"] < 2 and ckpt.calibration["target_precision"] == 0.99


def test_bad_files_are_skipped_and_counted(identity_dir, bad_files, tmp_path):
    result = train(identity_dir, tmp_path / "m.pt", ENC, dataclasses.replace(CFG, epochs=1, val_fraction=0.5))
    assert sorted(f.path for f in result.failures) == sorted(bad_files)
    assert all(f.reason for f in result.failures)


def test_time_budget_stops_and_keeps_best(identity_dir, tmp_path):
    result = train(identity_dir, tmp_path / "m.pt", ENC, dataclasses.replace(CFG, epochs=50, max_minutes=1e-4))
    assert result.stopped == "time budget" and len(result.history) == 1
    assert (tmp_path / "m.pt").exists()


def test_resume_continues_from_the_saved_epoch(identity_dir, tmp_path):
    out = tmp_path / "m.pt"
    train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=2))
    assert resume_path_for(out).exists()
    result = train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=3), resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


def test_resume_takes_the_runtime_given_now_not_the_stored_one(identity_dir, tmp_path, monkeypatch):
    import siamsearch.training.data as ts
    real, asked = ts.decode_images, []

    def spy(paths, sizes, channels, workers, **options):
        asked.append(workers)
        return real(paths, sizes, channels, 0, **options)  # no process pool: only the request matters

    monkeypatch.setattr(ts, "decode_images", spy)
    out = tmp_path / "m.pt"
    train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=1), Runtime(device="cpu", workers=0))
    state = torch.load(resume_path_for(out), weights_only=True)
    assert not {"workers", "device", "amp", "cache_gb"} & set(state["train"])
    assert set(asked) == {0}
    asked.clear()
    train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=2), Runtime(device="cpu", workers=3), resume=True)
    assert set(asked) == {3}


def test_a_resumed_run_that_does_not_improve_reports_the_saved_fingerprint(identity_dir, tmp_path):
    out = tmp_path / "m.pt"
    first = train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=1))
    again = train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=1), resume=True)  # no epoch left
    assert again.fingerprint == first.fingerprint == load_checkpoint(out).fingerprint


def train_interrupted(identity_dir, out, cfg, monkeypatch, batch=6):
    """Train until Ctrl-C arrives at the `batch`-th batch (the 6th is in the second epoch), then resume to the end."""
    import siamsearch.training.data as tr
    real, calls = tr.augment_batch, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == batch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tr, "augment_batch", flaky)
    result = train(identity_dir, out, ENC, cfg)
    assert result.stopped == "interrupted" and len(result.history) == 1
    monkeypatch.setattr(tr, "augment_batch", real)
    return train(identity_dir, out, ENC, cfg, resume=True)


def test_interrupt_saves_state_that_resume_continues(identity_dir, tmp_path, monkeypatch):
    resumed = train_interrupted(identity_dir, tmp_path / "m.pt", dataclasses.replace(CFG, epochs=3), monkeypatch)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]


def test_an_interrupted_unfreeze_epoch_resumes_with_its_optimizer_groups(identity_dir, tmp_path, monkeypatch):
    cfg = dataclasses.replace(CFG, epochs=2, freeze_backbone=True, unfreeze=((2, ("layer4",)),))
    resumed = train_interrupted(identity_dir, tmp_path / "m.pt", cfg, monkeypatch)
    assert [r["epoch"] for r in resumed.history] == [1, 2]


@pytest.mark.parametrize("change,match", [
    ({"freeze_backbone": True, "unfreeze": ((2, ("stem",)),)}, "unknown block"),  # the small net has no stem
    ({"freeze_backbone": True, "unfreeze": ((2, ("layer4",)), (3, ("layer3", "layer4")))}, "more than once"),
    ({"unfreeze": ((2, ("layer4",)),)}, "--freeze-backbone"),
])
def test_a_bad_unfreeze_plan_is_refused_before_training(identity_dir, tmp_path, change, match):
    with pytest.raises(UsageError, match=match):
        train(identity_dir, tmp_path / "m.pt", ENC, dataclasses.replace(CFG, epochs=3, **change))
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.filterwarnings("ignore:.*meta parameter")  # the weights loaded into meta tensors are dropped
def test_resume_puts_the_optimizer_state_on_its_parameters_device(identity_dir, tmp_path, monkeypatch):
    import siamsearch.training.loop as tr
    out, cfg = tmp_path / "m.pt", dataclasses.replace(CFG, epochs=1)
    train(identity_dir, out, ENC, cfg)
    seen = {}

    def spy(run, *args):
        seen["optimized"] = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
        seen["model"] = {id(p) for p in run.model.parameters() if p.requires_grad}
        seen["devices"] = [(p.device, v.device) for p, state in run.optimizer.state.items() for k, v in state.items()
                           if torch.is_tensor(v) and k != "step"]  # Adam keeps its step count on the CPU by design
        return None, "epochs", {}

    monkeypatch.setattr(tr, "resolve_device", lambda _: torch.device("meta"))  # a device other than the CPU
    monkeypatch.setattr(tr, "_loop", spy)
    train(identity_dir, out, ENC, cfg, resume=True)
    assert seen["optimized"] == seen["model"]  # the parameters on the device, not copies left behind
    assert seen["devices"] and all(p == v == torch.device("meta") for p, v in seen["devices"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resume_on_cuda_takes_optimizer_steps(identity_dir, tmp_path):
    out, cuda = tmp_path / "m.pt", Runtime(device="cuda")
    train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=1), cuda)
    resumed = train(identity_dir, out, ENC, dataclasses.replace(CFG, epochs=2), cuda, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2] and math.isfinite(resumed.history[-1]["loss"])


def test_an_existing_model_is_replaced_only_with_force(identity_dir, tmp_path):
    out, cfg = tmp_path / "m.pt", dataclasses.replace(CFG, epochs=1)
    out.write_bytes(b"a model indexes rely on")
    with pytest.raises(RefusedError, match="--force"):
        train(identity_dir, out, ENC, cfg)
    assert out.read_bytes() == b"a model indexes rely on"
    train(identity_dir, out, ENC, cfg, force=True)
    assert load_checkpoint(out).history


@pytest.mark.parametrize("where,match", [("folder", "is a folder"), ("file/m.pt", "not a writable folder")])
def test_an_unwritable_out_is_refused_before_training(identity_dir, tmp_path, where, match):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match=match):
        train(identity_dir, tmp_path / where, ENC, dataclasses.replace(CFG, epochs=1))
    assert not resume_path_for(tmp_path / where).exists()


def test_cli_train_refuses_an_existing_out_without_force(identity_dir, tmp_path):
    out = tmp_path / "m.pt"
    out.write_bytes(b"old")
    args = ["train", str(identity_dir), "--out", str(out), "--image-size", "32", "--epochs", "1", "-P", "8", "-K", "3",
            "--dim", "8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 3 and "--force" in res.output and len(res.output.strip().splitlines()) == 1
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0 and load_checkpoint(out).history


def test_pretrained_is_refused_for_the_small_backbone(identity_dir, tmp_path):
    with pytest.raises(UsageError, match="--pretrained"):
        train(identity_dir, tmp_path / "m.pt", dataclasses.replace(ENC, pretrained=True), CFG)


def test_resume_of_a_pretrained_run_does_not_download(identity_dir, tmp_path, monkeypatch):
    import torchvision
    import torchvision.models._api as api
    imagenet = torchvision.models.resnet18().state_dict()  # stands in for the download
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: imagenet)
    out, enc, cfg = tmp_path / "m.pt", EncoderConfig(backbone="resnet18", dim=8, image_size=32, pretrained=True), \
        dataclasses.replace(CFG, epochs=1)
    train(identity_dir, out, enc, cfg)

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    resumed = train(identity_dir, out, enc, cfg, resume=True)
    assert len(resumed.history) == 1 and load_checkpoint(out).encoder.pretrained


def test_self_supervised_on_a_flat_folder(tmp_path, identity_dir):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(identity_dir.rglob("*.png"))[:40]:
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    cfg = dataclasses.replace(CFG, epochs=2, augment=AUGMENT_PRESETS["photo-edits"])
    result = train(flat, tmp_path / "ss.pt", ENC, cfg)
    assert result.best["roc_auc"] > 0.5 and not math.isnan(result.best["p_at_1"])
    assert load_data(flat, ENC, cfg).self_supervised


def test_cli_train_prints_epochs_and_writes_a_model(identity_dir, tmp_path):
    out = tmp_path / "cli.pt"
    res = CliRunner().invoke(app, ["train", str(identity_dir), "--out", str(out), "--image-size", "32",
                                   "--epochs", "2", "-P", "8", "-K", "3", "--augment", "none", "--dim", "16",
                                   "--standardize"])
    assert res.exit_code == 0, res.output
    assert "epoch 2" in res.output and "parameters train" in res.output and out.exists()
    model, ckpt = load_encoder(out)
    assert ckpt.encoder.dim == 16 and ckpt.encoder.standardize
    assert ckpt.train.augment == AUGMENT_PRESETS["none"] and ckpt.train.hinge is None


def test_cli_train_takes_the_old_margin_flag_as_the_hinge(identity_dir, tmp_path):
    common = ["train", str(identity_dir), "--image-size", "32", "--epochs", "1", "-P", "8", "-K", "3", "--dim", "8"]
    for flag, value in (("--margin", "0.7"), ("--hinge", "0.6")):
        out = tmp_path / f"{flag[2:]}.pt"
        res = CliRunner().invoke(app, [*common, "--out", str(out), "--loss", "triplet", flag, value])
        assert res.exit_code == 0, res.output
        assert load_checkpoint(out).train.hinge == float(value)
    assert "--margin" not in CliRunner().invoke(app, ["train", "--help"]).output


@pytest.mark.parametrize("args,match", [
    (["--backbone", "vgg"], "unknown backbone"),
    (["--unfreeze", "x"], "EPOCH:NAME"),
    (["--augment", "wild"], "augment must be one of"),
])
def test_cli_train_rejects_bad_options_in_one_line(identity_dir, tmp_path, args, match):
    res = CliRunner().invoke(app, ["train", str(identity_dir), "--out", str(tmp_path / "m.pt"), *args])
    assert res.exit_code == 2 and match in res.output


def test_cli_train_missing_folder(tmp_path):
    res = CliRunner().invoke(app, ["train", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such folder" in res.output


class Messages(Quiet):
    """An observer that keeps the lines training reports."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_two_identities_train_on_everything_with_a_warning(tmp_path):
    two = make_identities(tmp_path / "two", n_ids=2, per_id=4)
    obs = Messages()
    result = train(two, tmp_path / "m.pt", ENC, dataclasses.replace(CFG, epochs=2), observer=obs)
    assert any("nothing held out" in line and "last epoch" in line for line in obs.lines)
    assert result.best["epoch"] == 2 and (tmp_path / "m.pt").exists()


def _recipe_of(monkeypatch, args, folder):
    """The (encoder, training) configs `siamsearch train FOLDER ARGS` hands the library, without training."""
    seen = {}

    def spy(root, out, enc, cfg, runtime, **kwargs):
        seen.update(enc=enc, cfg=cfg, runtime=runtime)
        raise UsageError("stop")

    monkeypatch.setattr(commands, "train", spy)
    res = CliRunner().invoke(app, ["train", str(folder), *args])
    assert "stop" in res.output, res.output
    return seen["enc"], seen["cfg"], seen["runtime"]


def test_self_supervised_takes_the_copies_recipe_and_a_flag_overrides_one_field(monkeypatch, identity_dir):
    copies = RECIPES["copies"]
    assert _recipe_of(monkeypatch, ["--self-supervised"], identity_dir)[:2] == (copies.encoder, copies.train)
    enc, cfg, runtime = _recipe_of(monkeypatch, ["--self-supervised", "--koleo", "0", "--image-size", "128"],
                                   identity_dir)
    assert enc == dataclasses.replace(copies.encoder, image_size=128)
    assert cfg == dataclasses.replace(copies.train, koleo=0.0)
    assert runtime.amp is None  # mixed precision: the device decides (off on a CPU)
    identities = RECIPES["identities"]
    assert _recipe_of(monkeypatch, ["--recipe", "identities"], identity_dir)[:2] == (identities.encoder,
                                                                                    identities.train)


def test_a_model_file_from_before_pooling_and_heads_loads(tmp_path):
    model = build_encoder(EncoderConfig(backbone="small", dim=8, image_size=24)).eval()
    save_model(tmp_path / "old.pt", model)
    data = torch.load(tmp_path / "old.pt", weights_only=True)
    for key in ("pooling", "gem_p", "head"):
        del data["encoder"][key]
    torch.save(data, tmp_path / "old.pt")
    loaded, ckpt = load_encoder(tmp_path / "old.pt")
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and ckpt.encoder.pooling == "avg" and ckpt.encoder.head == "mlp"


def test_backbone_lr_puts_the_trunk_in_its_own_group():
    import siamsearch.training.loop as tr

    model = build_encoder(ENC)
    groups = tr._param_groups(model, dataclasses.replace(CFG, lr=1e-3, backbone_lr=1e-4))
    trunk = {id(p) for p in model.backbone.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    assert {id(p) for p in groups[1]["params"]} == trunk and not trunk & {id(p) for p in groups[0]["params"]}
    assert len(tr._param_groups(model, CFG)) == 1


def test_rotations_add_each_turn_of_a_training_identity_as_a_new_identity(identity_dir):
    plain = load_data(identity_dir, ENC, CFG).train
    data = load_data(identity_dir, ENC, dataclasses.replace(CFG, rotations=4))
    train, n = data.train, len(plain.labels)
    assert len(train.labels) == 4 * n and len(set(train.labels.tolist())) == 4 * len(set(plain.labels.tolist()))
    assert torch.equal(train.views[0][n:2 * n], torch.rot90(plain.views[0], 1, dims=(2, 3)))
    assert len(data.val.labels) == len(load_data(identity_dir, ENC, CFG).val.labels)  # validation stays upright
    half = load_data(identity_dir, ENC, dataclasses.replace(CFG, rotations=2)).train
    assert torch.equal(half.views[0][n:], torch.rot90(plain.views[0], 2, dims=(2, 3)))
    with pytest.raises(UsageError, match="rotations must be"):
        TrainConfig(rotations=3)


def test_the_kept_epoch_is_the_latest_within_one_standard_error_of_the_best():
    history = [{"epoch": e, "one_shot": s, "p_at_1": 0.5} for e, s in enumerate([0.80, 0.94, 0.935, 0.93, 0.90], 1)]
    assert kept_epoch(history, episodes=2000)["epoch"] == 3  # SE 0.0053 at 0.94: 0.935 is a tie, 0.93 is not
    assert kept_epoch(history, episodes=100_000)["epoch"] == 2  # enough episodes: every difference is real
    assert kept_epoch(history, episodes=2000, self_supervised=True)["epoch"] == 5  # copies' validation ranks nothing
    assert kept_epoch([{"epoch": 1}, {"epoch": 2}], episodes=2000)["epoch"] == 2 and kept_epoch([], 2000) is None
