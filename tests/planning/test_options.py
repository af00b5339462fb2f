"""What ``rkrepro run`` asks for (:mod:`rkrepro.planning.options`): one place per option."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from typer.main import get_command

from rkrepro.cli.app import app
from rkrepro.planning.options import RunOptions


def test_every_run_option_reaches_launched_jobs_under_its_own_flag() -> None:
    """A job repeats each RunOptions field as the ``run`` option of the same name, so adding a
    flag needs no hand-kept list of arguments."""
    run = get_command(app).commands["run"]  # type: ignore[attr-defined]
    accepted = {opt for param in run.params for opt in param.opts}
    values = {
        f.name: {int: 3, bool: True, str: "x"}.get(type(f.default), "/tmp/x")
        for f in dataclasses.fields(RunOptions)
    }
    values.update(epochs=3, train_subset=5, tracking_uri="sqlite:////tmp/x.db", fast_path="off")
    options = RunOptions(**{**values, "data_dir": Path("d"), "tables_dir": Path("t")})
    args = options.job_args()
    flags = [a for a in args if a.startswith("--")]
    job_fields = [f for f in dataclasses.fields(RunOptions) if f.metadata.get("job", True)]
    assert len(flags) == len(job_fields)
    for flag in flags:
        assert flag in accepted, f"{flag} is not a `rkrepro run` option"
    assert args[args.index("--data-dir") + 1] == str(Path("d").absolute())
    assert "--device" not in args  # each launcher gives a job its own device
