"""Parameters, forward FLOPs, activation traffic and saved activations of a model, computed from
its spec without building it (torch-free).

A plan of the whole paper needs these numbers for 80 cells; building each model, even on the
meta device, takes over a minute on a small machine. Here the network is walked op by op with
the shapes the builders use (:mod:`rkrepro.models.arch`), and each op adds what it costs:

- parameters as :func:`rkrepro.models.counting.count_params` counts them (the paper's count:
  convolution and fully connected weights and biases; the total adds BatchNorm's affine
  parameters and learned Runge-Kutta coefficients; a Parameter shared by the time-steps of a
  period counts once);
- forward FLOPs per image as ``torch.utils.flop_counter.FlopCounterMode`` counts them
  (convolutions and matrix products, a multiply-add is 2);
- the tensors autograd saves for backward (the peak-memory estimate of ``rkrepro plan``), split
  into activations (per image) and parameters (once per batch);
- per op, the activation elements it reads and writes per image in a training-mode forward pass
  (BatchNorm reads its input twice: statistics, then normalisation): the memory traffic of a
  roofline estimate.

The tests check parameters, FLOPs and saved bytes against the built models for every cell of
the shipped tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from rkrepro.models import arch
from rkrepro.spec import ModelSpec

FP32_BYTES = 4
INDEX_BYTES = 8  # max-pool indices are int64


@dataclass(frozen=True)
class Op:
    """One forward op, per image: its FLOPs, the activation elements it reads and writes, and
    the weight elements it reads (once per batch, whatever the batch size)."""

    kind: str  # conv, linear, bn, relu, cat, pool, add, mul, pad
    flops: int
    elements: int
    weights: int = 0


@dataclass(frozen=True)
class ModelCost:
    """What one model costs, counted from its spec."""

    params_paper: int
    params_total: int
    forward_flops: int  # per image
    saved_activation_bytes: int  # per image, fp32: what autograd keeps for backward
    saved_parameter_bytes: int  # once per batch: weights and BatchNorm vectors autograd keeps
    ops: tuple[Op, ...]

    @property
    def forward_elements(self) -> int:
        """Activation elements read and written per image by one training-mode forward pass."""
        return sum(op.elements for op in self.ops)


@dataclass(frozen=True)
class _T:
    """A tensor of the walk: an identity (what autograd would see as one object) and a shape."""

    id: int
    c: int
    h: int
    w: int

    @property
    def size(self) -> int:
        return self.c * self.h * self.w


class _Walk:
    """The forward pass of one image, op by op, with its running totals."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.paper = 0
        self.total = 0
        self.flops = 0
        self._next = 0
        self._params: set[object] = set()
        self._saved: dict[object, int] = {}  # identity -> bytes (activations per image)
        self._saved_params: dict[object, int] = {}

    def tensor(self, c: int, h: int, w: int) -> _T:
        self._next += 1
        return _T(self._next, c, h, w)

    def _param(self, key: object, count: int, paper: bool) -> None:
        """Count a Parameter once, however many ops use it (a shared one)."""
        if key not in self._params:
            self._params.add(key)
            self.total += count
            self.paper += count if paper else 0

    def parameter(self, key: object, count: int) -> None:
        """A Parameter outside the paper's count (learned Runge-Kutta coefficients)."""
        self._param(key, count, paper=False)

    def _save(self, t: _T, nbytes: int | None = None) -> None:
        self._saved[t.id] = t.size * FP32_BYTES if nbytes is None else nbytes

    def _save_param(self, key: object, count: int) -> None:
        self._saved_params[key] = count * FP32_BYTES

    def conv(self, x: _T, out: int, k: int, stride: int = 1, key: object = None) -> _T:
        pad = k // 2
        h, w = (x.h + 2 * pad - k) // stride + 1, (x.w + 2 * pad - k) // stride + 1
        y = self.tensor(out, h, w)
        weights = out * x.c * k * k
        key = key if key is not None else ("conv", y.id)
        self._param(key, weights, paper=True)
        flops = 2 * weights * h * w
        self.flops += flops
        self._save(x)
        self._save_param(key, weights)
        self.ops.append(Op("conv", flops, x.size + y.size, weights))
        return y

    def bn(self, x: _T) -> _T:
        y = self.tensor(x.c, x.h, x.w)
        self._param(("bn", y.id), 2 * x.c, paper=False)
        self._save(x)
        self._save_param(("bn", y.id), 5 * x.c)  # weight, running mean/var, saved mean/invstd
        self.ops.append(Op("bn", 0, 2 * x.size + y.size))
        return y

    def relu_(self, x: _T) -> _T:
        """In place: the result is the same tensor, saved once however many ops keep it."""
        self._save(x)
        self.ops.append(Op("relu", 0, 2 * x.size))
        return x

    def bn_relu(self, x: _T) -> _T:
        return self.relu_(self.bn(x))

    def cat(self, xs: list[_T], copy: bool = False) -> _T:
        """``torch.cat`` (``copy``), or a growth layer's input: one tensor is passed as is."""
        if len(xs) == 1 and not copy:
            return xs[0]
        y = self.tensor(sum(x.c for x in xs), xs[0].h, xs[0].w)
        self.ops.append(Op("cat", 0, 2 * y.size))
        return y

    def avg_pool2(self, x: _T) -> _T:
        y = self.tensor(x.c, x.h // 2, x.w // 2)
        self._save(x)
        self.ops.append(Op("pool", 0, x.size + y.size))
        return y

    def max_pool(self, x: _T) -> _T:
        """3x3, stride 2, padding 1 (the ImageNet stem)."""
        y = self.tensor(x.c, (x.h - 1) // 2 + 1, (x.w - 1) // 2 + 1)
        self._save(x)
        self._saved[("indices", y.id)] = y.size * INDEX_BYTES
        self.ops.append(Op("pool", 0, x.size + y.size))
        return y

    def add(self, a: _T, b: _T) -> _T:
        y = self.tensor(a.c, a.h, a.w)
        self.ops.append(Op("add", 0, a.size + b.size + y.size))
        return y

    def sum_groups(self, x: _T, groups: int) -> _T:
        """(N, g*C, H, W) -> (N, C, H, W): the sum over the stage groups of a dense RK step."""
        y = self.tensor(x.c // groups, x.h, x.w)
        self.ops.append(Op("add", 0, x.size + y.size))
        return y

    def scale(self, x: _T) -> _T:
        """A learned scalar times a tensor: both are saved (the scalar as a fresh view)."""
        y = self.tensor(x.c, x.h, x.w)
        self._save(x)
        self._saved[("scalar", y.id)] = FP32_BYTES
        self.ops.append(Op("mul", 0, x.size + y.size))
        return y

    def shortcut_a(self, x: _T, out: int, stride: int) -> _T:
        """Identity subsampled by ``stride`` and zero-padded to ``out`` channels (a new tensor
        when it changes anything; nothing saved)."""
        if stride == 1 and out == x.c:
            return x
        h, w = (x.h - 1) // stride + 1, (x.w - 1) // stride + 1
        y = self.tensor(out, h, w)
        self.ops.append(Op("pad", 0, x.c * h * w + y.size))
        return y

    def head(self, x: _T, classes: int, pre_activation: bool) -> None:
        if pre_activation:
            x = self.bn_relu(x)
        pooled = self.tensor(x.c, 1, 1)  # adaptive average pool saves nothing
        self.ops.append(Op("pool", 0, x.size + pooled.size))
        weights = x.c * classes
        self._param(("fc", pooled.id), weights + classes, paper=True)
        flops = 2 * weights
        self.flops += flops
        self._save(pooled)
        self._save_param(("fc", pooled.id), weights)  # the transposed weight
        self.ops.append(Op("linear", flops, x.c + classes, weights))

    def result(self) -> ModelCost:
        return ModelCost(
            params_paper=self.paper,
            params_total=self.total,
            forward_flops=self.flops,
            saved_activation_bytes=sum(self._saved.values()),
            saved_parameter_bytes=sum(self._saved_params.values()),
            ops=tuple(self.ops),
        )


# ------------------------------------------------------------------------------ DenseNets


def _dense_stem(walk: _Walk, channels: int, imagenet: bool) -> _T:
    if imagenet:
        x = walk.conv(walk.tensor(3, 224, 224), channels, 7, stride=2)
        return walk.max_pool(walk.bn_relu(x))
    return walk.conv(walk.tensor(3, 32, 32), channels, 3)


def _growth_layer(walk: _Walk, inputs: list[_T], k: int, bottleneck: bool, key: object) -> _T:
    """cat - BN - ReLU - conv (- BN - ReLU - conv3x3 with a bottleneck)."""
    x = walk.bn_relu(walk.cat(inputs))
    if not bottleneck:
        return walk.conv(x, k, 3, key=(key, 1))
    x = walk.conv(x, arch.BN_SIZE * k, 1, key=(key, 1))
    return walk.conv(walk.bn_relu(x), k, 3, key=(key, 2))


def _grow(walk: _Walk, x: _T, layers: int, k: int, bottleneck: bool, key: object) -> list[_T]:
    features = [x]
    for j in range(layers):
        features.append(_growth_layer(walk, features, k, bottleneck, (key, j)))
    return features


def _transition(walk: _Walk, x: _T, out: int) -> _T:
    return walk.avg_pool2(walk.conv(walk.bn_relu(x), out, 1))


def _densenet(walk: _Walk, spec: ModelSpec) -> None:
    k = arch.growth_rate(spec)
    blocks = arch.densenet_block_layers(spec)
    x = _dense_stem(walk, arch.STEM_M * k, spec.dataset == "imagenet")
    for i, n in enumerate(blocks):
        x = walk.cat(_grow(walk, x, n, k, spec.bottleneck, ("block", i)), copy=True)
        if i < len(blocks) - 1:
            x = _transition(walk, x, x.c // 2 if spec.bottleneck else x.c)
    walk.head(x, spec.num_classes, pre_activation=True)


def _dense_rknet(walk: _Walk, spec: ModelSpec) -> None:
    k = arch.growth_rate(spec)
    periods, m = arch.check_periods(spec), arch.rknet_m(spec)
    x = _dense_stem(walk, m[0] * k, spec.dataset == "imagenet")
    for p, ((s, r), mp) in enumerate(zip(periods, m, strict=True)):
        for step in range(r):
            key = ("period", p, 0 if spec.share else step)
            growth = _grow(walk, x, s * mp, k, spec.bottleneck, key)[1:]
            x = walk.add(x, walk.sum_groups(walk.cat(growth, copy=True), s))
        if p < len(periods) - 1:
            x = _transition(walk, x, m[p + 1] * k)
    walk.head(x, spec.num_classes, pre_activation=True)


# -------------------------------------------------------------------------------- ResNets


def _basic_block(walk: _Walk, x: _T, out: int, stride: int) -> _T:
    y = walk.conv(x, out, 3, stride)
    y = walk.bn(walk.conv(walk.bn_relu(y), out, 3))
    return walk.relu_(walk.add(y, walk.shortcut_a(x, out, stride)))


def _resnet_stem(walk: _Walk) -> _T:
    return walk.bn_relu(walk.conv(walk.tensor(3, 32, 32), arch.RESNET_WIDTHS[0], 3))


def _resnet(walk: _Walk, spec: ModelSpec) -> None:
    n = arch.resnet_blocks_per_stage(spec.depth)
    x = _resnet_stem(walk)
    for i, width in enumerate(arch.RESNET_WIDTHS):
        for j in range(n):
            x = _basic_block(walk, x, width, 2 if i and not j else 1)
    walk.head(x, spec.num_classes, pre_activation=False)


def _mapping(walk: _Walk, inputs: list[_T], channels: int, key: object) -> _T:
    """F = ReLU(BN(conv(ReLU(BN(conv(cat(inputs))))))): a period block's residual mapping."""
    x = walk.conv(walk.cat(inputs), channels, 3, key=(key, 1))
    return walk.bn_relu(walk.conv(walk.bn_relu(x), channels, 3, key=(key, 2)))


def _sum(walk: _Walk, terms: list[_T]) -> _T:
    """Python's ``sum(terms[1:], terms[0])``: one addition per further term."""
    total = terms[0]
    for term in terms[1:]:
        total = walk.add(total, term)
    return total


def _resnet_step(
    walk: _Walk, y: _T, stages: int, wiring: str, conv_key: object, step_key: object
) -> _T:
    """One s-stage time-step wired as ``wiring`` says. Its convolutions are keyed by
    ``conv_key`` (one Parameter for every time-step of a shared period), its learned
    coefficients (``lincomb``) by ``step_key`` (never shared)."""
    wiring = wiring if stages > 1 else "euler"
    ks: list[_T] = []
    for i in range(stages):
        stage_key = (conv_key, i)
        if not ks:
            k = _mapping(walk, [y], y.c, stage_key)
        elif wiring == "concat":
            k = _mapping(walk, [y, *ks], y.c, stage_key)
        elif wiring == "lincomb":
            terms = [walk.scale(ks[j]) for j in range(i)]
            k = _mapping(walk, [walk.add(y, _sum(walk, terms))], y.c, stage_key)
        else:
            k = _mapping(walk, [walk.add(y, _sum(walk, ks))], y.c, stage_key)
        ks.append(k)
    if wiring == "lincomb":
        walk.parameter((step_key, "coefficients"), stages * (stages - 1) // 2 + stages)
        return walk.add(y, _sum(walk, [walk.scale(k) for k in ks]))
    return walk.add(y, _sum(walk, ks))


def _resnet_rknet(walk: _Walk, spec: ModelSpec) -> None:
    periods = arch.check_resnet_periods(spec)
    x = _resnet_stem(walk)
    for p, ((s, r), width) in enumerate(zip(periods, arch.RESNET_WIDTHS, strict=True)):
        if p > 0:
            x = _basic_block(walk, x, width, 2)
        for step in range(r):
            conv_key = ("period", p, 0 if spec.share else step)
            x = _resnet_step(walk, x, s, spec.resnet_stages, conv_key, ("step", p, step))
    walk.head(x, spec.num_classes, pre_activation=False)


@cache
def model_cost(spec: ModelSpec) -> ModelCost:
    """Every count of ``spec``'s model, without building it; a :class:`SpecError` for a spec
    that describes no network (as building it would raise)."""
    arch.validate(spec)
    walk = _Walk()
    if spec.family == "resnet":
        (_resnet if spec.periods is None else _resnet_rknet)(walk, spec)
    else:
        (_densenet if spec.periods is None else _dense_rknet)(walk, spec)
    return walk.result()


def param_counts(spec: ModelSpec) -> tuple[int, int]:
    """(paper count, all trainable parameters), as :func:`rkrepro.models.spec_param_counts`
    gives them, without building the model."""
    cost = model_cost(spec)
    return cost.params_paper, cost.params_total
