"""Class centres sharded across DDP ranks (InsightFace's model-parallel Partial FC).

With world size W, rank r holds rows [r·C//W, (r+1)·C//W) of the C × d class-centre matrix — the
parameter, its gradient and its optimizer state — and nothing more, so a million identities cost
each rank 1/W of the memory. Each step the ranks all-gather the global batch's embeddings and
labels (`gather_batch`; the embeddings' gradient flows back to each rank's own rows), every rank
computes the logits against its own centres, and the softmax cross-entropy is taken across the
shards by all-reducing the row maxima and the sums of exponentials (`sharded_cross_entropy`), so
the loss and the gradients equal those of one process holding every centre (tested).

What the engine does for it: DDP leaves the shards alone (`ignore_sharded`: each rank's centres
are its own, not replicas to average), gradient clipping sums the squared norms of all shards
(`clip_grad_norm`), and a checkpoint always holds the whole matrix and its optimizer state
(`gather_states` on every rank before rank 0 saves; `slice_states` on load), so a run saved with
W ranks resumes with any other number of ranks, one included.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of the classes rank `rank` owns: a balanced split (sizes differ by ≤ 1)."""
    return rank * num_classes // world_size, (rank + 1) * num_classes // world_size


class ShardedCentres(nn.Module):
    """This rank's rows of the class-centre matrix (a `NormalisedClassifier` cut in W pieces).

    `load_state_dict` takes the whole matrix (what checkpoints hold) and keeps its own rows;
    `state_dict` is the shard (see `gather_states` for the whole)."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        rank: int,
        world_size: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.rank, self.world_size = num_classes, rank, world_size
        self.start, self.stop = shard_range(num_classes, rank, world_size)
        self.weight = nn.Parameter(torch.empty(self.stop - self.start, dim))
        with torch.no_grad():  # NormalisedClassifier's initialisation, drawn per shard
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator) * 0.01)

    def forward(self, x: Tensor) -> Tensor:
        """Cosines of `x` to this rank's centres only."""
        w = F.normalize(self.weight.float(), dim=1)
        return F.normalize(x.float(), dim=1) @ w.T

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        key = prefix + "weight"
        full = state_dict.get(key)
        if full is not None and full.shape[0] == self.num_classes != self.weight.shape[0]:
            state_dict = {**state_dict, key: full[self.start : self.stop]}
        super()._load_from_state_dict(state_dict, prefix, *args)

    def gather_rows(self, t: Tensor) -> Tensor | None:
        """Collective: the shards' `t` (rows aligned with the centres) stacked on rank 0 — the
        whole [C, …] tensor there, None elsewhere."""
        top = -(-self.num_classes // self.world_size)
        padded = t.new_zeros((top, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = (
            [torch.empty_like(padded) for _ in range(self.world_size)] if self.rank == 0 else None
        )
        dist.gather(padded, parts, dst=0)
        if parts is None:
            return None
        sizes = [b - a for a, b in (shard_range(self.num_classes, r, self.world_size)
                                    for r in range(self.world_size))]  # fmt: skip
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


# -- the global batch and the loss across shards -------------------------------------------------
class _GatherRows(torch.autograd.Function):
    """all_gather of every rank's rows (batch sizes may differ); backward sums the gradient over
    ranks and hands each its own rows, times W: DDP then averages the backbone's gradients over
    the W ranks, which makes them the gradient of the global-batch loss."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], rank: int) -> Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        return _all_gather(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        own = grad[start : start + ctx.sizes[ctx.rank]]
        return own * len(ctx.sizes), None, None


def _all_gather(x: Tensor, sizes: list[int]) -> Tensor:
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def gather_batch(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(embeddings, labels) of the global batch, in rank order, on every rank; the embeddings'
    gradient reaches each rank's own (see `_GatherRows` for its scale)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([embeddings.shape[0]], device=labels.device)
    sizes_t = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(sizes_t, n)
    sizes = [int(s) for s in sizes_t]
    return _GatherRows.apply(embeddings, sizes, rank), _all_gather(labels, sizes)


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy of logits split by columns over the ranks."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor) -> Tensor:
        n = logits.shape[0]
        top = logits.detach().max(1).values
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        p = torch.exp(logits.detach() - top[:, None])
        total = p.sum(1)
        dist.all_reduce(total)
        rows = (target >= 0).nonzero().squeeze(1)
        z = torch.zeros_like(top)
        z[rows] = logits.detach()[rows, target[rows]]
        dist.all_reduce(z)  # each target logit lives on exactly one rank
        p /= total[:, None]  # this rank's columns of the global softmax
        ctx.save_for_backward(p, rows, target[rows])
        ctx.n = n
        return (total.log() + top - z).mean()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        p, rows, cols = ctx.saved_tensors
        g = p.clone()
        g[rows, cols] -= 1.0
        return g * (grad / ctx.n), None


def sharded_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Softmax cross-entropy over the global batch whose class columns are split across ranks;
    `target` is the column of each row's class in this rank's `logits`, or -1 where another rank
    holds it. Every rank gets the same loss: that of the concatenated logits."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # exp and log in full precision, as F.cross_entropy under AMP
    return _ShardedCrossEntropy.apply(logits, target)


# -- what the engine does for sharded centres ------------------------------------------------------
def sharded_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for m in module.modules() if isinstance(m, ShardedCentres) for p in m.parameters()]


def ignore_sharded(module: nn.Module) -> None:
    """Before wrapping `module` in DDP: its sharded centres are per rank, not replicas (DDP would
    otherwise broadcast rank 0's and average gradients of different classes)."""
    names = [
        f"{name}.{pname}" if name else pname
        for name, m in module.named_modules()
        if isinstance(m, ShardedCentres)
        for pname, _ in m.named_parameters()
    ]
    if names:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            module, names
        )


def clip_grad_norm(module: nn.Module, max_norm: float) -> Tensor:
    """`clip_grad_norm_` over `module`'s parameters, whose norm counts every rank's shard (a
    per-rank norm would clip the replicated weights differently on each rank)."""
    sharded = sharded_parameters(module)
    if not sharded or not dist.is_initialized():
        return nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    ids = {id(p) for p in sharded}
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    own = [p.grad for p in sharded if p.grad is not None]
    rest = [p.grad for p in module.parameters() if p.grad is not None and id(p) not in ids]
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    sq = torch.zeros((), device=grads[0].device, dtype=dtype)
    for g in own:
        sq = sq + g.detach().to(dtype).pow(2).sum()
    dist.all_reduce(sq)
    for g in rest:
        sq = sq + g.detach().to(dtype).pow(2).sum()
    total = sq.sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.detach().mul_(coef.to(g.dtype))
    return total


def _param_id(optimizer: torch.optim.Optimizer, param: Tensor) -> int | None:
    """The key of `param` in `optimizer.state_dict()["state"]` (parameters numbered in order)."""
    i = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p is param:
                return i
            i += 1
    return None


def gather_states(classifier: nn.Module | None, optimizer: torch.optim.Optimizer) -> dict:
    """Collective, on every rank: {"classifier", "optimizer"} checkpoint entries holding the
    whole centre matrix and its whole optimizer state, on rank 0; {} elsewhere and when the
    centres are not sharded."""
    if not isinstance(classifier, ShardedCentres):
        return {}
    weight = classifier.weight
    full_weight = classifier.gather_rows(weight.detach())
    opt = optimizer.state_dict()
    key = _param_id(optimizer, weight)
    own = dict(opt["state"].get(key, {})) if key is not None else {}
    for name in sorted(own):  # same keys, same order on every rank
        value = own[name]
        if torch.is_tensor(value) and value.shape == weight.shape:
            own[name] = classifier.gather_rows(value)
    if classifier.rank != 0:
        return {}
    state = dict(opt["state"])
    if key is not None and own:
        state[key] = own
    return {"classifier": {"weight": full_weight}, "optimizer": {**opt, "state": state}}


def slice_states(
    state: dict, classifier: nn.Module | None, optimizer: torch.optim.Optimizer
) -> dict:
    """A checkpoint's whole-matrix classifier and optimizer entries cut to this rank's shard
    (unchanged when the centres are not sharded)."""
    if not isinstance(classifier, ShardedCentres) or "classifier" not in state:
        return state
    rows = slice(classifier.start, classifier.stop)

    def cut(v: Any) -> Any:
        full = torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == classifier.num_classes
        return v[rows] if full else v

    out = {**state, "classifier": {k: cut(v) for k, v in state["classifier"].items()}}
    key = _param_id(optimizer, classifier.weight)
    opt = state.get("optimizer")
    if opt is not None and key is not None and key in opt["state"]:
        own = {k: cut(v) for k, v in opt["state"][key].items()}
        out["optimizer"] = {**opt, "state": {**opt["state"], key: own}}
    return out
