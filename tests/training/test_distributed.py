"""One run over several processes (:mod:`rkrepro.training.distributed`): DDP on gloo against one
process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import helpers_cifar as h
import pytest
import torch
from helpers_launch import series
from helpers_run import Workspace, new_store

from rkrepro.planning import options as run_options
from rkrepro.planning import plan as plans
from rkrepro.tracking import keys as mlflow_keys

# DDP vs one process at the same global batch, BatchNorm-free model: the only difference is the
# order of float32 sums (two half-batch gradients averaged vs one batch), so the per-epoch train
# loss agrees to this relative tolerance after every epoch.
DDP_RTOL = 1e-5


class _NoBatchNorm(torch.nn.Module):
    """A BatchNorm-free stand-in for the model, so one process and two agree exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _train_tiny(env: dict[str, str], world: int, rank: int, epochs: int) -> int:
    """Train the tiny table's original cell with the BN-free model; DDP when ``world > 1``."""
    os.environ.update(env)
    torch.set_num_threads(1)
    from rich.console import Console

    import rkrepro.models
    from rkrepro import paper
    from rkrepro.training.ledger import Ledger
    from rkrepro.training.session import Session
    from rkrepro.training.world import World

    rkrepro.models.build_model = lambda spec, memory_efficient=False: _NoBatchNorm()
    cells = paper.resolve_cells(paper.load_tables(), "tiny", "bc-k4", ["original"], "no-share")
    options = run_options.RunOptions(
        epochs=epochs, data_dir=Path(env["RKREPRO_DATA_DIR"]), device="cpu"
    )
    ledger = Ledger(options.tracking_uri, console=Console(quiet=True))
    if world == 1:
        planned = plans.make_plans(cells, [0], options)
        return Session(ledger, World(torch.device("cpu")), options.data_dir).run(planned)
    from rkrepro.training import distributed

    group = distributed.join("cpu")
    try:
        assert group.backend == "gloo" and group.size == world and group.rank == rank
        planned = plans.make_plans(cells, [0], options, "cpu", group.size)
        return Session(ledger, group, options.data_dir).run(planned)
    finally:
        group.close()


def _ddp_rank(rank: int, world: int, port: int, env: dict[str, str], epochs: int) -> None:
    dist_env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
    dist_env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    assert _train_tiny({**env, **dist_env}, world, rank, epochs) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process(
    ws: Workspace, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same global batch, lr and data: 2 gloo ranks = 1 process (BN-free model, DDP_RTOL)."""
    h.write_random_cifar10(ws.data, n_train=200, n_test=64)  # 200 = 3 x 64 + 8: a short batch
    epochs = 3
    single = ws.root / "runs-single"
    new_store(mlflow_template, single)
    env = {**ws.env, "RKREPRO_RUNS_DIR": str(single)}
    import rkrepro.models

    # _train_tiny patches it; monkeypatch puts the real one back afterwards.
    monkeypatch.setattr(rkrepro.models, "build_model", rkrepro.models.build_model)
    assert _train_tiny(env, 1, 0, epochs) == 0

    env = {**ws.env, "RKREPRO_RUNS_DIR": str(ws.runs)}
    torch.multiprocessing.spawn(_ddp_rank, args=(2, _free_port(), env, epochs), nprocs=2)

    (one,) = ws.runs_of(single)
    (ddp,) = ws.runs_of()
    assert one.info.status == ddp.info.status == "FINISHED"
    assert ddp.data.tags[mlflow_keys.TAG_WORLD_SIZE] == "2"
    assert ddp.data.tags[mlflow_keys.TAG_BATCHNORM] == "per-gpu"
    for name in (mlflow_keys.M_TRAIN_LOSS, mlflow_keys.M_TRAIN_ERROR, mlflow_keys.M_TEST_ERROR):
        a = series(ws, one.info.run_id, name, single)
        b = series(ws, ddp.info.run_id, name)
        assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3]
        for (_, x), (_, y) in zip(a, b, strict=True):
            assert y == pytest.approx(x, rel=DDP_RTOL, abs=1e-6), name
    # Rank 0's final weights are the plain model's state, equal to the single process's.
    config_hash = one.data.tags[mlflow_keys.TAG_CONFIG_HASH]
    assert ddp.data.tags[mlflow_keys.TAG_CONFIG_HASH] == config_hash
    w1 = torch.load(single / "checkpoints" / config_hash / "final.pt", weights_only=True)
    w2 = torch.load(ws.runs / "checkpoints" / config_hash / "final.pt", weights_only=True)
    assert w1["model"].keys() == w2["model"].keys()
    assert not any(k.startswith("module.") for k in w2["model"])
    for key in w1["model"]:
        torch.testing.assert_close(w2["model"][key], w1["model"][key], rtol=1e-4, atol=1e-6)
