"""Start a local multi-process job the way ``torchrun`` does, for tests and benchmarks.

``torchrun --nproc_per_node N script.py ARGS`` starts ``N`` processes with the environment variables
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; the script
then calls ``torch.distributed.init_process_group("gloo")`` (``init_method="env://"`` reads them).
:func:`launch_local` starts the same processes directly (no torchrun agent: faster to start, and the
parent sees every rank's exit code and output), on a free port, and waits for them; a script written for
one runs unchanged under the other. :func:`init_from_env` is the script side.

Example::

    >>> import sys
    >>> code = "import os; print(os.environ['RANK'], os.environ['WORLD_SIZE'])"
    >>> outs = launch_local(2, [sys.executable, "-c", code], timeout=60)
    >>> [o.strip() for o in outs]
    ['0 2', '1 2']
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

import torch.distributed as dist

__all__ = ["free_port", "init_from_env", "launch_local"]


def free_port() -> int:
    """A TCP port that was free a moment ago (for ``MASTER_PORT`` of a local job)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_local(nproc: int, command: Sequence[str], *, timeout: float = 600.0,
                 env: Mapping[str, str] | None = None) -> list[str]:
    """Run ``command`` as ranks ``0..nproc-1`` of a local job (torchrun's environment, a free port),
    wait for all, and return each rank's stdout (stderr merged).

    :raises RuntimeError: if a rank exits non-zero or the job exceeds ``timeout`` seconds (the other
        ranks are then killed), with the failing rank's output.
    """
    port = str(free_port())
    if sys.platform.startswith("linux") and "GLOO_SOCKET_IFNAME" not in {**os.environ, **(env or {})}:
        env = {**(env or {}), "GLOO_SOCKET_IFNAME": "lo"}  # loopback: containers whose hostname won't resolve
    procs, logs = [], []
    for rank in range(int(nproc)):
        rank_env = {**os.environ, **(env or {}), "RANK": str(rank), "LOCAL_RANK": str(rank),
                    "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": port}
        logs.append(tempfile.TemporaryFile(mode="w+"))  # files, not pipes: a full pipe could stall a rank
        procs.append(subprocess.Popen(list(command), env=rank_env, stdout=logs[-1], stderr=subprocess.STDOUT,
                                      text=True))
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"the {nproc}-process job ran past {timeout} s: {list(command)}") from e
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        outs = []
        for log in logs:
            log.seek(0)
            outs.append(log.read())
            log.close()
    for rank, p in enumerate(procs):
        if p.returncode != 0:
            raise RuntimeError(f"rank {rank} of {nproc} exited with code {p.returncode}:\n"
                               f"{outs[rank][-4000:]}")
    return outs


def init_from_env(backend: str = "gloo") -> tuple[int, int]:
    """``init_process_group(backend)`` from torchrun's environment; returns ``(rank, world_size)``.

    :raises RuntimeError: if the variables are missing (the script was not started by torchrun or
        :func:`launch_local`)."""
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"environment variables {missing} are not set: start this script with "
                           "`torchrun --nproc_per_node N script.py` (or pyro_snf.distributed.launch_local)")
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()
