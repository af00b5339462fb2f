"""Which device an estimate is for, and the combinations of options that are refused."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rkrepro.cli.app import app
from rkrepro.errors import RkreproError
from rkrepro.estimate import target


@pytest.fixture(autouse=True)
def _no_named_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(target.CALIBRATION_DEVICE_ENV, raising=False)


def test_a_plan_without_a_gpu_here_is_for_the_default_gpu_and_says_so() -> None:
    chosen = target.for_plan(None, "auto", probe=False)
    assert chosen.gpu is not None and chosen.gpu.id == "h100" and chosen.probe is None
    assert chosen.unit == "GPU" and "no GPU here" in chosen.note


def test_named_gpu_cpu_and_a_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    assert target.for_plan("l40s", "auto", probe=False).gpu.id == "l40s"  # type: ignore[union-attr]
    cpu = target.for_plan(None, "cpu", probe=False)
    assert (cpu.probe, cpu.unit) == ("cpu", "CPU")
    assert target.for_plan(None, "auto", probe=True).probe == "cpu"  # no GPU here: its CPU
    monkeypatch.setenv(target.CALIBRATION_DEVICE_ENV, "NVIDIA H200")
    named = target.for_plan(None, "auto", probe=False)
    assert named.gpu.id == "h200" and named.device_names == ("NVIDIA H200",)  # type: ignore[union-attr]


def test_a_run_estimates_where_it_trains() -> None:
    assert target.for_run(None, "cpu", True, True, dry_run=True).probe == "cpu"
    assert target.for_run("h200", "cuda", False, True, dry_run=True).gpu.id == "h200"  # type: ignore[union-attr]
    assert target.for_run("a100-80gb", "cuda", False, False, dry_run=False).label.startswith(
        "NVIDIA A100"
    )
    assert target.for_run(None, "cuda", False, False, dry_run=False).gpu.id == "h100"  # type: ignore[union-attr]


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: target.for_plan("h100", "cpu", False), "use one of them"),
        (lambda: target.for_plan("h100", "auto", True), "--probe times steps on this machine"),
        (lambda: target.for_plan(None, "cuda", False), "no CUDA device here"),
        (lambda: target.for_plan(None, "tpu", False), "--device must be auto, cpu or cuda"),
        (lambda: target.for_plan("b300", "auto", False), "unknown GPU"),
        (lambda: target.for_run("h100", "cuda", True, True, True), "train on the CPU"),
        (lambda: target.for_run("h100", "cuda", False, True, False), "trains on this machine"),
    ],
)
def test_wrong_combinations_are_one_line(call, message: str) -> None:
    with pytest.raises(RkreproError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "args",
    [
        ["--gpu", "h100", "--device", "cpu"],
        ["--gpu", "h100", "--probe"],
        ["--gpu", "hundred"],
        ["--budget", "0"],
        ["--budget", "-3"],
        ["--budget", "nan"],
    ],
)
def test_plan_refuses_in_one_line(args: list[str], tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RKREPRO_RUNS_DIR", str(tmp_path / "runs"))
    result = CliRunner().invoke(app, ["plan", "table4", *args])
    assert result.exit_code == 2, result.output
    error = result.stderr.strip()
    assert error.startswith("Error: ") and "\n" not in error, error
    assert not (tmp_path / "runs").exists()  # nothing touched
