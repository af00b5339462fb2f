"""Training plans in this process (:mod:`rkrepro.training.session`): the straight path of a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers_run import Workspace, invoke


def test_a_plan_reaches_backward_within_six_frames_of_execute(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The straight path: from ``launch.execute`` to ``loss.backward()`` a run crosses the
    session, the trainer's loop and the step, at most 6 frames (the anchors' training loops need
    0-3; rkrepro adds skip/resume and tracking)."""
    import inspect

    stacks: list[list[inspect.FrameInfo]] = []
    backward = torch.Tensor.backward

    def spy(self: torch.Tensor, *args, **kwargs):
        if not stacks:
            stacks.append(inspect.stack(context=0))
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", spy)
    result = invoke("--variant", "original", "--no-share", "--epochs", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    frames = [(Path(f.filename), f.function) for f in stacks[0]]
    top = next(i for i, (path, name) in enumerate(frames) if name == "execute")
    assert frames[top][0].parts[-2:] == ("launch", "execute.py")
    below = [f"{path.name}:{name}" for path, name in frames[1:top]]
    assert len(below) <= 6, below
    assert all("rkrepro" in str(path) for path, _ in frames[1:top]), below
