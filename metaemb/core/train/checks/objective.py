"""Checks of what an objective returns and keeps: a scalar loss with a gradient each step, no
trainable weights of its own, and no state carried from epoch to epoch outside the module its
`build_classifier` returns (only that module and the model are checkpointed)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from metaemb.core.config import Config
from metaemb.core.errors import ConfigError, first_few
from metaemb.core.train.checks.naming import component, describe_value


def check_loss(loss: Any, config: Config) -> None:
    """The objective must return one number per step, differentiable back to the weights."""
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ConfigError(
            f"{component(config, 'objective')} returned {describe_value(loss)} as its loss; an "
            "objective returns a scalar tensor (e.g. the batch mean)."
        )
    # a leaf that "requires grad" (no grad_fn) was made from a number, weights not involved
    if torch.is_grad_enabled() and (not loss.requires_grad or loss.grad_fn is None):
        raise ConfigError(
            f"{component(config, 'objective')} returned a loss that does not depend on the "
            "weights (no gradient: it was rebuilt from a number with torch.tensor(float(…)), "
            "detached, or computed under no_grad); return the tensor computed from the "
            "embeddings."
        )


def check_objective_parameters(objective: Any, classifier: Any, config: Config) -> None:
    """Weights an objective holds itself (class weights of a margin loss written as one module)
    are neither optimised nor saved: only the model's and `build_classifier`'s are."""
    if isinstance(objective, torch.nn.Module):
        named = list(objective.named_parameters())
    else:  # a plain object: parameters and modules among its attributes
        named = []
        for attr, value in vars(objective).items():
            if isinstance(value, torch.nn.Parameter):
                named.append((attr, value))
            elif isinstance(value, torch.nn.Module):
                named += [(f"{attr}.{n}", p) for n, p in value.named_parameters()]
    trained = {id(p) for p in classifier.parameters()} if classifier is not None else set()
    own = [n for n, p in named if p.requires_grad and id(p) not in trained]
    if own:
        raise ConfigError(
            f"{component(config, 'objective')} holds parameters of its own "
            f"({first_few(own, quote=False)}), which would be neither trained nor saved: "
            "create them in build_classifier(dim, num_classes) and use them through the "
            "classifier it is given."
        )


#: attributes the engine sets on every objective (or that hold only logged numbers)
_ENGINE_SET = frozenset({"epoch", "stats", "teacher_outputs"})


def objective_state(objective: Any, classifier: Any = None) -> dict[str, tuple[bool, Any]]:
    """What an objective keeps on itself between steps, copied: {attribute: (trainable leaf,
    value)} for tensors, modules' parameters and buffers, numbers and nested objectives.
    None of it is checkpointed (only the model's and `build_classifier`'s module are), so
    `ObjectiveWatch` compares these around the first training steps."""
    skip = set()
    if classifier is not None:
        skip = {id(t) for t in (*classifier.parameters(), *classifier.buffers())}
    out: dict[str, tuple[bool, Any]] = {}

    def visit(obj: Any, prefix: str, depth: int) -> None:
        items = dict(vars(obj))
        if isinstance(obj, torch.nn.Module):
            items = {k: v for k, v in items.items() if not k.startswith("_")}
            items.update(obj.state_dict(keep_vars=True))
        for attr, value in items.items():
            key = f"{prefix}{attr}"
            if attr in _ENGINE_SET or id(value) in skip:
                continue
            if isinstance(value, Tensor):
                out[key] = (value.requires_grad and value.is_leaf, _snapshot(value))
            elif isinstance(value, torch.nn.Module):
                visit(value, f"{key}.", depth + 1)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = (False, value)
            elif callable(getattr(value, "build_classifier", None)) and depth < 3:
                visit(value, f"{key}.", depth + 1)  # a composite's inner objective

    visit(objective, "", 0)
    return out


class ObjectiveWatch:
    """What an objective keeps on itself is not checkpointed: only the model and the module
    `build_classifier` returns are. Around the first two training steps a trainable tensor
    there (made in the first call, or with requires_grad instead of as a parameter) is
    refused: nothing trains or saves it. State those steps change is followed to the next
    epoch: what `set_epoch` resets (per-epoch tallies for `end_epoch`) is fine, what it
    carries over (a running statistic) would start over on resume, which is warned."""

    def __init__(self, objective: Any, classifier: Any, config: Config) -> None:
        self.objective, self.classifier, self.config = objective, classifier, config
        self.start = objective_state(objective, classifier)  # just after set_epoch
        self.before = self.start
        self.changed: set[str] = set()
        self.steps = 0
        self.done = False

    def before_step(self) -> None:
        """Copy the objective's state before one of the first two steps."""
        if self.steps < 2:
            self.before = objective_state(self.objective, self.classifier)

    def after_step(self) -> None:
        """Refuse trainable tensors on the objective; note what the step changed."""
        if self.steps >= 2:
            return
        after = objective_state(self.objective, self.classifier)
        trainable = [k for k, (grad, _) in after.items() if grad]
        if trainable:
            raise ConfigError(
                f"{component(self.config, 'objective')} holds trainable tensors of its own "
                f"({first_few(trainable, quote=False)}), which would be neither trained nor "
                "saved: create them as parameters of the module build_classifier(dim, "
                "num_classes) returns and use them through the classifier it is given."
            )
        both = self.before.keys() & after.keys()
        self.changed |= {k for k in both if not _same_value(self.before[k][1], after[k][1])}
        self.steps += 1

    def new_epoch(self) -> None:
        """Call after the next epoch's set_epoch: warn about state it did not reset."""
        if self.done:
            return
        self.done = True
        start, self.start, self.before = self.start, {}, {}  # the copies are not needed again
        now = objective_state(self.objective, self.classifier)
        # changed from the epoch's start and not reset since; state made in the first call
        # (a centre table created lazily) had no start: carried unless set_epoch zeroed it
        carried = sorted(
            k for k in self.changed
            if k in now and (not _same_value(now[k][1], start[k][1]) if k in start
                             else not _is_zero(now[k][1]))
        )  # fmt: skip
        if carried:
            warnings.warn(
                f"{component(self.config, 'objective')} carries {first_few(carried)} from "
                "epoch to epoch on itself, where no checkpoint saves it: a resumed run starts "
                "it over and differs from an uninterrupted one. Keep running statistics as "
                "buffers (register_buffer) of the module build_classifier returns, which is "
                "saved and restored (per-epoch tallies that set_epoch resets are fine).",
                stacklevel=2,
            )


def _snapshot(t: Tensor) -> Any:
    """A small tensor's copy on the CPU; for a large one (a memory bank of 100 k rows) a
    fingerprint, so watching the objective costs no copies of it on the training device."""
    t = t.detach()
    if t.numel() <= 1 << 16:
        return t.to("cpu", copy=True)
    flat = t.reshape(-1)
    step = max(1, flat.numel() // 4096)
    total = float(torch.nan_to_num(t.sum().abs().double()))  # any dtype, NaN-proof
    return (tuple(t.shape), str(t.dtype), total, flat[::step].to("cpu", copy=True))


def _is_zero(value: Any) -> bool:
    """A reset tally: a zero number, or a tensor (or fingerprint) of zeros."""
    if isinstance(value, tuple):  # a large tensor's fingerprint: its |sum| and a sample
        return value[2] == 0.0 and not bool(value[3].any())
    if isinstance(value, Tensor):
        return not bool(value.any())
    return value == 0


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):  # fingerprints of large tensors
        return a[:3] == b[:3] and torch.equal(a[3], b[3])
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    return type(a) is type(b) and a == b
