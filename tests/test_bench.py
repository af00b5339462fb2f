"""bench/throughput.py runs end to end on a tiny model, without mlflow installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "throughput.py"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the benchmark with a fake ``mlflow`` first on the path that fails on import."""
    fake = tmp_path / "fake" / "mlflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('mlflow must not be imported')\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), str(ROOT)]),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--data-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )


def test_throughput_runs_without_mlflow(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        "--spec", "densenet-bc:16:4",
        "--device", "cpu",
        "--steps", "1",
        "--rounds", "1",
        "--warmup-steps", "1",
        "--synthetic-images", "512",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "same parameters" in out and "FLOPs" in out
    for arm in ("T ", "A ", "B "):
        assert any(line.startswith(arm) for line in out.splitlines()), out
    assert "T/A = " in out and "T/B = " in out
    assert "loss check" in out and ": OK" in out, out


def test_arm_a_is_skipped_for_models_torchvision_cannot_build(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        "--spec", "resnet:8",
        "--device", "cpu",
        "--steps", "1",
        "--rounds", "1",
        "--warmup-steps", "1",
        "--arms", "T,A",
        "--synthetic-images", "256",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "arm A skipped" in result.stdout
    assert "T/A" not in result.stdout


def test_gpu_check_script_is_valid_bash_with_real_benchmark_flags() -> None:
    """bench/gpu_check.sh is what a session lent a GPU runs in one call: it must parse, and
    every benchmark command in it must use flags, arms and rows that exist."""
    import re
    import shlex

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import throughput
    finally:
        sys.path.remove(str(ROOT / "bench"))
    script = ROOT / "bench" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text(encoding="utf-8").replace("\\\n", " ")
    tp = re.search(r'^TP="(.*)"$', text, re.M)
    assert tp is not None
    commands = [line for line in text.splitlines() if line.strip().startswith("section ")]
    bench = [c for c in commands if "$TP" in c]
    assert len(bench) == 5 and any("gpu_selfcheck.py" in c for c in commands)
    seen_arms: set[str] = set()
    datasets: set[str] = set()
    for line in bench:
        for depth in ("20", "56", "110"):
            words = shlex.split(line.replace("$TP", tp.group(1)).replace("$depth", depth))
            words = [w.replace("$out", "out") for w in words]
            args = throughput.parse_args(words[words.index("bench/throughput.py") + 1 :])
            assert args.device == "cuda" and args.seconds is not None and args.json
            spec, _, _ = throughput.resolve(args)  # the table row exists
            assert spec.dataset in ("cifar10", "imagenet")
            assert ("T-gpu_decode" in args.arms) == (spec.dataset == "imagenet")
            datasets.add(spec.dataset)
            seen_arms |= set(args.arms.split(","))
            assert all(int(k) >= 1 for k in args.jobs_per_gpu.split(","))
    assert seen_arms == {"T", "T-bf16", "A", "B", "T-gpu_decode"}
    assert datasets == {"cifar10", "imagenet"}
    inputs = [c for c in commands if "bench/input_pipeline.py" in c]
    assert len(inputs) == 1
    words = shlex.split(inputs[0])
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import input_pipeline
    finally:
        sys.path.remove(str(ROOT / "bench"))
    args = input_pipeline.parse_args(words[words.index("bench/input_pipeline.py") + 1 :])
    assert args.device == "cuda" and args.seconds is not None


def test_gpu_check_sections_fit_inside_its_deadline() -> None:
    """Every section's limit, with the 5 s ``timeout -k 5`` may add, summed over the sections
    the script runs (a loop's once per value): at most DEADLINE_S, so none is cut short by the
    deadline rather than by its own limit."""
    import re

    text = (ROOT / "bench" / "gpu_check.sh").read_text(encoding="utf-8")
    deadline = int(re.search(r'DEADLINE_S="\$\{DEADLINE_S:-(\d+)\}"', text).group(1))
    total, sections = 0, 0
    loop_values = 1
    for line in text.splitlines():
        loop = re.match(r"\s*for \w+ in (.+); do", line)
        if loop:
            loop_values = len(loop.group(1).split())
        elif line.strip() == "done":
            loop_values = 1
        section = re.match(r'\s*section ("[^"]+"|\S+) (\d+) ', line)
        if section:
            total += loop_values * (int(section.group(2)) + 5)
            sections += loop_values
    assert sections == 9 and total <= deadline, (sections, total, deadline)


def test_input_pipeline_benchmark_prints_both_ratios(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), str(ROOT)]),
        "OMP_NUM_THREADS": "1",
    }
    fake = tmp_path / "fake" / "mlflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('mlflow must not be imported')\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "input_pipeline.py")]
        + ["--rounds", "1", "--images", "6", "--batch", "3"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith("fb-cpu / torchvision per core: ")
    assert lines[-1].startswith("batched / per-image: ")
    assert "(pixels equal)" in result.stdout
    for arm in ("torchvision", "fb-cpu", "decode-pil", "decode-tv", "per-image", "batched"):
        assert any(line.split()[:1] == [arm] for line in lines), arm


def test_the_imagenet_arm_trains_on_photographs(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        "--table", "table3",
        "--row", "densenet-121",
        "--device", "cpu",
        "--steps", "1",
        "--rounds", "1",
        "--warmup-steps", "1",
        "--batch", "2",
        "--arms", "T,T-gpu_decode,B",
        "--b-workers", "0",
        "--synthetic-images", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "arm T-gpu_decode skipped" in out and "90 epochs" in out and "T/B = " in out
    assert any(line.startswith("T ") for line in out.splitlines()), out


def test_gpu_selfcheck_runs_on_cpu(tmp_path: Path) -> None:
    """The device's correctness checks, on the CPU with the CUDA step's logic emulated (the
    resume check takes ~2 minutes on 2 cores and is left to the device run)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_selfcheck.py"), "--cpu-smoke"]
        + ["--only", "variants,oom", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "CHECK variants: OK" in result.stdout and "CHECK oom: SKIP" in result.stdout
    import json

    record = json.loads((tmp_path / "selfcheck.json").read_text())
    assert set(record["variants"]["losses"]) == {
        "graph_fp32", "graph_tf32", "graph_bf16", "eager_fp32", "eager_tf32", "eager_bf16"
    }  # fmt: skip
