"""Several processes (torchrun, gloo on CPU) give what one process gives: batches, loss, gradients, steps, files.

Every torchrun runs in a network namespace with loopback alone, so no test traffic leaves the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import in_loopback_namespace, loopback_only, make_identities
from conftest import run_cli as run
from ddp_worker import EPOCHS, LOSSES, problem, step, tiny_model

from siamsearch.core.checkpoint import load_checkpoint
from siamsearch.training.distributed import World, shard
from siamsearch.core.errors import UsageError
from siamsearch.training.sampling import PKSampler

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 ARGS` on CPU, inside a network namespace with loopback alone."""
    reason = loopback_only()
    if reason:
        pytest.skip(f"torchrun tests keep to loopback in their own network namespace; {reason}")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env |= {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *map(str, args)]
    return subprocess.run(in_loopback_namespace(cmd), cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What two ranks gave (tests/ddp_worker.py)."""
    folder = tmp_path_factory.mktemp("ddp")
    done = torchrun(ROOT / "tests" / "ddp_worker.py", folder, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return torch.load(folder / "results.pt", weights_only=False)


def one_process(loss: str, idx: list[int]) -> tuple[float, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The oracle: the same step in this process on the whole global batch."""
    x, labels, _ = problem()
    model, opt = tiny_model()
    return step(World(), model, opt, x, labels, idx, loss) + (model.state_dict(),)


def global_batches() -> list[list[int]]:
    """The batches one process draws in EPOCHS."""
    sampler = problem()[2]
    out = []
    for epoch in EPOCHS:
        sampler.set_epoch(epoch)
        out.extend(list(sampler))
    return out


def test_each_rank_keeps_whole_identities_and_the_ranks_together_hold_the_global_batch(results):
    labels = problem()[1]
    ranks = results["shards"]
    for i, batch in enumerate(global_batches()):
        shares = [r[i] for r in ranks]
        assert sorted(shares[0] + shares[1]) == sorted(batch)
        ids = [set(labels[s].tolist()) & set(range(8)) for s in shares]
        assert len(ids[0]) == len(ids[1]) == 2 and not ids[0] & ids[1]  # P/2 identities each ...
        for share in shares:  # ... with all K of their images
            assert all((labels[share] == lab).sum() == 3 for lab in set(labels[share].tolist()) if lab < 8)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_loss_and_every_gradient_equal_one_process_on_the_full_batch(results, loss):
    value, grads, params = results[loss]
    ref_value, ref_grads, ref_params = one_process(loss, global_batches()[0])
    assert abs(value - ref_value) < 1e-10
    assert set(grads) == set(ref_grads)
    worst = max((grads[n] - ref_grads[n]).abs().max().item() for n in grads)
    print(f"{loss}: loss {value:.12f}, max |grad difference| {worst:.2e}, max |grad| "
          f"{max(g.abs().max().item() for g in ref_grads.values()):.2e}")
    assert worst < 1e-10
    assert all(torch.allclose(params[n], ref_params[n], rtol=0, atol=1e-10) for n in ref_params)


def test_a_step_saved_and_resumed_goes_on_as_one_process(results):
    x, labels, _ = problem()
    model, opt = tiny_model()
    first, second = global_batches()[:2]
    step(World(), model, opt, x, labels, first, "contrastive")
    value, _ = step(World(), model, opt, x, labels, second, "contrastive")
    got, _, params = results["resumed"]
    assert abs(got - value) < 1e-10
    assert max((params[n] - p).abs().max().item() for n, p in model.state_dict().items()) < 1e-10


def test_a_batch_splits_by_identity_and_singletons_as_evenly_as_they_go():
    batch = list(range(4 * 3)) + [100, 101, 102]
    assert shard(batch, 4, 3, 0, 2) == list(range(6)) + [100, 101]
    assert shard(batch, 4, 3, 1, 2) == list(range(6, 12)) + [102]


def test_identities_per_batch_must_split_over_the_processes():
    sampler = PKSampler(problem()[1], 3, 2)
    with pytest.raises(UsageError, match="3 identities per batch .* over 2 processes; choose -P a multiple of 2"):
        World(0, 2).shard(sampler)


@pytest.mark.slow
def test_torchrun_trains_through_the_cli_writes_one_model_and_resumes(tmp_path):
    folder = make_identities(tmp_path / "data", n_ids=8, per_id=4, size=16)
    out = tmp_path / "model.pt"
    done = torchrun("-m", "siamsearch", "train", folder, "--out", out, "--epochs", 2, "-P", 4, "-K", 2,
                    "--image-size", 16, "--dim", 8, "--device", "cpu", "--val-fraction", 0.25, cwd=tmp_path)
    print(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (done.stdout + done.stderr).count("wrote ") == 1
    res = run("index", folder, "--model", out, "--index", tmp_path / "index", "--workers", 0)
    assert res.exit_code == 0, res.output
    again = torchrun("-m", "siamsearch", "train", folder, "--out", out, "--epochs", 3, "--device", "cpu", "--resume",
                     cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (again.stdout + again.stderr).count("resuming at epoch 3") == 1
    assert [r["epoch"] for r in load_checkpoint(out).history] == [1, 2, 3]
