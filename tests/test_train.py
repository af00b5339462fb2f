"""The training loop: Section 4's optimiser, exact resume, failure handling, and that it learns."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import helpers_cifar as h
import pytest
import torch

from rkrepro.data import cifar
from rkrepro.errors import RkreproError
from rkrepro.models import build_model
from rkrepro.planning.devices import resolve_device
from rkrepro.planning.fast_path import FAST_PATH_ENV, FastPath
from rkrepro.planning.options import RunOptions
from rkrepro.planning.plan import make_plans, scale_milestones
from rkrepro.spec import ModelSpec, Protocol
from rkrepro.training import loop, state
from rkrepro.training.checkpoints import CHECKPOINT_FORMAT, Checkpoints
from rkrepro.training.loop import Trainer
from rkrepro.training.optim import build_optimizer
from rkrepro.training.setup import Execution
from rkrepro.training.signals import Interrupted, NonFiniteLoss, StopSignal
from rkrepro.training.step import LaggedReadout

CPU = torch.device("cpu")
TINY = ModelSpec(family="densenet-bc", dataset="cifar10", depth=10, growth_rate=4)
TINY_RK = replace(TINY, periods=((1, 2), (1, 1), (1, 1)), m=(2, 2, 2))
PAPER = Protocol(
    dataset="cifar10",
    augmentation="pad 4 + crop + flip",
    batch_size=64,
    epochs=300,
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    lr_milestones=(150, 225),
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Two CI cores shared by test workers: one thread each is faster and deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _split(n: int, seed: int) -> cifar.ArraySplit:
    x, y = h.random_images(n, 10, seed)
    return cifar.ArraySplit(
        torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
    )


def _trainer(
    tmp: Path, protocol: Protocol, spec: ModelSpec = TINY, fast: FastPath | None = None, **kw
) -> Trainer:
    state.seed_everything(0)
    model = build_model(spec)
    execution = Execution.local(CPU, fast=fast)
    tr, te = cifar.cifar_batches(
        _split(80, 0), _split(24, 1), protocol.batch_size, CPU, 0, None, execution.channels_last
    )
    return Trainer(model, tr, te, protocol, execution, Checkpoints(tmp), **kw)


def test_optimizer_is_torch7_sgd_on_all_parameters() -> None:
    model = build_model(TINY)
    opt = build_optimizer(model, PAPER)
    (group,) = opt.param_groups
    assert group["nesterov"] and group["dampening"] == 0 and group["momentum"] == 0.9
    assert group["weight_decay"] == 1e-4 and group["lr"] == 0.1
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}
    bn_bias = next(m.bias for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert any(p is bn_bias for p in group["params"])  # BN and biases decay too


def test_milestones_scale_with_shortened_runs() -> None:
    assert scale_milestones((150, 225), 300, 300) == (150, 225)
    assert scale_milestones((150, 225), 300, 30) == (15, 23)  # 22.5 rounds half up
    assert scale_milestones((30, 60), 90, 9) == (3, 6)
    assert scale_milestones((150, 225), 300, 1) == (1,)


def test_scheduler_divides_lr_by_ten_at_milestones(tmp_path: Path) -> None:
    protocol = replace(PAPER, epochs=3, lr_milestones=(1, 2), batch_size=40)
    history = _trainer(tmp_path, protocol).fit()
    assert [round(r.lr, 6) for r in history] == [0.1, 0.01, 0.001]


def test_config_hash_separates_configurations() -> None:
    from rkrepro.paper import Cell

    cell = Cell("t", "r", "original", False, TINY, PAPER, None, None, None)
    base = make_plans([cell], [0, 1], RunOptions())
    assert base[0].config_hash != base[1].config_hash  # seed
    assert base[0].config_hash == make_plans([cell], [0], RunOptions())[0].config_hash
    short = make_plans([cell], [0], RunOptions(epochs=30))[0]
    subset = make_plans([cell], [0], RunOptions(train_subset=100))[0]
    mem = make_plans([cell], [0], RunOptions(memory_efficient=True))[0]
    hashes = {base[0].config_hash, short.config_hash, subset.config_hash, mem.config_hash}
    assert len(hashes) == 4
    assert short.shortened and subset.shortened and not base[0].shortened
    assert short.protocol.lr_milestones == (15, 23)


def test_precision_is_identity_and_fp32_hashes_are_stable() -> None:
    """fp32 (the paper's) is the default on every device; tf32, bf16 and fp16 name other runs;
    the overhead switches do not; fp32, fp16 and bf16 configurations hash as they did before
    the precision became a choice, so the runs already in users' stores are still found."""
    from rkrepro.paper import Cell
    from rkrepro.tracking.keys import (
        PRECISION_BF16,
        PRECISION_FP16_AMP,
        PRECISION_FP32,
        PRECISION_TF32,
    )

    cell = Cell("t", "r", "original", False, TINY, PAPER, None, None, None)

    def plan(device_type: str, **options):
        return make_plans([cell], [0], RunOptions(**options), device_type)[0]

    cpu = plan("cpu")
    assert cpu.precision == PRECISION_FP32 and cpu.fast_path == "channels_last,cpu_malloc"
    assert cpu.config_hash == "30dfd6c758a2e5ed"  # computed by the code before precision existed
    cuda = plan("cuda")
    assert cuda.precision == PRECISION_FP32 and cuda.config_hash == cpu.config_hash  # default
    assert "cpu_malloc" not in cuda.fast_path and "cuda_graph" in cuda.fast_path
    assert plan("cuda", fast_path="off").config_hash == cpu.config_hash
    assert plan("cpu", fast_path="off").fast_path == "off"
    bf16 = plan("cuda", precision="bf16")
    assert bf16.precision == PRECISION_BF16 and bf16.config_hash == "bf44559b36d09c26"  # as before
    amp = plan("cuda", precision="fp16")
    assert amp.precision == PRECISION_FP16_AMP and amp.config_hash == "2e18d35d33d3ae92"  # --amp
    tf32 = plan("cuda", precision="tf32")
    assert tf32.precision == PRECISION_TF32
    assert len({cpu.config_hash, bf16.config_hash, amp.config_hash, tf32.config_hash}) == 4
    assert plan("cuda", precision="bf16-autocast").config_hash == bf16.config_hash
    assert bf16.tags()["rkrepro.precision"] == PRECISION_BF16
    assert bf16.config()["precision"] == PRECISION_BF16
    args = RunOptions(precision="tf32").job_args()
    assert args[args.index("--precision") + 1] == "tf32"  # every launched job repeats it
    with pytest.raises(RkreproError, match="--precision bf16 needs a CUDA device"):
        plan("cpu", precision="bf16")
    with pytest.raises(RkreproError, match="--precision 'fp64': use one of fp32, tf32, bf16, fp16"):
        plan("cuda", precision="fp64")
    with pytest.raises(RkreproError, match="bad fast-path switch 'warp'"):
        plan("cpu", fast_path="warp")


def test_an_fp32_process_configures_no_tf32() -> None:
    """PyTorch lets cuDNN use TF32 by default: fp32 (the paper's arithmetic) switches it off for
    convolutions and matrix products, tf32 switches it on, in one place per process."""
    from rkrepro.training.setup import apply_precision

    backends = torch.backends
    try:
        apply_precision("tf32")
        assert backends.cudnn.conv.fp32_precision == "tf32"
        assert backends.cuda.matmul.fp32_precision == "tf32"
        execution = Execution.local(CPU)
        execution.place(build_model(TINY))  # what every trainer does first
        assert backends.cudnn.conv.fp32_precision == "ieee"
        assert backends.cuda.matmul.fp32_precision == "ieee"
        assert backends.cudnn.rnn.fp32_precision == "ieee"
    finally:
        apply_precision("fp32")


def test_gpu_decode_is_identity_for_imagenet_on_cuda_only() -> None:
    from rkrepro.paper import Cell

    imagenet = ModelSpec(family="densenet", dataset="imagenet", depth=121, growth_rate=32)
    protocol = replace(PAPER, dataset="imagenet", batch_size=256, epochs=90)
    cells = [
        Cell("t", "r", "original", False, imagenet, protocol, None, None, None),
        Cell("t", "c", "original", False, TINY, PAPER, None, None, None),
    ]

    def plans(device_type: str, fast_path: str | None = None):
        return make_plans(cells, [0], RunOptions(fast_path=fast_path), device_type)

    base, decoded = plans("cuda"), plans("cuda", "+gpu_decode")
    assert not base[0].gpu_decode and "gpu_decode" not in base[0].fast_path  # off by default
    assert decoded[0].gpu_decode and "gpu_decode" in decoded[0].fast_path
    assert decoded[0].config_hash != base[0].config_hash  # other pixels: another run
    assert not decoded[1].gpu_decode and decoded[1].config_hash == base[1].config_hash  # CIFAR
    on_cpu = plans("cpu", "+gpu_decode")
    assert not on_cpu[0].gpu_decode and on_cpu[0].config_hash == plans("cpu")[0].config_hash


def test_checkpoints_are_atomic_and_fall_back_to_prev(tmp_path: Path) -> None:
    ck = Checkpoints(tmp_path)
    state = {"format": CHECKPOINT_FORMAT, "epoch": 1, "run_id": "a"}
    ck.save(state)
    ck.save({**state, "epoch": 2})
    assert ck.load()["epoch"] == 2 and ck.peek()["epoch"] == 2
    ck.last.write_bytes(ck.last.read_bytes()[:10])  # torn write
    assert ck.load()["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_mid_epoch_is_bit_identical(tmp_path: Path) -> None:
    protocol = replace(PAPER, epochs=2, lr_milestones=(1,), batch_size=16)
    reference = _trainer(tmp_path / "ref", protocol)
    ref_history = reference.fit()

    stop = StopSignal()

    class StopAt:
        """Progress hook that raises the stop flag at epoch 2, step 3 (as SIGTERM would)."""

        epoch = 0

        def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
            self.epoch = epoch

        def step(self, done: int, loss: float, error: float) -> None:
            if self.epoch == 2 and done == 3:
                stop.signum = 15

        def epoch_end(self, record: state.EpochRecord) -> None:
            pass

    first = _trainer(tmp_path / "run", protocol, progress=StopAt(), stop=stop)
    with pytest.raises(Interrupted) as info:
        first.fit()
    assert info.value.exit_code == 143
    saved = Checkpoints(tmp_path / "run").load()
    assert saved["epoch"] == 1 and saved["step_in_epoch"] == 3

    torch.manual_seed(1234)  # a fresh process would have other RNG state: restore must fix it
    second = _trainer(tmp_path / "run", protocol)
    second.restore(saved)
    history = second.fit()
    assert [r.train_loss for r in history] == [r.train_loss for r in ref_history]
    assert [r.test_error for r in history] == [r.test_error for r in ref_history]
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key


def test_nan_loss_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loop.FAULT_NAN_ENV, "3")
    trainer = _trainer(tmp_path, replace(PAPER, epochs=2, batch_size=16))
    with pytest.raises(NonFiniteLoss, match="non-finite training loss"):
        trainer.fit()
    assert trainer.global_step == 3


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(RkreproError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RkreproError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_small_rknet_learns_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An RKNet (1x2_1x1_1x1, k=8) on scikit-learn's digits, in CIFAR format: far below chance."""
    monkeypatch.setenv(cifar.VERIFY_ENV, "0")
    monkeypatch.setenv(cifar.DOWNLOAD_ENV, "0")
    h.write_digits_cifar10(tmp_path / "data")
    tr_split, te_split = cifar.load_cifar("cifar10", tmp_path / "data")
    protocol = replace(PAPER, epochs=4, lr_milestones=(3,), batch_size=32)
    spec = replace(TINY_RK, growth_rate=8)
    state.seed_everything(0)
    model = build_model(spec)
    execution = Execution.local(CPU)
    tr, te = cifar.cifar_batches(tr_split, te_split, 32, CPU, 0, None, execution.channels_last)
    trainer = Trainer(model, tr, te, protocol, execution, Checkpoints(tmp_path / "ck"))
    history = trainer.fit()
    assert history[-1].test_error < 40.0, [r.test_error for r in history]  # chance: 90 %
    assert history[-1].train_loss < history[0].train_loss


# ------------------------------------------------------------------------------ fast path


def test_fast_path_switches_parse_and_apply_per_device() -> None:
    on, off = FastPath(), FastPath.off()
    assert all(getattr(on, f) for f in ("channels_last", "cuda_graph", "fused_sgd"))
    assert off.describe() == "off"
    assert FastPath.parse("") == on and FastPath.parse("off") == off
    assert FastPath.parse("-cuda_graph,-fused_sgd") == replace(
        on, cuda_graph=False, fused_sgd=False
    )
    assert FastPath.parse("off,+channels_last") == replace(off, channels_last=True)
    with pytest.raises(RkreproError, match="bad fast-path switch"):
        FastPath.parse("-warp_speed")
    with pytest.raises(RkreproError, match="use --precision bf16"):
        FastPath.parse("-bf16")  # the precision is not an overhead switch
    cpu = on.for_device(CPU)
    assert cpu.channels_last and not cpu.feature_buffer
    assert not (cpu.cuda_graph or cpu.fused_sgd or cpu.cudnn_benchmark)


def test_fast_path_env_reaches_the_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rkrepro.models.densenet import DenseBlock

    monkeypatch.setenv(FAST_PATH_ENV, "off")
    trainer = _trainer(tmp_path, replace(PAPER, epochs=1))
    assert trainer.execution.fast == FastPath.off()
    assert not any(m.feature_buffer for m in trainer.model.modules() if isinstance(m, DenseBlock))
    monkeypatch.setenv(FAST_PATH_ENV, "+feature_buffer")
    trainer = _trainer(tmp_path, replace(PAPER, epochs=1))
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(m.feature_buffer for m in trainer.model.modules() if isinstance(m, DenseBlock))


def test_fast_and_plain_cpu_paths_train_alike(tmp_path: Path) -> None:
    """Same init, same batches: the CPU fast path (NHWC, here with the feature buffer too)
    changes only rounding, so the epoch losses agree closely."""
    protocol = replace(PAPER, epochs=2, lr_milestones=(1,), batch_size=16)
    fast = _trainer(tmp_path / "fast", protocol, fast=FastPath(feature_buffer=True)).fit()
    plain = _trainer(tmp_path / "plain", protocol, fast=FastPath.off()).fit()
    for a, b in zip(fast, plain, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-2)


def test_train_step_matches_fit_and_checkpoint_lr_is_a_float(tmp_path: Path) -> None:
    protocol = replace(PAPER, epochs=1, batch_size=16)
    trainer = _trainer(tmp_path, protocol)
    x, y = next(iter(trainer.train_batches.batches(1)))
    trainer.train_step(x, y)
    loss_sum, wrong = trainer.running_sums
    assert float(loss_sum) > 0 and trainer.global_step == 1
    trainer.optimizer.param_groups[0]["lr"] = torch.tensor(0.1)  # as the CUDA graph path has it
    assert trainer.state()["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert isinstance(trainer.state()["optimizer"]["param_groups"][0]["lr"], float)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_step_trains_like_eager(tmp_path: Path) -> None:
    """The captured step (after warm-up, tail batch eager) against the eager fp32 path."""
    cuda = torch.device("cuda")
    protocol = replace(PAPER, epochs=1, batch_size=16)
    histories = []
    for fast in (FastPath(), FastPath.off()):
        state.seed_everything(0)
        model = build_model(TINY)
        execution = Execution.local(cuda, fast=fast)
        tr, te = cifar.cifar_batches(
            _split(200, 0), _split(24, 1), 16, cuda, 0, None, execution.channels_last
        )
        trainer = Trainer(model, tr, te, protocol, execution, Checkpoints(tmp_path / str(fast)))
        histories.append(trainer.fit())
        assert (trainer.captured is not None) == fast.cuda_graph
    assert histories[0][0].train_loss == pytest.approx(histories[1][0].train_loss, rel=1e-3)


def test_readings_are_run_identity_and_tags() -> None:
    """A multi-stage ResNet cell under concat, lincomb and euler: three runs, each tagged with
    its reading; a one-stage cell or a DenseNet cell hashes the same under every wiring."""
    from rkrepro.paper import all_cells, load_tables
    from rkrepro.paper.readings import TAG_PREFIX

    tables = load_tables()
    cells = {c.key: c for c in all_cells(tables, "table4")}
    multi = cells["table4/resnet-20/RKNet-3x1_2x1_2x1/noshare"]
    one = cells["table4/resnet-20/RKNet-1x3_1x2_1x2/noshare"]
    dense = all_cells(tables, "table1")[0]

    def plan(cell, *reading: str):
        return make_plans([cell], [0], RunOptions(reading=reading), "cpu")[0]

    wirings = {w: plan(multi, f"resnet_stages={w}") for w in ("concat", "lincomb", "euler")}
    assert len({p.config_hash for p in wirings.values()}) == 3
    assert plan(multi).config_hash == wirings["concat"].config_hash  # the table's default
    for wiring, p in wirings.items():
        assert p.cell.spec.resnet_stages == wiring
        assert p.tags()[TAG_PREFIX + "resnet_stages"] == wiring
        assert p.identity()["readings"] == {"resnet_stages": wiring}
        assert p.config()["reading"]["resnet_stages"] == wiring
    for cell in (one, dense):
        base = plan(cell)
        assert "readings" not in base.identity() and "resnet_stages" not in base.identity()["spec"]
        assert plan(cell, "resnet_stages=lincomb").config_hash == base.config_hash
        assert TAG_PREFIX + "resnet_stages" not in base.tags()
    # Reporting readings label a run without changing what it trains.
    best = plan(multi, "reported_error=best")
    assert best.config_hash == wirings["concat"].config_hash
    assert best.tags()[TAG_PREFIX + "reported_error"] == "best"
    assert plan(dense).tags()[TAG_PREFIX + "precision"] == "fp32"
    cuda = make_plans([dense], [0], RunOptions(precision="bf16"), "cuda")[0]
    assert cuda.tags()[TAG_PREFIX + "precision"] == "bf16-autocast"  # what it trains in
    with pytest.raises(RkreproError, match="use --precision fp32"):
        plan(dense, "precision=fp32")
    with pytest.raises(RkreproError, match="unknown reading 'stages'"):
        plan(dense, "stages=concat")
    args = RunOptions(reading=("resnet_stages=euler", "reported_error=best")).job_args()
    assert args[-4:] == ["--reading", "resnet_stages=euler", "--reading", "reported_error=best"]


def test_protocol_changes_are_run_identity() -> None:
    """The Torch code's LR rule (in the milestones, also for shortened runs), CIFAR-100's own
    normalisation and fb.resnet.torch's ImageNet transforms name new runs; CIFAR-10's pipeline
    did not change."""
    from rkrepro.paper import all_cells, load_tables

    tables = load_tables()

    def identity(table: str, **options):
        cell = all_cells(tables, table)[0]
        return make_plans([cell], [0], RunOptions(**options), "cpu")[0].identity()["protocol"]

    assert identity("table1")["lr_milestones"] == [149, 224]
    assert identity("table1", epochs=30)["lr_milestones"] == [14, 22]  # not (15, 23)
    assert "normalisation" not in identity("table1") and "transforms" not in identity("table1")
    assert identity("table2")["normalisation"] == "densenet-cifar100.lua"
    assert identity("table3")["transforms"] == "fb.resnet.torch"
    assert identity("table3")["lr_milestones"] == [30, 60]
    assert identity("table3", epochs=9)["lr_milestones"] == [3, 6]


def test_checkpoint_state_is_plain_data_and_older_numpy_rng_still_loads(tmp_path: Path) -> None:
    """The trainer's state needs no global beyond torch's weights-only allow-list; a checkpoint
    written before (NumPy's RNG tuple inside) still loads, through the scoped NumPy allow-list."""
    import io

    import numpy as np

    trainer = _trainer(tmp_path / "a", replace(PAPER, epochs=1, lr_milestones=(1,)))
    buffer = io.BytesIO()
    torch.save(trainer.state(), buffer)
    buffer.seek(0)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(buffer) == []

    old = {**trainer.state(), "rng": {**state.rng_states(), "numpy": np.random.get_state()}}
    ck = Checkpoints(tmp_path / "old")
    ck.save(old)
    expected = np.random.get_state()[1].copy()
    np.random.seed(99)
    state.set_rng_states(ck.load()["rng"])
    assert (np.random.get_state()[1] == expected).all()


# ------------------------------------------------- the CUDA step's logic, on the CPU


def _emulated(
    tmp: Path, fast: FastPath, n: int = 88, epochs: int = 2, precision: str = "fp32"
) -> Trainer:
    """A CPU trainer that takes the CUDA code path (``emulate_cuda``): fused SGD, tensor lr,
    the graph body called eagerly; 88 images at batch 16 leave an 8-image tail batch."""
    protocol = replace(PAPER, epochs=epochs, lr_milestones=(1,), batch_size=16)
    state.seed_everything(0)
    model = build_model(TINY)
    execution = Execution.local(CPU, precision, fast, emulate_cuda=True)
    tr, te = cifar.cifar_batches(
        _split(n, 0), _split(24, 1), 16, CPU, 0, None, execution.channels_last
    )
    return Trainer(model, tr, te, protocol, execution, Checkpoints(tmp))


def _step_losses(trainer: Trainer, epoch: int) -> list[float]:
    """Each step's loss, read from the device-side running sum as the step leaves it."""
    losses, before = [], 0.0
    for x, y in trainer.train_batches.batches(epoch):
        trainer.train_step(x, y)
        now = float(trainer.running_sums[0])
        losses.append((now - before) / y.numel())
        before = now
    return losses


def test_graph_body_on_cpu_matches_the_eager_step_step_for_step(tmp_path: Path) -> None:
    graph = _emulated(tmp_path / "g", FastPath())
    eager = _emulated(tmp_path / "e", FastPath(cuda_graph=False))
    assert graph.captured and not eager.captured and graph.execution.fast.fused_sgd
    g, e = _step_losses(graph, 1), _step_losses(eager, 1)
    assert graph.captured.static is not None and graph.captured.graph is None  # = eager body
    assert isinstance(graph.optimizer.param_groups[0]["lr"], torch.Tensor)
    assert len(g) == 6 and g == pytest.approx(e, rel=1e-5)  # fp32 vs float32 tensor lr
    for key, value in eager.model.state_dict().items():
        assert torch.allclose(value.float(), graph.model.state_dict()[key].float(), atol=1e-5)


def test_fit_through_the_graph_path_follows_the_schedule(tmp_path: Path) -> None:
    graph = _emulated(tmp_path / "g", FastPath()).fit()
    eager = _emulated(tmp_path / "e", FastPath(cuda_graph=False)).fit()
    assert [r.lr for r in graph] == [0.1, 0.01]
    for a, b in zip(graph, eager, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.test_error == pytest.approx(b.test_error, abs=5.0)


def test_captured_lr_tensor_follows_a_scheduler_that_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older torch assigns a new lr instead of ``fill_``: the replayed tensor must follow."""
    from torch.optim import lr_scheduler

    if not hasattr(lr_scheduler, "_update_param_group_val"):
        pytest.skip("this torch's scheduler has no _update_param_group_val to patch")

    def assign(group: dict, key: str, value: object) -> None:
        group[key] = float(value)  # type: ignore[arg-type]

    monkeypatch.setattr(lr_scheduler, "_update_param_group_val", assign)
    trainer = _emulated(tmp_path, FastPath())
    _step_losses(trainer, 1)
    captured = trainer.optimizer.param_groups[0]["lr"]
    trainer.scheduler.step()
    trainer.captured.follow_lr(state.plain_lr)
    assert trainer.optimizer.param_groups[0]["lr"] is captured
    assert float(captured) == pytest.approx(0.01)
    saved = trainer.state()
    assert all(isinstance(v, float) for v in saved["scheduler"]["_last_lr"])


def test_bf16_autocast_on_cpu_through_the_cuda_path(tmp_path: Path) -> None:
    bf16 = _emulated(tmp_path / "b", FastPath(), precision="bf16-autocast")
    fp32 = _emulated(tmp_path / "f", FastPath())
    x, y = next(iter(bf16.train_batches.batches(1)))
    with bf16.execution.autocast():
        logits = bf16.model(x.contiguous(memory_format=torch.channels_last))
    assert logits.dtype == torch.bfloat16
    b, f = _step_losses(bf16, 1), _step_losses(fp32, 1)
    assert b[0] == pytest.approx(f[0], rel=2e-2) and b == pytest.approx(f, rel=5e-2)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # weights stay fp32


def test_lagged_readout_on_cpu_returns_the_previous_request() -> None:
    readout = LaggedReadout(CPU)
    loss, wrong = torch.tensor(8.0, dtype=torch.float64), torch.tensor(2)
    first = readout.request(loss, wrong, 4)
    assert all(v != v for v in first)  # nothing has landed yet: NaN
    loss += 4.0
    assert readout.request(loss, wrong, 8) == (2.0, 50.0)  # the sums of the first request
    assert readout.request(loss, wrong, 8) == (1.5, 25.0)
