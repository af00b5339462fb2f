"""``torchrun --standalone`` whose sockets listen on 127.0.0.1 only (``python -m`` this module).

torch's TCP stores bind every interface (``*:PORT``) whatever host they are given, even under
``--standalone``, and the rendezvous unpickles what comes through its store: on a shared node
anyone who can reach the port could take part in (or feed objects to) a run. A single-node run
needs no other interface, so here every store server is handed a socket already bound to
127.0.0.1 (``master_listen_fd``), the master address is loopback (``--local-addr``), and gloo's
and NCCL's own sockets use ``lo``. Multi-node runs (SLURM) are not started this way: see the
README's "Reliability" section for what they expose.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

LOOPBACK = "127.0.0.1"
# TCPStore.__init__'s positional order, to find ``is_master`` wherever a caller put it.
_STORE_ARGS = ("world_size", "is_master", "timeout", "wait_for_workers", "multi_tenant")


def loopback_store_class() -> type:
    """A ``TCPStore`` whose servers listen on 127.0.0.1 (clients are unchanged)."""
    import torch.distributed as dist

    base = dist.TCPStore

    class LoopbackTCPStore(base):  # type: ignore[misc, valid-type]
        def __init__(self, host_name: str, port: int, *args: Any, **kwargs: Any) -> None:
            named = dict(zip(_STORE_ARGS, args, strict=False))
            is_master = kwargs.get("is_master", named.get("is_master", False))
            listener = None
            if is_master and kwargs.get("master_listen_fd") is None:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    listener.bind((LOOPBACK, int(port)))
                    listener.listen(1024)
                except OSError as error:  # torch retries as a client on RuntimeError
                    listener.close()
                    raise RuntimeError(f"cannot listen on {LOOPBACK}:{port}: {error}") from None
                kwargs["master_listen_fd"] = listener.fileno()
                port = listener.getsockname()[1]
            super().__init__(host_name, port, *args, **kwargs)
            self._loopback_listener = listener  # the store serves on it: keep it open

    return LoopbackTCPStore


def install() -> None:
    """Make every TCPStore torchrun creates in this process a loopback one."""
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend

    store = loopback_store_class()
    dist.TCPStore = store  # type: ignore[misc]
    c10d_rendezvous_backend.TCPStore = store  # type: ignore[misc]
    # The collectives' own sockets (workers inherit this environment).
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    os.environ["NCCL_SOCKET_IFNAME"] = "lo"


def main(argv: list[str] | None = None) -> None:
    """``torchrun --standalone --local-addr=127.0.0.1`` plus ``argv``, with loopback stores."""
    from torch.distributed import run

    install()
    args = list(sys.argv[1:] if argv is None else argv)
    run.main(["--standalone", f"--local-addr={LOOPBACK}", *args])


if __name__ == "__main__":
    main()
