"""Partial FC with its class centres sharded over two gloo ranks (CPU) equals one process holding
all of them: loss, embedding / backbone / centre gradients, gradient clipping, an SGD step and
its momentum; below sample rate 1.0 each rank holds C/W centres and samples rate · C/W of them;
checkpoints hold the whole matrix (1 → 2 → 1 ranks)."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from metaemb.core.train import shard
from metaemb.core.train.objectives.margin import (
    ArcFaceObjective,
    CosFaceObjective,
    NormalisedClassifier,
)
from metaemb.core.train.objectives.partial_fc import PartialFCObjective

WORLD, SIZES, CLASSES, DIM, IN = 2, (7, 5), 11, 8, 6  # uneven batches and shards (5 + 6)
BIG, RATE = 1000, 0.1


class Step(nn.Module):
    """A linear 'backbone' and the class centres, as the engine's TrainStep holds them."""

    def __init__(self, lin: nn.Linear, centres: nn.Module, objective) -> None:
        super().__init__()
        self.lin, self.centres, self.objective = lin, centres, objective

    def forward(self, x, labels):
        self.emb = self.lin(x)
        self.emb.retain_grad()
        return self.objective(self.emb, labels, self.centres)


def data(seed: int = 0, classes: int = CLASSES):
    g = torch.Generator().manual_seed(seed)
    n = sum(SIZES)
    x = torch.randn(n, IN, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[:3] = torch.tensor([0, classes - 1, classes // 2])  # both shards and their edges
    weight = torch.randn(classes, DIM, generator=g, dtype=torch.float64)
    lin = nn.Linear(IN, DIM).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(DIM, IN, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(DIM, generator=g, dtype=torch.float64))
    return x, labels, weight, lin


def rows(rank: int) -> slice:
    return slice(sum(SIZES[:rank]), sum(SIZES[: rank + 1]))


def optimizer(lin: nn.Module, centres: nn.Module) -> torch.optim.SGD:
    groups = [{"params": list(lin.parameters())}, {"params": list(centres.parameters())}]
    return torch.optim.SGD(groups, lr=0.5, momentum=0.9, weight_decay=1e-3)


def sharded_step(rank: int, margin_type: str, rate: float, classes: int = CLASSES, ckpt=None):
    """One DDP forward/backward (and with `ckpt`, a clipped SGD step from it) on this rank."""
    x, labels, weight, lin = data(classes=classes)
    pfc = PartialFCObjective(sample_rate=rate, margin_type=margin_type, scale=30.0, margin=0.2)
    pfc.distribute(rank, WORLD)
    centres = pfc.build_classifier(DIM, classes).double()
    centres.load_state_dict({"weight": weight})  # the whole matrix in, this rank's rows kept
    opt = optimizer(lin, centres)
    if ckpt is not None:  # what the engine's restore does
        state = shard.slice_states(torch.load(ckpt), centres, opt)
        lin.load_state_dict(state["lin"])
        centres.load_state_dict(state["classifier"])
        opt.load_state_dict(state["optimizer"])
    step = Step(lin, centres, pfc)
    shard.ignore_sharded(step)
    ddp = nn.parallel.DistributedDataParallel(step)
    loss = ddp(x[rows(rank)], labels[rows(rank)])
    loss.backward()
    out = {
        "loss": loss.detach(),
        "emb_grad": step.emb.grad,
        "lin_grad": lin.weight.grad.clone(),
        "centre_grad": centres.weight.grad.clone(),
        "centres": centres.weight.shape[0],
        "stats": dict(pfc.stats),
    }
    if ckpt is not None:
        out["norm"] = shard.clip_grad_norm(ddp, 1.0)
        opt.step()
        whole = shard.gather_states(centres, opt)
        if rank == 0:
            torch.save({**whole, "lin": lin.state_dict()}, Path(ckpt).with_name("after.pt"))
    return out


def worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                           world_size=WORLD)  # fmt: skip
    import metaemb.core.train.objectives.partial_fc as mod

    real, seen = mod.sample_classes, []

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    mod.sample_classes = spy
    try:
        results = {m: sharded_step(rank, m, 1.0) for m in ("arcface", "cosface")}
        torch.manual_seed(rank)
        results["low"] = sharded_step(rank, "arcface", RATE, classes=BIG)
        start, _ = shard.shard_range(BIG, rank, WORLD)
        results["low"]["index"] = seen[-1][0] + start  # global ids of the sampled centres
        results["ckpt"] = sharded_step(rank, "arcface", 1.0, ckpt=str(Path(folder) / "before.pt"))
        torch.save(results, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def reference(margin: nn.Module, x, labels, weight, lin):
    """One process, every centre: loss and the gradients the sharded run must reproduce."""
    centres = NormalisedClassifier(DIM, weight.shape[0]).double()
    with torch.no_grad():
        centres.weight.copy_(weight)
    step = Step(lin, centres, margin)
    loss = step(x, labels)
    loss.backward()
    return loss.detach(), step.emb.grad, lin.weight.grad, centres.weight.grad, step, centres


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[list[dict], Path]:
    folder = tmp_path_factory.mktemp("pfc")
    x, labels, weight, lin = data()
    centres = NormalisedClassifier(DIM, CLASSES).double()
    with torch.no_grad():
        centres.weight.copy_(weight)
    opt = optimizer(lin, centres)  # a checkpoint with momentum, as one process writes it
    loss = ArcFaceObjective(30.0, 0.2)(lin(x), labels, centres)
    loss.backward()
    opt.step()
    torch.save({"classifier": centres.state_dict(), "optimizer": opt.state_dict(),
                "lin": lin.state_dict()}, folder / "before.pt")  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the ranks inherit the imports (spawn re-imports torch and torch._dynamo, ~10 s)
    mp.start_processes(worker, args=(port, str(folder)), nprocs=WORLD, start_method="fork")
    return [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)], folder


@pytest.mark.parametrize(
    ("margin_type", "margin"),
    [("arcface", ArcFaceObjective(30.0, 0.2)), ("cosface", CosFaceObjective(30.0, 0.2))],
)
def test_rate_one_sharded_equals_one_process_full_softmax(ranks, margin_type, margin):
    results, _ = ranks
    x, labels, weight, lin = data()
    loss, emb_grad, lin_grad, centre_grad, _, _ = reference(margin, x, labels, weight, lin)
    for rank, res in enumerate(results):
        r = res[margin_type]
        start, stop = shard.shard_range(CLASSES, rank, WORLD)
        assert r["centres"] == stop - start  # this rank holds only its shard
        torch.testing.assert_close(r["loss"], loss, rtol=1e-10, atol=1e-10)
        # each rank's embeddings get W × their gradient, which DDP's average over ranks cancels:
        torch.testing.assert_close(
            r["emb_grad"], WORLD * emb_grad[rows(rank)], rtol=1e-9, atol=1e-10
        )
        torch.testing.assert_close(r["lin_grad"], lin_grad, rtol=1e-9, atol=1e-10)  # after DDP
        torch.testing.assert_close(r["centre_grad"], centre_grad[start:stop], rtol=1e-9, atol=1e-10)
        assert r["stats"]["loss"] == pytest.approx(float(loss), rel=1e-12)
        assert r["stats"]["sampled_classes"] == stop - start


def test_low_rate_each_rank_samples_its_shard_and_equals_the_sampled_softmax(ranks):
    results, _ = ranks
    local = BIG // WORLD
    for r in results:
        assert r["low"]["centres"] == local  # the centre memory of a rank: C / W rows
        assert r["low"]["stats"]["sampled_classes"] == math.ceil(RATE * local)
    index = torch.cat([r["low"]["index"] for r in results])
    assert index.numel() == 2 * math.ceil(RATE * local) and index.unique().numel() == index.numel()
    x, labels, weight, lin = data(classes=BIG)
    assert set(labels.tolist()) <= set(index.tolist())  # every batch class is sampled
    # one process, a classifier of exactly the union of the sampled centres
    small = torch.searchsorted(index, labels)
    loss, _, lin_grad, centre_grad, _, _ = reference(
        ArcFaceObjective(30.0, 0.2), x, small, weight[index], lin
    )
    for rank, r in enumerate(results):
        torch.testing.assert_close(r["low"]["loss"], loss, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(r["low"]["lin_grad"], lin_grad, rtol=1e-9, atol=1e-10)
        start, stop = shard.shard_range(BIG, rank, WORLD)
        mine = (index >= start) & (index < stop)
        got = r["low"]["centre_grad"]
        torch.testing.assert_close(
            got[index[mine] - start], centre_grad[mine], rtol=1e-9, atol=1e-10
        )
        untouched = torch.ones(local, dtype=torch.bool)
        untouched[index[mine] - start] = False
        assert torch.count_nonzero(got[untouched]) == 0


def test_checkpoint_one_to_two_to_one_rank_and_the_sgd_step_match(ranks):
    """A one-process checkpoint resumed on two ranks (each loads its rows and momentum), one
    clipped SGD step, saved whole; it loads into one process and equals that process's step."""
    results, folder = ranks
    before = torch.load(folder / "before.pt")
    x, labels, _, lin = data()
    lin.load_state_dict(before["lin"])
    centres = NormalisedClassifier(DIM, CLASSES).double()
    centres.load_state_dict(before["classifier"])
    opt = optimizer(lin, centres)
    opt.load_state_dict(before["optimizer"])
    loss = ArcFaceObjective(30.0, 0.2)(lin(x), labels, centres)
    loss.backward()
    norm = nn.utils.clip_grad_norm_([*lin.parameters(), centres.weight], 1.0)
    assert norm > 1.0  # the clipping acts
    opt.step()
    for r in results:
        torch.testing.assert_close(r["ckpt"]["norm"], norm, rtol=1e-9, atol=1e-10)

    after = torch.load(folder / "after.pt")
    assert after["classifier"]["weight"].shape == (CLASSES, DIM)  # whole, not rank 0's shard
    one = NormalisedClassifier(DIM, CLASSES).double()
    one.load_state_dict(after["classifier"])  # a two-rank checkpoint in one process
    one_opt = optimizer(nn.Linear(IN, DIM).double(), one)
    one_opt.load_state_dict(after["optimizer"])
    torch.testing.assert_close(one.weight, centres.weight, rtol=1e-9, atol=1e-10)
    momentum = one_opt.state[one.weight]["momentum_buffer"]
    torch.testing.assert_close(momentum, opt.state[centres.weight]["momentum_buffer"])
    lin_after = nn.Linear(IN, DIM).double()
    lin_after.load_state_dict(after["lin"])
    torch.testing.assert_close(lin_after.weight, lin.weight, rtol=1e-9, atol=1e-10)


def test_fewer_classes_than_ranks_refused_and_one_rank_unsharded():
    from metaemb.core.errors import ConfigError

    pfc = PartialFCObjective()
    assert isinstance(pfc.build_classifier(4, 3), NormalisedClassifier)
    pfc.distribute(0, 1)
    assert isinstance(pfc.build_classifier(4, 3), NormalisedClassifier)
    pfc.distribute(1, 4)
    with pytest.raises(ConfigError, match="sharded over 4 ranks"):
        pfc.build_classifier(4, 3)
    centres = pfc.build_classifier(4, 10)
    assert isinstance(centres, shard.ShardedCentres) and (centres.start, centres.stop) == (2, 5)
    full = torch.randn(10, 4)
    centres.load_state_dict({"weight": full})
    torch.testing.assert_close(centres.weight.detach(), full[2:5])


@pytest.mark.slow
def test_torchrun_two_ranks_then_resume_on_one(tmp_path: Path) -> None:
    """The engine end to end: `metaemb train` with partial-fc on two torchrun ranks writes the
    whole centre matrix; a copy of its epoch-1 snapshot resumes in one process."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from metaemb.core.plugin.components import build

    data = tmp_path / "faces"
    build("demo_data", "face", {"identities": 8, "images_per_identity": 6, "image_size": 32},
          out=data)  # fmt: skip
    args = [
        "-m", "metaemb.cli", "train", "--modality", "face", "--data", str(data),
        "--runs", str(tmp_path / "runs"), "--workers", "0", "--set", "train.epochs=2",
        "--set", "train.batch_size=16", "--set", "model.dim=32",
        "--set", "train.objective=partial-fc", "--set", "objective.sample_rate=0.5",
        "--set", "train.snapshot_every=1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args]
    res = subprocess.run(two, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    [run] = list((tmp_path / "runs" / "face").iterdir())
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["classifier"]["weight"].shape == (state["num_classes"], 32)  # whole, not a shard
    shutil.copy(run / "snapshot-epoch001.pt", run / "last.pt")  # as if stopped after epoch 1
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                         timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "from epoch 1/2" in res.stdout
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
