"""Processes of this machine, told apart for sure: which process a run trains in (so that
``rkrepro status`` can say a RUNNING run's process is gone), and which processes belong to a
process group (so that ``rkrepro ui`` stops all it started).

A process is named by host, pid and its start time (``/proc/PID/stat``'s field 22, in clock
ticks since boot): a pid the system gave to another program since does not pass for the run's.
Torch- and mlflow-free.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (field 3 onwards), or None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def _start_ticks(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else ""


def this_process() -> str:
    """``HOST PID START`` of this process (START empty where there is no ``/proc``)."""
    return f"{socket.gethostname()} {os.getpid()} {_start_ticks(os.getpid())}".strip()


def is_gone(identity: str) -> bool | None:
    """Whether the process ``identity`` (:func:`this_process`'s text) has ended: True or
    False on the machine it ran on, None elsewhere or for an unreadable text."""
    parts = identity.split()
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        return None
    host, pid = parts[0], int(parts[1])
    if host != socket.gethostname():
        return None
    fields = _stat_fields(pid)
    if fields is None:
        if Path("/proc/self/stat").exists():
            return True  # Linux, and no such process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    if fields[0] == "Z":
        return True  # ended; its parent has not collected it yet
    return len(parts) == 3 and len(fields) > 19 and fields[19] != parts[2]


def group_members(group: int) -> list[int]:
    """Every live process of process group ``group`` (from ``/proc``; empty without it)."""
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(entry.name))
    return members
