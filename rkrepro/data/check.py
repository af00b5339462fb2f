"""Is the data there? A torch-free check that ``rkrepro run`` makes before it opens the run
store, so a missing or corrupt CIFAR copy stops with one line and leaves no ``mlflow.db`` or
checkpoint lock behind; ``--dry-run`` reports it. A missing copy that may be downloaded is
downloaded only if its source answers (one connection, :data:`PROBE_TIMEOUT_S` at most): offline,
the run stops at once instead of after the download's retries.

The file names and md5 sums are torchvision's (``torchvision.datasets.CIFAR10/100``), kept here
so the check needs neither torch nor torchvision; ``tests/test_data_check.py`` compares them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

VERIFY_ENV = "RKREPRO_VERIFY_CHECKSUMS"
DOWNLOAD_ENV = "RKREPRO_DOWNLOAD"
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CifarFiles:
    base_folder: str
    url: str
    files: tuple[tuple[str, str], ...]  # (name, md5), the meta file last


CIFAR = {
    "cifar10": CifarFiles(
        "cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        (
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            ("test_batch", "40351d587109b95175f43aff81a1287e"),
            ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        ),
    ),
    "cifar100": CifarFiles(
        "cifar-100-python",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        (
            ("train", "16019d7e3df5f24257cddd939b257f8d"),
            ("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
            ("meta", "7973b15100ade9c7d40fb424638fde48"),
        ),
    ),
}


def env_flag(name: str, default: bool = True) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in ("0", "false", "no", "")


@dataclass(frozen=True)
class DataState:
    dataset: str
    folder: Path
    # "ok", "missing" (will download), "missing-offline" (downloads off), "unreachable" (its
    # source does not answer), "corrupt"
    state: str
    message: str = ""

    @property
    def stops(self) -> bool:
        """Whether a run would stop on it."""
        return self.state in ("missing-offline", "unreachable", "corrupt")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_cifar(dataset: str, root: Path | str) -> DataState:
    """The state of ``root/<base_folder>``: present (md5-checked unless
    ``RKREPRO_VERIFY_CHECKSUMS=0``), to be downloaded, or a one-line reason a run would stop."""
    spec = CIFAR[dataset]
    folder = Path(root) / spec.base_folder
    source = f"torchvision downloads it from {spec.url}"
    missing = [name for name, _ in spec.files if not (folder / name).is_file()]
    if missing:
        if env_flag(DOWNLOAD_ENV):
            unreachable = probe(spec.url)
            if unreachable:
                return DataState(
                    dataset,
                    folder,
                    "unreachable",
                    f"{dataset} data is missing: expected {folder} (no {missing[0]}), and it "
                    f"cannot be downloaded: {unreachable}; put the extracted "
                    f"'{spec.base_folder}' folder of {spec.url} there (or set --data-dir / "
                    f"RKREPRO_DATA_DIR; {DOWNLOAD_ENV}=0 never tries a download)",
                )
            return DataState(dataset, folder, "missing", f"{dataset} is not at {folder}: {source}")
        return DataState(
            dataset,
            folder,
            "missing-offline",
            f"{dataset} data is missing: expected {folder} (no {missing[0]}); downloads are off "
            f"({DOWNLOAD_ENV}=0): put the extracted '{spec.base_folder}' folder of {spec.url} "
            "there (or set --data-dir / RKREPRO_DATA_DIR)",
        )
    if env_flag(VERIFY_ENV):
        for name, md5 in spec.files:
            try:
                actual = _md5(folder / name)
            except OSError as error:
                return DataState(
                    dataset, folder, "corrupt", f"cannot read {folder / name}: {error.strerror}"
                )
            if actual != md5:
                return DataState(
                    dataset,
                    folder,
                    "corrupt",
                    f"{dataset} file {folder / name} fails its checksum (md5 {actual}, expected "
                    f"{md5} from {spec.url}); for a re-packed copy in the same format set "
                    f"{VERIFY_ENV}=0, else delete the folder to download it again",
                )
    return DataState(dataset, folder, "ok")


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``url``'s server cannot be reached (``cannot reach HOST: REASON``), or None when it
    accepts a connection: one try, ``timeout`` seconds at most."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        return f"cannot reach {host} ({reason})"
    return None


def check(datasets: list[str], root: Path | str) -> list[DataState]:
    """Each CIFAR data set among ``datasets`` (ImageNet is checked when it is loaded)."""
    return [check_cifar(d, root) for d in dict.fromkeys(datasets) if d in CIFAR]
