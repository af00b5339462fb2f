"""Nothing planted in runs/ makes rkrepro write outside it: links where rkrepro writes are
replaced or refused, never followed (real symlinks, real files outside the folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rkrepro.errors import RkreproError
from rkrepro.safe_write import PlantedLink, append_nofollow, make_dirs, write_bytes_atomic
from rkrepro.training.checkpoints import CHECKPOINT_FORMAT, Checkpoints

pytestmark = pytest.mark.bad_input


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the runs folder that an attacker wants overwritten (~/.bashrc)."""
    path = tmp_path / "outside" / "bashrc"
    path.parent.mkdir()
    path.write_text("# the victim's own file\n")
    return path


def test_planted_temporary_names_of_a_checkpoint_write_are_never_followed(
    tmp_path: Path, victim: Path
) -> None:
    """The names the old writer used (``.last.pt.PID.tmp``, ``.last.json.PID.tmp``) are
    predictable; links planted there must not receive the checkpoint."""
    folder = tmp_path / "runs" / "checkpoints" / "abc"
    folder.mkdir(parents=True)
    for name in (".last.pt", ".last.json"):
        (folder / f"{name}.{os.getpid()}.tmp").symlink_to(victim)
    ck = Checkpoints(folder, root=tmp_path / "runs")
    ck.save({"format": CHECKPOINT_FORMAT, "epoch": 1, "run_id": "r"})
    assert victim.read_text() == "# the victim's own file\n"
    assert ck.load()["epoch"] == 1 and not ck.last.is_symlink()


def test_a_link_planted_as_last_pt_is_replaced_not_written_through(
    tmp_path: Path, victim: Path
) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "last.json").symlink_to(victim)
    ck = Checkpoints(folder)
    ck.save({"format": CHECKPOINT_FORMAT, "epoch": 2, "run_id": "r"})
    assert victim.read_text() == "# the victim's own file\n"
    assert not ck.info.is_symlink() and ck.peek()["epoch"] == 2


def test_a_dangling_lock_link_creates_nothing_outside(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "checkpoints" / "abc"
    folder.mkdir(parents=True)
    outside = tmp_path / "outside-lock"
    (folder / "lock").symlink_to(outside)
    with pytest.raises(PlantedLink, match="is a link"), Checkpoints(folder).lock():
        pass
    assert not outside.exists()


def test_a_checkpoint_folder_below_a_planted_folder_link_is_refused(tmp_path: Path) -> None:
    runs, outside = tmp_path / "runs", tmp_path / "elsewhere"
    (runs / "checkpoints").mkdir(parents=True)
    outside.mkdir()
    (runs / "checkpoints" / "store-x").symlink_to(outside)
    ck = Checkpoints(runs / "checkpoints" / "store-x" / "abc", root=runs)
    with pytest.raises(PlantedLink, match="store-x is a link"):
        ck.save({"format": CHECKPOINT_FORMAT, "epoch": 1, "run_id": "r"})
    assert list(outside.iterdir()) == []


def test_make_dirs_accepts_a_linked_root_and_refuses_links_below_it(tmp_path: Path) -> None:
    real = tmp_path / "scratch"
    real.mkdir()
    (tmp_path / "runs").symlink_to(real)  # the user's own choice: runs -> /scratch/...
    made = make_dirs(tmp_path / "runs", tmp_path / "runs" / "logs" / "t1" / "row")
    assert (real / "logs" / "t1" / "row").is_dir() and made.is_dir()
    (real / "logs" / "t2").symlink_to(tmp_path)
    with pytest.raises(PlantedLink):
        make_dirs(tmp_path / "runs", tmp_path / "runs" / "logs" / "t2" / "row")
    with pytest.raises(RkreproError, match="not inside"):
        make_dirs(tmp_path / "runs", tmp_path / "other")


def test_a_log_link_is_refused_and_a_png_link_replaced(tmp_path: Path, victim: Path) -> None:
    log = tmp_path / "job.log"
    log.symlink_to(victim)
    with pytest.raises(PlantedLink), append_nofollow(log) as stream:
        stream.write(b"rm -rf ~\n")
    png = tmp_path / "plot.png"
    png.symlink_to(victim)
    write_bytes_atomic(png, b"\x89PNG")
    assert victim.read_text() == "# the victim's own file\n"
    assert not png.is_symlink() and png.read_bytes() == b"\x89PNG"
