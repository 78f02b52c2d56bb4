"""What an augmentation's first batch is checked for: a result of the batch's shape, dtype,
lengths and labels (anything else fails later in the features or the objective without its
name), and randomness drawn from the global streams, which a resumed run replays.
"""

from __future__ import annotations

import copy
import random
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metaemb.core.errors import ConfigError


def check_output(
    name: str, out: Any, x: Tensor, lengths: Tensor | None, classes: int | None
) -> None:
    """An augmentation returns (x, lengths, labels) for the same batch: a tensor of the input's
    dtype and device and batch size, lengths that fit its last axis, labels below the class
    count. Anything else fails later in the features or the objective without its name."""
    if not (isinstance(out, tuple) and len(out) == 3):
        what = f"a {type(out).__name__}" + (f" of {len(out)}" if isinstance(out, tuple) else "")
        raise ConfigError(f"{name} returned {what}; an augmentation returns (x, lengths, labels).")
    if not isinstance(out[0], Tensor):
        raise ConfigError(
            f"{name} returned x as a {type(out[0]).__name__}; x is a torch tensor on the batch's "
            "device (augmentations run batched on the training device, not in numpy)."
        )
    y, ylen, ylab = out
    n = x.shape[0]
    problem = None
    if y.dtype != x.dtype or y.device != x.device:
        problem = f"x as {y.dtype} on {y.device} from {x.dtype} on {x.device}"
    elif y.shape[0] != n:
        problem = f"{y.shape[0]} samples from a batch of {n}"
    elif y.dim() != x.dim() or y.shape[1:-1] != x.shape[1:-1]:  # the next stage was built for them
        problem = (
            f"x of shape {list(y.shape)} from {list(x.shape)}; an augmentation keeps every axis "
            "but the last (time, which may change with its lengths)"
        )
    elif ylen is None and lengths is not None:  # new lengths where there were none are fine:
        problem = (  # dropping keys from crops of one length makes items of several lengths
            "lengths None where they were a tensor (the padding would be read as signal)"
        )
    elif ylen is not None and (not isinstance(ylen, Tensor) or ylen.dtype != torch.int64):
        what = f"as {ylen.dtype}" if isinstance(ylen, Tensor) else _shape(ylen)
        problem = f"lengths {what}; lengths are int64 [batch]"
    elif ylen is not None and n and int(ylen.min()) < 1:
        problem = f"a length of {int(ylen.min())}; every sample keeps at least one step"
    elif ylen is not None and (ylen.shape != (n,) or int(ylen.max()) > y.shape[-1]):
        problem = (
            f"lengths {ylen.tolist()[:4]}… for x of {y.shape[-1]} steps: lengths must be [batch] "
            "and fit the last axis (change them with the signal)"
        )
    elif not isinstance(ylab, Tensor) or ylab.shape != (n,):
        problem = f"labels {_shape(ylab)} for a batch of {n}"
    elif ylab.dtype != torch.int64:
        problem = f"labels as {ylab.dtype}; labels stay int64 [batch] (class indices)"
    elif classes is not None and n and (int(ylab.min()) < 0 or int(ylab.max()) >= classes):
        problem = (
            f"labels up to {int(ylab.max())} with {classes} classes (an augmentation that "
            "makes new identities says so in num_classes())"
        )
    if problem:
        raise ConfigError(
            f"{name} returned {problem}; see docs/plugins.md, 'register_augmentations'."
        )
    stretched = y.shape[-1] != x.shape[-1]
    if stretched and ylen is not None and lengths is not None and torch.equal(ylen, lengths):
        warnings.warn(  # padding alone may keep them; a stretch or a cut may not
            f"{name} changed the batch's steps ({x.shape[-1]} → {y.shape[-1]}) but returned "
            "the input's lengths unchanged: if it stretched or cut the signal, the lengths "
            "must change with it, or the network reads part of each sample as padding "
            "(or padding as signal).",
            stacklevel=2,
        )


def _shape(t: Any) -> str:
    return f"of shape {list(t.shape)}" if isinstance(t, Tensor) else f"as a {type(t).__name__}"


def warn_if_not_replayable(
    name: str, aug: Any, x: Tensor, lengths: Tensor | None, labels: Tensor
) -> None:
    """Run the augmentation twice from one random state and warn when the two batches differ:
    it draws from a stream of its own (a generator made once), which the per-epoch reseeding
    does not reach, so a run resumed after a kill trains on other batches. The global random
    state and the augmentation's own (its state_dict: a curriculum's counter) are left as they
    were."""
    cuda = [x.device.index or 0] if x.device.type == "cuda" else []
    py_state, np_state = random.getstate(), np.random.get_state()
    kept = copy.deepcopy(aug.state_dict()) if isinstance(aug, torch.nn.Module) else None
    outs = []
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch_state = torch.get_rng_state()
            cuda_state = torch.cuda.get_rng_state(cuda[0]) if cuda else None
            for _ in range(2):
                if kept is not None:  # state it keeps per call (a curriculum's counter)
                    aug.load_state_dict(kept)
                torch.set_rng_state(torch_state)
                if cuda:
                    torch.cuda.set_rng_state(cuda_state, cuda[0])
                random.setstate(py_state)
                np.random.set_state(np_state)
                lengths_copy = None if lengths is None else lengths.clone()
                outs.append(aug(x.clone(), lengths_copy, labels.clone()))
    except Exception:  # its first call already ran: a failure here is not this check's to name
        return
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        if kept is not None:  # the two trial calls leave no trace in it
            aug.load_state_dict(kept)
    if not all(_same(a, b) for a, b in zip(*outs, strict=True)):
        warnings.warn(
            f"{name} gave two different batches from the same random state and state_dict: it "
            "draws from a random stream of its own (a torch.Generator or numpy Generator made "
            "once), or keeps per-call state outside its buffers, which "
            "is not reseeded at each epoch, so a run resumed after a kill trains on other "
            "batches than an uninterrupted one. Draw from the global torch, numpy.random or "
            "random streams.",
            stacklevel=3,
        )


def _same(a: Any, b: Any) -> bool:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        return a is None and b is None
    if a.shape != b.shape:
        return False
    if a.is_floating_point():  # tolerant of non-deterministic device kernels
        return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-6, equal_nan=True))
    return bool(torch.equal(a, b))
