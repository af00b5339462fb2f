"""The draws every data set shares: the fixed --train-subset draw."""

from __future__ import annotations

import torch

from rkrepro.data import sampling


def test_train_subset_is_fixed_and_seed_independent() -> None:
    a = sampling.subset_indices(1000, 100)
    b = sampling.subset_indices(1000, 100)
    assert a is not None and torch.equal(a, b) and len(set(a.tolist())) == 100
    assert sampling.subset_indices(1000, None) is None and sampling.subset_indices(10, 50) is None
