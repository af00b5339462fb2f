"""The model zoo: DenseNets, CIFAR ResNets and their RKNet variants, built from a ModelSpec.

Torch is imported lazily, so torch-free parts (:mod:`.arch`, :mod:`.summary`) stay cheap to
import from the CLI.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rkrepro.models.build import build_model
    from rkrepro.models.counting import (
        count_flops,
        count_params,
        input_size_for,
        spec_param_counts,
    )
    from rkrepro.models.summary import describe_periods

__all__ = [
    "build_model",
    "count_flops",
    "count_params",
    "describe_periods",
    "input_size_for",
    "spec_param_counts",
]

_HOME = {
    "build_model": "build",
    "count_flops": "counting",
    "count_params": "counting",
    "input_size_for": "counting",
    "spec_param_counts": "counting",
    "describe_periods": "summary",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
