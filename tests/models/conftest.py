"""The model tests run on one thread: two intra-op threads on a busy 2-core machine run ~50x
slower than one (spin-waiting)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
