"""The limits on what a tables folder may hold, the bounded ``repr`` every error message uses,
and the model-size estimate a row is checked on before any model is built."""

from __future__ import annotations

from typing import Any

# Limits on what a tables folder may hold. A table file is data from wherever the folder came
# from, and ``list``/``params``/``plan``/``report`` read every file: each limit keeps a hostile
# or broken file to one error line in bounded time and memory. Each is far above every cell of
# the paper's tables (largest: 4.3 KB file, depth 292, growth rate 48, m 66, s 21, r 24,
# 170 growth layers, batch 256, 300 epochs), and each error states its limit.
MAX_TABLE_BYTES = 1 << 20  # 1 MiB
MAX_NESTING = 32  # nested mappings/lists
MAX_TEXT = 10_000  # characters of a title, caption, label or note
MAX_ID = 100  # characters of a table, row or claim id: ids name folders and files (job logs)
MAX_ROWS = 1_000  # rows of a table, variants of a row
LIMITS: dict[str, int] = {
    "depth": 2_000,
    "growth_rate": 256,
    "m": 512,  # each state width
    "batch_size": 65_536,
    "epochs": 100_000,
}
MAX_STAGES = 64  # s of one period
MAX_STEPS = 64  # r of one period
MAX_LAYERS = 2_000  # growth layers (DenseNet) or blocks (ResNet) of one model
MAX_PARAMS = 2_000_000_000  # the upper estimate of one model's parameters
MAX_CLAIMS = 64  # claims of one table


def short_repr(value: Any) -> str:
    """A bounded ``repr`` for error messages: a value from a file may be a megabyte string or
    an alias bomb whose full repr would not fit in memory."""
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxstring, shortener.maxother = 2, 60, 60
    shortener.maxlist = shortener.maxtuple = shortener.maxdict = shortener.maxset = 4
    shortener.maxlong = 40
    try:
        return shortener.repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print
        return f"<{type(value).__name__}>"


def estimate_model_size(
    family: str,
    depth: int,
    growth: int | None,
    m: tuple[int, ...] | None,
    periods: tuple[tuple[int, int], ...] | None,
    bottleneck: bool,
) -> tuple[int, int]:
    """(growth layers or residual blocks, an upper estimate of the parameters) of one model,
    without building it: what keeps a table's model from taking minutes to build on the meta
    device, or terabytes on a real one. The estimate treats a period as one dense block with no
    compression, so it is above the true count (DenseNet-BC-250 k=24: 15.3M, estimate 44M;
    the largest of the paper's tables: 75M, 170 layers)."""
    if family == "resnet":
        blocks = depth // 2 if periods is None else sum(s * r for s, r in periods) + 2
        return blocks, blocks * 2 * 9 * 64 * 64 + 64 * 100
    k = growth or 1
    per_layer_in, per_layer_fixed = 9 * k, 36 * k * k  # the larger of the two layer types

    def block(n: int, c0: int) -> int:  # n layers grown from c0 channels, k more each
        return per_layer_in * (n * c0 + k * n * (n - 1) // 2) + per_layer_fixed * n

    if periods is None or m is None:
        layers = depth // 2 if bottleneck else depth
        return layers, block(layers, 2 * k)
    layers = sum(s * r * mp for (s, r), mp in zip(periods, m, strict=False))
    params = sum(r * block(s * mp, mp * k) for (s, r), mp in zip(periods, m, strict=False))
    return layers, params
