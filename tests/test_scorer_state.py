"""A plugin scorer's fitted state kept as named tensors by the run and its export
(docs/plugins.md, scorers): numbers and lists are converted, other values named."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from metaemb.core.errors import PluginError
from metaemb.core.scoring.state import tensor_state


def test_numbers_and_lists_become_tensors_and_reach_the_export():
    """A scorer keeping w and b as floats, or its mean as a list, was used by evaluate and
    identify but dropped by export without a word: `"state": null`, no .scorer.npz (P20 F1)."""
    from metaemb.core.deploy.export import fitted_scorer_state

    state = {"w": 2.5, "b": -1, "mean": [0.1, 0.2], "proj": np.eye(2), "t": torch.ones(2)}
    got = tensor_state(state, "calibrated-cos")
    assert all(isinstance(v, torch.Tensor) for v in got.values())
    assert got["w"].item() == 2.5 and got["mean"].tolist() == [0.1, 0.2]
    run = {"scorer": state, "model": torch.nn.Linear(2, 2).state_dict()}
    arrays = np.load(io.BytesIO(fitted_scorer_state(run, "calibrated-cos")))
    assert {"w", "b", "mean", "proj", "t", "model_digest"} <= set(arrays.files)
    assert float(arrays["w"]) == 2.5


@pytest.mark.parametrize("value", ["cosine", {"a": torch.ones(1)}, [[1.0], [1.0, 2.0]]])
def test_a_value_no_tensor_can_hold_is_named_with_its_scorer_and_key(value):
    with pytest.raises(PluginError, match=r"scorer 'mine': state_dict\(\) entry 'k' is"):
        tensor_state({"k": value}, "mine")
    with pytest.raises(PluginError, match="not a dict of named tensors"):
        tensor_state([torch.ones(1)], "mine")


def test_a_value_not_fitted_yet_is_kept_and_left_out_of_the_export():
    """`{"whitener": None}` until fit was saved with runs before; refusing it broke their export
    and training at its first checkpoint (R10 F6): None is kept, and the export leaves it out."""
    from metaemb.core.deploy.export import fitted_scorer_state

    assert tensor_state({"whitener": None, "mean": [0.0]}, "mine")["whitener"] is None
    run = {"scorer": {"whitener": None, "mean": [0.5]}, "model": torch.nn.Linear(2, 2).state_dict()}
    arrays = np.load(io.BytesIO(fitted_scorer_state(run, "mine")))
    assert "whitener" not in arrays.files and float(arrays["mean"][0]) == 0.5
