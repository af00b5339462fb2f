"""Per-period description of a spec, for the CLI's ``show``: pure arithmetic, no torch."""

from __future__ import annotations

from rkrepro.models import arch
from rkrepro.spec import ModelSpec


def describe_periods(spec: ModelSpec) -> list[dict[str, object]]:
    """One dict per period (or per dense block / ResNet stage of an original network).

    Keys: ``period`` (1-based), ``s`` and ``r`` (None and 1 or None for an original network),
    ``state_channels`` (the width the period keeps: m*k for RKNets from DenseNets, the block
    input width for original DenseNets, 16/32/64 for ResNets), ``units_per_step`` and ``unit``
    (growth layers per dense time-step, or period blocks / residual mappings per ResNet
    time-step), ``m`` (DenseNets only, else None) and ``shared``.
    Raises :class:`rkrepro.models.arch.SpecError` for specs that cannot be built.
    """
    arch.validate(spec)
    rows: list[dict[str, object]] = []
    if spec.family == "resnet":
        blocks = arch.resnet_period_blocks(spec.depth)
        periods = spec.periods or [(None, None)] * len(blocks)
        for p, ((s, r), width, b) in enumerate(
            zip(periods, arch.RESNET_WIDTHS, blocks, strict=True), start=1
        ):
            rows.append(
                {
                    "period": p,
                    "s": s,
                    "r": r,
                    "state_channels": width,
                    "units_per_step": b if s is None else s,
                    "unit": "blocks",
                    "m": None,
                    "shared": bool(spec.share and spec.periods),
                }
            )
        return rows

    k = arch.growth_rate(spec)
    if spec.periods is None:
        widths = (arch.STEM_M * k, *arch.densenet_transition_widths(spec))
        for p, (n, width) in enumerate(
            zip(arch.densenet_block_layers(spec), widths, strict=True), start=1
        ):
            rows.append(
                {
                    "period": p,
                    "s": None,
                    "r": 1,
                    "state_channels": width,
                    "units_per_step": n,
                    "unit": "growth layers",
                    "m": None,
                    "shared": False,
                }
            )
        return rows
    for p, ((s, r), mp) in enumerate(zip(spec.periods, arch.rknet_m(spec), strict=True), start=1):
        rows.append(
            {
                "period": p,
                "s": s,
                "r": r,
                "state_channels": mp * k,
                "units_per_step": s * mp,
                "unit": "growth layers",
                "m": mp,
                "shared": spec.share,
            }
        )
    return rows
