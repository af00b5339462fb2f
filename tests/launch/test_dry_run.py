"""``rkrepro run --dry-run`` (:mod:`rkrepro.launch.dry_run`)."""

from __future__ import annotations

from helpers_run import Workspace, invoke


def test_dry_run_shows_the_plan_estimate(ws: Workspace) -> None:
    result = invoke("--dry-run", "--cpu-jobs", "2")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "status=" in line]
    assert len(lines) == 3 and all("hours=" in x and "peak_gb=" in x for x in lines)
    # CPU jobs: estimated by a short probe on the CPU, in CPU-hours.
    assert "CPU-hours still to train (2 parallel slots)" in result.output
    assert "measured on CPU" in result.output
